"""The paper's experiment grid in one command: pretrain every method, then classify at several label fractions.

  python -m fetalssl_jax.main --config configs/paper_grid.py                  # CPU, embedded data (about an hour)
  python -m fetalssl_jax.main --config configs/paper_grid.py:tiny             # minutes; what the tests run
  python -m fetalssl_jax.main --config configs/paper_grid.py:paper            # the paper's grid (GPU/TPU)
  python -m fetalssl_jax.main --config configs/paper_grid.py \
      --config.inits='("bt=runs/bt","imagenet=resnet18.safetensors","random")'  # your own backbones

Running it again skips pretraining runs and cells that are finished. Each pretraining method is trained once
(`pretrain_args` are appended to its config's preset); seeds vary the downstream label subset, head and
augmentations. The backbone architecture is shared: `model` is applied to both the pretraining and the
classification configs.
"""

import pathlib

from fetalssl_jax import config_lib

CONFIGS = pathlib.Path(__file__).resolve().parent
PRETRAINING = ("barlow", "vicreg", "simclr", "moco", "byol", "autoencoder", "inpaint", "reorder")
NAMES = {"barlow": "barlow_twins", "inpaint": "inpainting"}  # row names = the methods' registry names


def _inits(c, preset: str, steps: int) -> tuple:
    model = c.classify.model
    args = (
        f"{preset},num_steps={steps},model.arch={model.arch},model.width={model.width},"
        "eval.compare_random_init=False,progress_bar=False"
    )
    return (*(f"{NAMES.get(n, n)}={CONFIGS / n}.py:{args}" for n in PRETRAINING), "random")


def default(c) -> None:
    """CPU: width-16 ResNet-18 at 64 px, 200 pretraining steps per method, 10 classifier epochs, 3 seeds, fractions
    100/10/1 % of 720 labelled training images (36 patients; 12 validation and 12 test patients)."""
    c.classify = config_lib.load_config(f"{CONFIGS / 'classify.py'}:default,num_epochs=10,eval.num_patients=60")
    c.inits = _inits(c, "default", 200)


def tiny(c) -> None:
    """Minutes on a CPU: two inits, tiny models, 2 seeds; for tests."""
    c.classify = config_lib.load_config(f"{CONFIGS / 'classify.py'}:tiny,eval.num_patients=20")
    c.inits = (f"barlow_twins={CONFIGS / 'barlow.py'}:tiny,num_steps=4,progress_bar=False", "random")
    c.label_fractions = (1.0, 0.25)
    c.seeds = (0, 1)


def paper(c) -> None:
    """The paper: ResNet-50, 256 px, the methods' paper presets, fractions 100 ... 1 %, 3 seeds (GPU/TPU)."""
    c.classify = config_lib.load_config(f"{CONFIGS / 'classify.py'}:paper")
    c.inits = tuple(f"{NAMES.get(n, n)}={CONFIGS / n}.py:paper,eval.compare_random_init=False" for n in PRETRAINING) + (
        "random",
    )
    c.label_fractions = (1.0, 0.5, 0.25, 0.1, 0.05, 0.01)


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """Grid config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = config_lib.ConfigDict()
    c.task = "grid"
    c.method = "grid"  # names the default workdir
    c.inits = ("random",)
    c.label_fractions = (1.0, 0.1, 0.01)
    c.modes = ("finetune", "linear")
    c.seeds = (0, 1, 2)
    c.classify = config_lib.ConfigDict()  # a configs/classify.py config: every cell starts from it
    return config_lib.apply_preset(c, arg, PRESETS)
