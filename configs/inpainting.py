"""Inpainting-autoencoder pretraining on fetal ultrasound frames.

  python -m fetalssl_jax.main --config configs/inpainting.py[:tiny|:paper]

The autoencoder's model and optimiser; the input has one random rectangle erased and filled with random values;
the target is the clean image. Input: resize, RandAugment(1, 1), h/v flips, then erasing.
"""

import pathlib

from fetalssl_jax import config_lib

autoencoder = config_lib.load_config_module(pathlib.Path(__file__).with_name("autoencoder.py"))


def get_config(arg: str | None = None):
    """Inpainting config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = autoencoder.autoencoder_config("inpainting", 1, 1)
    c.method_kwargs.erase_scale = (0.02, 0.33)
    c.method_kwargs.erase_ratio = (0.3, 3.3)
    # the reference; "patches": a masked-autoencoder grid; "outside": all but one box erased (below)
    c.method_kwargs.erase = "rectangle"
    c.method_kwargs.mask_ratio = 0.6  # erase = "patches": fraction of the grid's squares erased
    c.method_kwargs.keep_scale = (0.25, 0.5)  # erase = "outside": the area of the one box left visible
    return config_lib.apply_preset(c, arg, autoencoder.PRESETS)
