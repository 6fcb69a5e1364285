"""SimCLR pretraining on fetal ultrasound frames.

  python -m fetalssl_jax.main --config configs/simclr.py[:tiny|:paper]

Projector Linear-BN-ReLU-Linear [512, 128]; NT-Xent over the 2N views of the global batch, temperature 0.5;
LARS lr 0.3 x batch/256, wd 1e-4, momentum 0.9 (biases and norm parameters: no decay, no adaptation).
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets


def default(c) -> None:
    """CPU demo: a narrow ResNet-18 at 64 px; a few minutes on two cores, then the evaluation table."""
    presets.cpu_demo_preset(c)
    presets.short_run_lars(c, lr=0.4, weight_decay=1e-4)  # solo-learn's CIFAR SimCLR
    presets.ultrasound_views(c)


def tiny(c) -> None:
    """Seconds on a CPU: for tests and smoke runs."""
    presets.tiny_preset(c)
    c.method_kwargs.projector = (64, 32)


def paper(c) -> None:
    """ResNet-50, 256 px, batch 160 as the reference (GPU/TPU)."""
    presets.paper_preset(c)
    c.batch_size = 160
    c.num_epochs = 200


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """SimCLR config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = presets.base_config()
    c.method = "simclr"
    c.method_kwargs = ConfigDict(dict(projector=(512, 128), temperature=0.5))
    presets.simclr_views(c)
    c.optim.name = "lars"
    c.optim.lr_weights = 0.3
    c.optim.lr_biases = 0.3
    c.optim.weight_decay = 1e-4
    c.optim.warmup_epochs = 10.0
    c.optim.end_lr_factor = 0.001
    return config_lib.apply_preset(c, arg, PRESETS)
