"""Masked autoencoder (MAE) pretraining of a ViT on fetal ultrasound frames.

  python -m fetalssl_jax.main --config configs/mae.py           # CPU demo on the embedded data (< 10 minutes)
  python -m fetalssl_jax.main --config configs/mae.py:paper     # the reference's ViT-B/16 setting (GPU/TPU)
  python -m fetalssl_jax.main --config configs/mae.py:tiny      # seconds; what the tests run

Presets: default, tiny, paper. Any key can be overridden: --config.method_kwargs.mask_ratio=0.6
--config.model.arch=vit_small. The encoder is the ViT backbone that evaluation, fine-tuning and export read; the
decoder is trained here only. Why the CPU recipe is what it is: docs/design.md, "Recipes by budget".
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets
from fetalssl_jax.methods.mae import default_kwargs


def reference_view() -> ConfigDict:
    """The reference's only augmentation: RandomResizedCrop(scale=(0.2, 1.0), bicubic) and a horizontal flip."""
    return presets.view(
        crop_scale=(0.2, 1.0), color_jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0, solarize_prob=0.0
    )


def default(c) -> None:
    """CPU demo: the 4-block width-64 vit_micro in 8 px patches at 64 px (64 patches, 16 seen; the ViT that
    configs/dino.py, configs/barlow.py:vit and configs/classify.py:vit use), a 2-block decoder of width 128, 60
    epochs of 24 steps in about 9 minutes on two cores, then the evaluation table; measured in docs/results.md
    ("MAE on the demos' small ViT")."""
    presets.cpu_demo_preset(c)
    c.model = presets.demo_vit()
    c.num_epochs = 60
    c.method_kwargs.update(decoder_width=128, decoder_depth=2, decoder_heads=4)
    c.optim.lr_weights = 3e-3  # x batch / 256
    c.eval.every_steps = -1


def tiny(c) -> None:
    """Seconds on a CPU: for tests and smoke runs (the 4-block vit_micro at 32 px: 16 patches, 4 seen)."""
    presets.tiny_vit_preset(c)
    c.method_kwargs.update(decoder_width=32, decoder_depth=1, decoder_heads=2)


def paper(c) -> None:
    """The reference's ViT-B/16 pretraining (facebookresearch/mae PRETRAIN.md, main_pretrain.py, models_mae.py):
    224 px, effective batch 4096, 800 epochs with 40 of warm-up, base lr 1.5e-4 x batch / 256, weight decay 0.05,
    AdamW betas (0.9, 0.95), cosine to 0, 75 % hidden, normalised-pixel loss, decoder 512 wide, 8 blocks, 16 heads
    (mae_vit_base_patch16_dec512d8b); in bfloat16 (GPU/TPU)."""
    presets.paper_preset(c)
    c.model = presets.vit_model("vit_base", 16)
    c.model.dtype = "bfloat16"
    c.data.image_size = 224
    c.method_kwargs.update(default_kwargs())
    c.batch_size = 4096
    c.num_epochs = 800
    c.optim.warmup_epochs = 40.0


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """MAE config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = presets.base_config()
    c.method = "mae"
    c.model = presets.vit_model("vit_base", 16)
    c.method_kwargs = ConfigDict(default_kwargs())
    c.augment.view1 = reference_view()  # one view per frame: the reconstruction's input and target
    del c.augment["view2"]
    c.optim.name = "adamw"
    c.optim.lr_weights = 1.5e-4  # base rate, x batch / 256 (the reference's `blr`)
    c.optim.lr_batch_scaling = True
    c.optim.weight_decay = 0.05
    c.optim.decay_biases = False  # the reference's param_groups_weight_decay: no decay of biases and norms
    c.optim.adam_b2 = 0.95
    c.optim.warmup_epochs = 40.0
    c.optim.end_lr_factor = 0.0  # the reference's min_lr 0
    return config_lib.apply_preset(c, arg, PRESETS)
