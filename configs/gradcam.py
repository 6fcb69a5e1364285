"""Grad-CAM of a trained plane classifier: where does it look? Test images with the map over them.

  python -m fetalssl_jax.main --config configs/gradcam.py --config.classifier=runs/bt-linear-10pct \
      --workdir runs/gradcam [--config.num_images=16 --config.stage=3]

Writes gradcam.png (a class-balanced random pick of the run's test images; titles: true / predicted plane, red
when wrong) into --workdir. `stage` is the ResNet stage whose output is explained: 4 (layer4) as the paper, 3 for
a finer map on small images. A ViT classifier's map is the class token's attention to the patches in its last
block, averaged over the heads (`downstream/gradcam.py`); `stage` stays 4 then.
"""

from fetalssl_jax import config_lib, presets


def tiny(c) -> None:
    """Tests: a few images."""
    c.num_images = 6


PRESETS = {"default": lambda c: None, "tiny": tiny}


def get_config(arg: str | None = None):
    """Grad-CAM config; `arg` names a preset (default, tiny) optionally followed by ,key=value."""
    c = presets.tool_config("gradcam")
    c.classifier = ""  # a classification run's workdir (its test split is read from its config.json)
    c.num_images = 16
    c.stage = 4
    c.seed = 0  # which test images are picked
    return config_lib.apply_preset(c, arg, PRESETS)
