"""Inpainting-autoencoder pretraining on fetal ultrasound frames.

  python -m fetalssl_jax.main --config configs/inpainting.py[:tiny|:paper]

The autoencoder's model and optimiser; part of the input is erased and filled with random values; the network
draws the clean image. Input: resize, RandAugment(1, 1), h/v flips, then erasing.

`paper` keeps the reference's erasing: one random rectangle of 2-33 % of the image, loss on every pixel. The CPU
`default` (and `tiny`) erase everything but one box of 25-50 % of the image and score the erased pixels only
(`erase="outside"`): the network sees one part of the scan and must draw the anatomy around it. Why: docs/design.md,
"Reconstruction and clip order at the CPU budget".
"""

import pathlib

from fetalssl_jax import config_lib

autoencoder = config_lib.load_config_module(pathlib.Path(__file__).with_name("autoencoder.py"))


def default(c) -> None:
    """CPU demo: the autoencoder's, with all but one box erased."""
    autoencoder.default(c)
    c.method_kwargs.erase = "outside"


def tiny(c) -> None:
    """Seconds on a CPU (tests): the autoencoder's, with the default's erasing."""
    autoencoder.tiny(c)
    c.method_kwargs.erase = "outside"


PRESETS = {**autoencoder.PRESETS, "default": default, "tiny": tiny}


def get_config(arg: str | None = None):
    """Inpainting config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = autoencoder.autoencoder_config("inpainting", 1, 1)
    c.method_kwargs.erase_scale = (0.02, 0.33)
    c.method_kwargs.erase_ratio = (0.3, 3.3)
    c.method_kwargs.erase = "rectangle"  # the reference (the paper preset), or "outside" (the CPU presets)
    c.method_kwargs.keep_scale = (0.25, 0.5)  # erase = "outside": the area of the one box left visible
    return config_lib.apply_preset(c, arg, PRESETS)
