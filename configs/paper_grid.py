"""The paper's experiment grid in one command: pretrain every method, then classify at several label budgets.

  python -m fetalssl_jax.main --config configs/paper_grid.py                  # CPU, embedded data (~4 h on 2 cores)
  python -m fetalssl_jax.main --config configs/paper_grid.py:tiny             # minutes; what the tests run
  python -m fetalssl_jax.main --config configs/paper_grid.py:paper            # the paper's grid (GPU/TPU)
  python -m fetalssl_jax.main --config configs/paper_grid.py:vit              # a ViT grid (vit_micro/8)
  python -m fetalssl_jax.main --config configs/paper_grid.py \
      --config.inits='("bt=runs/bt","imagenet=resnet18.safetensors","random")'  # your own backbones

Running it again skips pretraining runs and cells that are finished. Each pretraining method is trained once;
seeds vary the downstream label subset, head and augmentations, identically for every init, so results.md
compares each init with `baseline` (random init) paired by seed. The backbone architecture is shared: the
grid pretrains the classification config's backbone (`model`: a ResNet's arch and width, a ViT's arch, patch size,
registers and LayerScale) with every pretraining config among its inits. `vit`: the vit_micro/8 of
configs/classify.py:vit in every cell and every method that can pretrain it (not the autoencoders, which decode a
ResNet's feature map); `tiny_vit` is its test size.

A label budget is `labels_per_class` images of every class (2, 5, 10, 25 by default) or a fraction of the training
split (`label_fractions`: the full set by default; the paper's 100 ... 1 % in `paper`). Every budget uses every
seed in `seeds` (5: an interval over 3 seeds is too wide to tell methods apart). Cells train a fixed number of
optimiser steps (`classify.num_steps`) in `default`, so a 10-image budget is trained as long as the full set;
`paper` keeps the paper's epochs. Cells are calibrated by the temperature alone (`_classify`), which changes no
prediction.
"""

import pathlib

from ml_collections import ConfigDict

from fetalssl_jax import config_lib
from fetalssl_jax.methods import get_method

CONFIGS = pathlib.Path(__file__).resolve().parent


def _inits(c, preset: str) -> tuple:
    """Every method's config with `preset`, one row per method (named by its `method` key), and random init; a method
    that cannot pretrain the classification config's backbone (grid.pretraining_config) or needs a trained model
    first (distillation's teacher) is left out."""
    from fetalssl_jax.downstream import grid
    from fetalssl_jax.train import loop

    args = f"{preset},eval.compare_random_init=False,progress_bar=False"
    files = config_lib.method_config_files(CONFIGS)
    inits = grid.parse_inits([f"{m}={file}:{args}" for m, file in files.items() if get_method(m).from_scratch])
    fits = [i for i in inits if not loop.problems(grid.pretraining_config(i, c.classify.model))]
    return (*(f"{i.name}={i.spec}" for i in fits), "random")


def _classify(args: str) -> ConfigDict:
    """configs/classify.py:`args` for every cell, calibrated by the temperature alone: a cell's predictions come from
    its labelled budget only (`temperature_and_bias` would fit class biases on the whole validation split)."""
    return config_lib.load_config(f"{CONFIGS / 'classify.py'}:{args},calibration=temperature")


def default(c) -> None:
    """CPU: width-16 ResNet-18 at 64 px, every method's default pretraining (480 steps); 2, 5, 10, 25 labelled images
    per class and all 3600 labelled training images of the evaluator's set (300 patients: 180 train, 60
    validation, 60 test), 5 seeds; 300 classifier steps of batch 32 per cell (or the subset, if smaller),
    validated every 100 steps."""
    # batch 32: docs/design.md, "Budgets per class and a fixed number of steps"
    c.classify = _classify("default,batch_size=32,num_steps=300,eval_every_steps=100")
    c.inits = _inits(c, "default")


def tiny(c) -> None:
    """Minutes on a CPU: two inits, tiny models, 2 budgets (5 per class and all 120 images), 6 steps, 2 seeds."""
    c.classify = _classify("tiny,eval.num_patients=20,num_steps=6,eval_every_steps=3")
    c.inits = (f"barlow_twins={CONFIGS / 'barlow.py'}:tiny,num_steps=4,progress_bar=False", "random")
    c.labels_per_class = (5,)
    c.label_fractions = (1.0,)
    c.seeds = (0, 1)


def paper(c) -> None:
    """The paper: ResNet-50, 256 px, the methods' paper presets, fractions 100 ... 1 % and 100 epochs per cell
    (the classify paper preset), 5 seeds (GPU/TPU)."""
    c.classify = _classify("paper")
    c.inits = _inits(c, "paper")
    c.labels_per_class = ()
    c.label_fractions = (1.0, 0.5, 0.25, 0.1, 0.05, 0.01)


def vit(c) -> None:
    """The vit_micro/8 at 64 px of configs/classify.py:vit (MAE's fine-tuning recipe in 300 steps), pretrained by
    every method's default preset that can (not the autoencoders); 5 and 25 labelled images per class and all of
    them, 3 seeds (docs/running.md, "A ViT downstream": its cost on a CPU)."""
    c.classify = _classify("vit")
    c.inits = _inits(c, "default")
    c.labels_per_class = (5, 25)
    c.seeds = (0, 1, 2)


def tiny_vit(c) -> None:
    """Minutes on a CPU: tiny's grid with a 4-block ViT of width 64 (classify.py:tiny_vit), Barlow Twins and random."""
    tiny(c)
    c.classify = _classify("tiny_vit,eval.num_patients=20,num_steps=6,eval_every_steps=3")


PRESETS = {"default": default, "tiny": tiny, "paper": paper, "vit": vit, "tiny_vit": tiny_vit}


def get_config(arg: str | None = None):
    """Grid config; `arg` names a preset (default, tiny, paper, vit, tiny_vit) optionally followed by ,key=value."""
    c = ConfigDict()
    c.task = "grid"
    c.method = "grid"  # names the default workdir
    c.inits = ("random",)
    c.baseline = "random"  # the init every other is compared with, paired by seed ("" or absent: no comparison)
    c.labels_per_class = (2, 5, 10, 25)  # budgets of k labelled training images per class ...
    c.label_fractions = (1.0,)  # ... and stratified fractions of the training split
    c.modes = ("finetune", "linear")
    c.seeds = (0, 1, 2, 3, 4)  # for every budget: a 95 % t-interval over seeds
    c.classify = ConfigDict()  # a configs/classify.py config: every cell starts from it
    return config_lib.apply_preset(c, arg, PRESETS)
