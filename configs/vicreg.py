"""VICReg pretraining on fetal ultrasound frames.

  python -m fetalssl_jax.main --config configs/vicreg.py[:tiny|:paper]

Projector as Barlow Twins; invariance 25, variance 25, covariance 1; LARS with warm-up and cosine (base lr 0.2
x batch/256 for weights and biases alike).
"""

from fetalssl_jax import config_lib


def default(c) -> None:
    """CPU demo: a narrow ResNet-18 at 64 px; a few minutes on two cores, then the evaluation table."""
    config_lib.cpu_demo_preset(c)
    c.method_kwargs.projector = (512, 512, 512)
    config_lib.short_run_lars(c, lr=0.3, weight_decay=1e-4)  # solo-learn's CIFAR VICReg
    config_lib.ultrasound_views(c)


def tiny(c) -> None:
    """Seconds on a CPU: for tests and smoke runs."""
    config_lib.tiny_preset(c)
    c.method_kwargs.projector = (64, 64, 64)


def paper(c) -> None:
    """ResNet-50, 256 px, projector 8192x3, batch 2048, 1000 epochs (GPU/TPU)."""
    config_lib.paper_preset(c)
    c.method_kwargs.projector = (8192, 8192, 8192)
    c.batch_size = 2048
    c.num_epochs = 1000


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """VICReg config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = config_lib.base_config()
    c.method = "vicreg"
    c.method_kwargs = config_lib.ConfigDict(
        dict(projector=(8192, 8192, 8192), sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0)
    )
    config_lib.barlow_twins_views(c)
    c.optim.name = "lars"
    c.optim.lr_weights = 0.2
    c.optim.lr_biases = 0.2
    c.optim.weight_decay = 1e-6
    c.optim.warmup_epochs = 10.0
    c.optim.end_lr_factor = 0.001
    return config_lib.apply_preset(c, arg, PRESETS)
