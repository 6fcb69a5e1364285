"""MoCo pretraining on fetal ultrasound frames.

  python -m fetalssl_jax.main --config configs/moco.py           # CPU demo on the embedded data (minutes)
  python -m fetalssl_jax.main --config configs/moco.py:paper     # the paper's setting (GPU/TPU)
  python -m fetalssl_jax.main --config configs/moco.py:tiny      # seconds; what the tests run

Presets: default, tiny, paper. Any key can be overridden: --config.method_kwargs.queue_size=8192.
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets
from fetalssl_jax.methods.moco import default_kwargs


def default(c) -> None:
    """CPU demo: a narrow ResNet-18 at 64 px, a smaller head and queue; a few minutes, then the evaluation table."""
    presets.cpu_demo_preset(c)
    c.method_kwargs.head = (512, 512, 128)
    c.method_kwargs.queue_size = 1024
    # solo-learn's CIFAR MoCo v2+: SGD lr 0.3 x batch/256, wd 1e-4, warm-up + cosine; key-encoder momentum 0.99
    c.optim.lr_weights = 0.3
    c.optim.lr_batch_scaling = True
    c.optim.end_lr_factor = 0.001
    c.method_kwargs.momentum_base = 0.99
    presets.ultrasound_views(c)


def tiny(c) -> None:
    """Seconds on a CPU: for tests and smoke runs."""
    presets.tiny_preset(c)
    c.optim.warmup_epochs = 0
    c.method_kwargs.head = (64, 64, 32)
    c.method_kwargs.queue_size = 64


def paper(c) -> None:
    """The paper's setting: ResNet-50, 256 px, head 2048-2048-128, queue 4096, SGD, batch 288 (GPU/TPU)."""
    presets.paper_preset(c)
    c.method_kwargs.head = (2048, 2048, 128)
    c.method_kwargs.queue_size = 4096
    c.batch_size = 288
    c.num_epochs = 200


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """MoCo config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = presets.base_config()
    c.method = "moco"
    c.method_kwargs = ConfigDict(default_kwargs())
    presets.simclr_views(c)
    # SGD lr 0.03 (as given, not scaled by batch/256), momentum 0.9, wd 1e-4, cosine annealing to 0, no warm-up.
    c.optim.name = "sgd"
    c.optim.lr_weights = 0.03
    c.optim.lr_batch_scaling = False
    c.optim.momentum = 0.9
    c.optim.weight_decay = 1e-4
    c.optim.warmup_epochs = 0.0
    c.optim.end_lr_factor = 0.0
    return config_lib.apply_preset(c, arg, PRESETS)
