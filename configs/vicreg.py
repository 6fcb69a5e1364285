"""VICReg pretraining on fetal ultrasound frames.

  python -m fetalssl_jax.main --config configs/vicreg.py[:tiny|:paper]

Projector as Barlow Twins; invariance 25, variance 25, covariance 1; LARS with warm-up and cosine (base lr 0.2
x batch/256 for weights and biases alike).
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets


def default(c) -> None:
    """CPU demo: a narrow ResNet-18 at 64 px; a few minutes on two cores, then the evaluation table."""
    presets.cpu_demo_preset(c)
    c.method_kwargs.projector = (512, 512, 512)
    presets.short_run_lars(c, lr=0.3, weight_decay=1e-4)  # solo-learn's CIFAR VICReg
    presets.ultrasound_views(c)


def tiny(c) -> None:
    """Seconds on a CPU: for tests and smoke runs."""
    presets.tiny_preset(c)
    c.method_kwargs.projector = (64, 64, 64)


def paper(c) -> None:
    """ResNet-50, 256 px, projector 8192x3, batch 2048, 1000 epochs (GPU/TPU)."""
    presets.paper_preset(c)
    c.method_kwargs.projector = (8192, 8192, 8192)
    c.batch_size = 2048
    c.num_epochs = 1000


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """VICReg config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = presets.base_config()
    c.method = "vicreg"
    c.method_kwargs = ConfigDict(dict(projector=(8192, 8192, 8192), sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0))
    presets.barlow_twins_views(c)
    c.optim.name = "lars"
    c.optim.lr_weights = 0.2
    c.optim.lr_biases = 0.2
    c.optim.weight_decay = 1e-6
    c.optim.warmup_epochs = 10.0
    c.optim.end_lr_factor = 0.001
    return config_lib.apply_preset(c, arg, PRESETS)
