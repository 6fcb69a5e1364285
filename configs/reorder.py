"""Clip order + geometric transform prediction (Jiao et al. 2020) on fetal ultrasound videos.

  python -m fetalssl_jax.main --config configs/reorder.py           # CPU demo on the embedded data (minutes)
  python -m fetalssl_jax.main --config configs/reorder.py:paper     # the paper-like setting (GPU/TPU)
  python -m fetalssl_jax.main --config configs/reorder.py:tiny      # seconds; what the tests run

Presets: default, tiny, paper. Any key can be overridden: --config.data.clip_stride=2
--config.method_kwargs.num_permutations=10 --config.method_kwargs.transforms=none.

The paper-like base (and `paper`): clips of 4 frames 3 kept frames apart, all 24 orders and 4 rotations of the
clip with equal loss weights, SGD; one mild crop and brightness / contrast jitter shared by a clip's frames, no
flips. The CPU `default` predicts the order only, of clips 12 kept frames apart, rotated by any angle and given
gain / TGC / speckle. Why: docs/design.md, "Clip-order settings".
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets
from fetalssl_jax.methods.reorder import default_kwargs


def clip_view(**overrides) -> dict:
    """Augmentation of a clip, applied with the same random draws to every frame (see methods/reorder.py)."""
    base = dict(
        crop_scale=(0.4, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.0, vflip_prob=0.0,
        color_jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.0, hue=0.0,
        grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0,
    )  # fmt: skip
    base.update(overrides)
    return base


def default(c) -> None:
    """CPU demo: a narrow ResNet-18 at 64 px on clips of 4 kept frames 12 apart (2.4 s of sweep), order only, with
    rotation and gain/TGC/speckle shared by the frames of a clip; minutes on two cores."""
    presets.cpu_demo_preset(c)
    c.batch_size = 64  # 64 clips = 256 frames through the backbone per step
    c.num_epochs = 20  # on the embedded set: 48 steps per epoch
    c.optim.warmup_epochs = 2
    c.method_kwargs.head_hidden = 256
    c.method_kwargs.transforms = "none"
    c.data.clip_stride = 12
    c.augment.view1 = ConfigDict(
        clip_view(rotation_prob=1.0, rotation_deg=180.0, ultrasound_prob=0.8, gain_db=6.0, tgc_db=6.0, speckle=0.5)
    )


def tiny(c) -> None:
    """Seconds on a CPU: for tests and smoke runs (16 kept frames per video: clips of 4, stride 1, fit)."""
    presets.tiny_preset(c)
    c.data.clip_stride = 1
    c.method_kwargs.head_hidden = 32


def paper(c) -> None:
    """Paper-like setting: ResNet-50, 256 px, clips of 4 frames 3 kept frames apart, batch 64 clips, SGD lr 0.05."""
    presets.paper_preset(c)
    c.method_kwargs.head_hidden = 512
    c.data.clip_length = 4
    c.data.clip_stride = 3
    c.batch_size = 64
    c.num_epochs = 100
    c.optim.lr_weights = 0.05
    c.optim.warmup_epochs = 2


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """Reorder config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = presets.base_config()
    c.method = "reorder"
    c.method_kwargs = ConfigDict(default_kwargs())
    c.augment.view1 = ConfigDict(clip_view())  # the clip augmentation, one for all frames of a clip
    del c.augment["view2"]
    c.data.clip_length = 4
    c.data.clip_stride = 3
    c.optim.name = "sgd"
    c.optim.lr_weights = 0.1  # absolute (lr_batch_scaling off), for 64 clips
    c.optim.lr_batch_scaling = False
    c.optim.weight_decay = 1e-4
    c.optim.momentum = 0.9
    c.optim.warmup_epochs = 2.0
    c.optim.end_lr_factor = 0.001
    return config_lib.apply_preset(c, arg, PRESETS)
