"""Barlow Twins pretraining on fetal ultrasound frames.

  python -m fetalssl_jax.main --config configs/barlow.py           # CPU demo on the embedded data (minutes)
  python -m fetalssl_jax.main --config configs/barlow.py:paper     # the paper's setting (GPU/TPU)
  python -m fetalssl_jax.main --config configs/barlow.py:tiny      # seconds; what the tests run
  python -m fetalssl_jax.main --config configs/barlow.py:vit       # a ViT on the CPU (DINO's default backbone)

Presets: default, tiny, paper, vit. Any key can be overridden: --config.batch_size=256 --config.model.arch=resnet50.
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets
from fetalssl_jax.methods.barlow_twins import default_kwargs


def default(c) -> None:
    """CPU demo: a narrow ResNet-18 at 64 px, 480 steps; a few minutes on two cores, then the evaluation table.

    The short-run recipe (docs/design.md, "Recipes by budget"): LARS with trust coefficient 0.02, lr 0.3 x batch/256
    and weight decay 1e-4 (solo-learn's CIFAR Barlow Twins), ultrasound views (rotation, gain/TGC/speckle)."""
    presets.cpu_demo_preset(c)
    c.method_kwargs.projector = (512, 512, 512)
    presets.short_run_lars(c, lr=0.3, weight_decay=1e-4, lr_biases=0.0048)
    presets.ultrasound_views(c)


def tiny(c) -> None:
    """Seconds on a CPU: for tests and smoke runs."""
    presets.tiny_preset(c)
    c.method_kwargs.projector = (64, 64, 64)


def paper(c) -> None:
    """The paper's setting: ResNet-50, 256 px, projector 8192x3, batch 2048, 1000 epochs (GPU/TPU)."""
    presets.paper_preset(c)
    c.method_kwargs.projector = (8192, 8192, 8192)
    c.batch_size = 2048
    c.num_epochs = 1000
    c.optim.warmup_epochs = 10


def vit(c) -> None:
    """CPU demo of a ViT: DINO's default backbone and input (configs/dino.py: vit_micro, patch 8, 64 px) with the
    recipe a ViT trains with: AdamW after a linear warm-up, cosine to 1 %, weight decay 0.05 except on biases,
    LayerNorm and LayerScale, instead of LARS (docs/design.md, "Recipes by budget")."""
    default(c)
    c.model = presets.demo_vit()
    c.num_epochs = 8
    c.optim.name = "adamw"
    c.optim.lr_weights = 2e-3  # x batch/256
    c.optim.lr_batch_scaling = True
    c.optim.warmup_epochs = 1.0
    c.optim.end_lr_factor = 0.01
    c.optim.weight_decay = 0.05
    c.optim.decay_biases = False
    c.eval.every_steps = -1


PRESETS = {"default": default, "tiny": tiny, "paper": paper, "vit": vit}


def get_config(arg: str | None = None):
    """Barlow Twins config; `arg` names a preset (default, tiny, paper, vit) optionally followed by ,key=value."""
    c = presets.base_config()
    c.method = "barlow_twins"
    c.method_kwargs = ConfigDict(default_kwargs())
    presets.barlow_twins_views(c)
    c.optim.name = "lars"
    c.optim.lr_weights = 0.2
    c.optim.lr_biases = 0.0048
    c.optim.weight_decay = 1e-6
    c.optim.warmup_epochs = 10.0
    c.optim.end_lr_factor = 0.001
    return config_lib.apply_preset(c, arg, PRESETS)
