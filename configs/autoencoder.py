"""AutoEncoder pretraining on fetal ultrasound frames.

  python -m fetalssl_jax.main --config configs/autoencoder.py[:tiny|:paper]

ResNet encoder (no pooling) + mirrored transposed-conv decoder, MSE to the input. AdamW lr 1e-3, wd 1e-6,
learning rate x0.5624 every 50 epochs (the reference's StepLR). Input: resize, RandAugment(3, 3), h/v flips.
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets


def autoencoder_config(method: str, randaugment_ops: int, randaugment_magnitude: int):
    """The settings the autoencoder and the inpainting autoencoder share."""
    c = presets.base_config()
    c.method = method
    del c["augment"]  # the reference's RandAugment (`method_kwargs`) is the input transform; no SSL views
    c.method_kwargs = ConfigDict(
        dict(randaugment_ops=randaugment_ops, randaugment_magnitude=randaugment_magnitude, hflip_prob=0.5,
             vflip_prob=0.5)
    )  # fmt: skip
    c.optim.name = "adamw"
    c.optim.lr_weights = 1e-3
    c.optim.lr_batch_scaling = False
    c.optim.weight_decay = 1e-6
    c.optim.schedule = "step"
    c.optim.step_decay_epochs = 50.0
    c.optim.step_decay_factor = 0.5624
    return c


def default(c) -> None:
    """CPU demo: a narrow ResNet-18 at 64 px; a few minutes on two cores, then the evaluation table."""
    presets.cpu_demo_preset(c)
    c.optim.step_decay_epochs = 5.0  # the reference's 50 of 1000 epochs, scaled to the demo's 20


def tiny(c) -> None:
    """Seconds on a CPU: for tests and smoke runs."""
    presets.tiny_preset(c)


def paper(c) -> None:
    """ResNet-50, 256 px, batch 128, 1000 epochs (GPU/TPU)."""
    presets.paper_preset(c)
    c.batch_size = 128
    c.num_epochs = 1000


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """AutoEncoder config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = autoencoder_config("autoencoder", 3, 3)
    return config_lib.apply_preset(c, arg, PRESETS)
