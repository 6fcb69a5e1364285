"""BYOL pretraining on fetal ultrasound frames.

  python -m fetalssl_jax.main --config configs/byol.py           # CPU demo on the embedded data (minutes)
  python -m fetalssl_jax.main --config configs/byol.py:paper     # the paper's setting (GPU/TPU)
  python -m fetalssl_jax.main --config configs/byol.py:tiny      # seconds; what the tests run

Presets: default, tiny, paper. Any key can be overridden: --config.method_kwargs.momentum_base=0.99.
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets
from fetalssl_jax.methods.byol import default_kwargs


def default(c) -> None:
    """CPU demo: a narrow ResNet-18 at 64 px, smaller heads; a few minutes, then the evaluation table."""
    presets.cpu_demo_preset(c)
    c.method_kwargs.projector = (512, 128)
    c.method_kwargs.predictor = (512, 128)
    # the reference's lr 0.2 (not solo-learn's 1.0), solo-learn's wd 1e-5, target momentum 0.99 -> 1: docs/design.md,
    # "Recipes by budget"
    presets.short_run_lars(c, lr=0.2, weight_decay=1e-5)
    c.method_kwargs.momentum_base = 0.99
    presets.ultrasound_views(c)


def tiny(c) -> None:
    """Seconds on a CPU: for tests and smoke runs."""
    presets.tiny_preset(c)
    c.method_kwargs.projector = (64, 32)
    c.method_kwargs.predictor = (64, 32)


def paper(c) -> None:
    """The paper's setting: ResNet-50, 256 px, projector / predictor 1024-256, LARS, batch 160 (GPU/TPU)."""
    presets.paper_preset(c)
    c.method_kwargs.projector = (1024, 256)
    c.method_kwargs.predictor = (1024, 256)
    c.batch_size = 160
    c.num_epochs = 1000
    c.optim.warmup_epochs = 10


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """BYOL config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = presets.base_config()
    c.method = "byol"
    c.method_kwargs = ConfigDict(default_kwargs())
    presets.simclr_views(c)
    # LARS as the BYOL paper: base lr 0.2 x batch/256 for every parameter; biases and BatchNorm parameters without
    # weight decay and trust-ratio adaptation; wd 1.5e-6; warm-up (10 epochs in `paper`), then cosine to 0.
    c.optim.name = "lars"
    c.optim.lr_weights = 0.2
    c.optim.lr_biases = 0.2
    c.optim.lr_batch_scaling = True
    c.optim.weight_decay = 1.5e-6
    c.optim.end_lr_factor = 0.0
    return config_lib.apply_preset(c, arg, PRESETS)
