"""Barlow Twins pretraining on fetal ultrasound frames.

  python -m fetalssl_jax.main --config configs/barlow.py           # CPU demo on the embedded data (minutes)
  python -m fetalssl_jax.main --config configs/barlow.py:paper     # the paper's setting (GPU/TPU)
  python -m fetalssl_jax.main --config configs/barlow.py:tiny      # seconds; what the tests run

Presets: default, tiny, paper. Any key can be overridden: --config.batch_size=256 --config.model.arch=resnet50.
"""

from fetalssl_jax import config_lib
from fetalssl_jax.methods.barlow_twins import default_kwargs


def view(**overrides) -> dict:
    """One view's augmentation (Barlow Twins reference values; per-view blur and solarize differ)."""
    base = dict(
        crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5, vflip_prob=0.0,
        color_jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
        grayscale_prob=0.2, blur_prob=1.0, blur_sigma=(0.1, 2.0), blur_kernel_fraction=0.1, solarize_prob=0.0,
    )  # fmt: skip
    base.update(overrides)
    return base


def default(c) -> None:
    """CPU demo: a narrow ResNet-18 at 64 px; a few minutes on two cores, then the evaluation table."""
    config_lib.cpu_demo_preset(c)
    c.method_kwargs.projector = (512, 512, 512)


def tiny(c) -> None:
    """Seconds on a CPU: for tests and smoke runs."""
    config_lib.tiny_preset(c)
    c.method_kwargs.projector = (64, 64, 64)


def paper(c) -> None:
    """The paper's setting: ResNet-50, 256 px, projector 8192x3, batch 2048, 1000 epochs (GPU/TPU)."""
    c.model.arch = "resnet50"
    c.model.width = 64
    c.model.dtype = "bfloat16"
    c.method_kwargs.projector = (8192, 8192, 8192)
    c.data.image_size = 256
    c.data.stored_size = 256
    c.data.num_videos = 400
    c.data.frames_per_video = 100
    c.batch_size = 2048
    c.num_epochs = 1000
    c.optim.warmup_epochs = 10
    c.checkpoint_every_steps = 1000
    c.log_every_steps = 50
    c.eval.every_steps = 5000
    c.eval.num_patients = 60


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """Barlow Twins config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = config_lib.base_config()
    c.method = "barlow_twins"
    c.method_kwargs = config_lib.ConfigDict(default_kwargs())
    c.augment.view1 = config_lib.ConfigDict(view(blur_prob=1.0, solarize_prob=0.0))
    c.augment.view2 = config_lib.ConfigDict(view(blur_prob=0.1, solarize_prob=0.2))
    c.optim.name = "lars"
    c.optim.lr_weights = 0.2
    c.optim.lr_biases = 0.0048
    c.optim.weight_decay = 1e-6
    c.optim.warmup_epochs = 10.0
    c.optim.end_lr_factor = 0.001
    return config_lib.apply_preset(c, arg, PRESETS)
