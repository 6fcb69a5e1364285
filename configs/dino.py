"""DINO self-distillation of a Vision Transformer on fetal ultrasound frames (DINOv2's iBOT and KoLeo as options).

  python -m fetalssl_jax.main --config configs/dino.py            # CPU demo on the embedded data (< 10 minutes)
  python -m fetalssl_jax.main --config configs/dino.py:paper      # DINO's ViT-S/16 at 224 px (GPUs)
  python -m fetalssl_jax.main --config configs/dino.py:dinov2     # the same with DINOv2's iBOT, KoLeo, Sinkhorn-Knopp
  python -m fetalssl_jax.main --config configs/dino.py:tiny       # seconds; what the tests run

Presets: default, tiny, paper, dinov2. Any key can be overridden: --config.method_kwargs.ibot_weight=1.0.
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets
from fetalssl_jax.methods.dino import default_kwargs

ULTRASOUND_KEYS = ("rotation_prob", "rotation_deg", "ultrasound_prob", "gain_db", "tgc_db", "speckle", "saturation",
                   "hue", "grayscale_prob")  # fmt: skip


def multi_crop_views(c, global_scale=(0.32, 1.0), local_scale=(0.05, 0.32), global_size=224, local_size=96) -> None:
    """DINO's views (main_dino.py's DataAugmentationDINO): flip, colour jitter (0.4, 0.4, 0.2, 0.1) p 0.8,
    grayscale 0.2 on every crop; blur p 1.0 on the first global crop, 0.1 and solarize 0.2 on the second, 0.5 on
    the local crops; blur sigma 0.1-2 px at the reference's 224 px global and 96 px local crops, scaled to the
    sizes here. Crop scales as DINOv2 (0.32-1 global, 0.05-0.32 local)."""
    c.augment.view1 = presets.view(crop_scale=global_scale, blur_prob=1.0, blur_sigma_reference=float(global_size))
    c.augment.view2 = presets.view(crop_scale=global_scale, blur_prob=0.1, solarize_prob=0.2,
                                   blur_sigma_reference=float(global_size))  # fmt: skip
    c.augment.local = presets.view(crop_scale=local_scale, blur_prob=0.5, blur_sigma_reference=float(local_size))


def ultrasound_multi_crop(c, global_scale, local_scale) -> None:
    """`presets.ultrasound_views` on the global crops (any rotation, gain / TGC / speckle, no colour on gray
    frames) and the same nuisances on the local crops, which keep their own scale."""
    presets.ultrasound_views(c, global_scale)
    c.augment.local.update({key: c.augment.view1[key] for key in ULTRASOUND_KEYS})
    c.augment.local.crop_scale = tuple(local_scale)


def dino_adamw(c, lr: float, warmup_epochs: float, min_lr: float = 1e-6) -> None:
    """DINO's optimiser: AdamW at lr x batch/256 after a linear warm-up, cosine to `min_lr`; weight decay cosine
    from 0.04 to 0.4, none on biases, LayerNorm and LayerScale; the heads' last layer fixed in the first epoch;
    gradients not clipped (`paper`: 3.0; the key is in every preset, so any run can set it)."""
    c.optim.name = "adamw"
    c.optim.lr_weights = lr
    c.optim.lr_batch_scaling = True
    c.optim.warmup_epochs = warmup_epochs
    c.optim.end_lr_factor = min_lr / (lr * c.batch_size / 256.0)
    c.optim.weight_decay = 0.04
    c.optim.weight_decay_end = 0.4
    c.optim.decay_biases = False
    c.optim.frozen_params = ("head/last_layer", "patch_head/last_layer")
    c.optim.freeze_epochs = 1.0
    c.optim.clip_grad = 0.0


def default(c) -> None:
    """CPU demo: a 4-block ViT of width 64 (vit_micro), patch 8, 64 px, BatchNorm in the head (without it the
    teacher's centred output goes uniform within 20 steps on these frames), the two global crops only (local crops
    halve the steps a budget buys and add nothing at equal steps: `local_crops=4` gives them at 32 px); measured in
    docs/results.md ("DINO, MAE and Barlow Twins on a ViT")."""
    presets.cpu_demo_preset(c)
    c.model = presets.demo_vit()
    c.batch_size = 64
    c.num_epochs = 30
    c.method_kwargs.update(out_dim=2048, head_hidden=512, head_bottleneck=128, local_crops=0, local_crop_size=32,
                           teacher_temp=0.04, momentum_base=0.99, use_bn_in_head=True)  # fmt: skip
    ultrasound_multi_crop(c, (0.32, 1.0), (0.05, 0.32))
    dino_adamw(c, lr=8e-3, warmup_epochs=0.5)
    c.eval.every_steps = -1


def tiny(c) -> None:
    """Seconds on a CPU: for tests and smoke runs (a 4-block ViT of width 64 at 32 px, 16 px local crops)."""
    presets.tiny_vit_preset(c)
    c.method_kwargs.update(out_dim=128, head_hidden=64, head_bottleneck=32, local_crops=2, local_crop_size=16)
    c.optim.end_lr_factor = 0.01


def paper(c) -> None:
    """DINO's ViT-S/16 at 224 px (GPUs), as the paper's implementation details and main_dino.py give them."""
    presets.paper_preset(c)  # data and bookkeeping of the papers' runs; the model is replaced next
    c.model = presets.vit_model("vit_small", 16)
    c.model.dtype = "bfloat16"
    c.model.drop_path_rate = 0.1  # main_dino.py --drop_path_rate default
    c.data.image_size = c.data.stored_size = 224  # 2 x 224 px global crops + 10 x 96 px local crops:
    c.method_kwargs.local_crops, c.method_kwargs.local_crop_size = 10, 96  # the paper's ViT-S/16 runs
    # paper (Caron et al. 2021, "Implementation details"): batch 1024 (over 16 GPUs for ViT-S/16, as VISSL's
    # dino_16gpus_deits16 config: 16 x 64), AdamW, lr 5e-4 x batch/256 after 10 warm-up epochs, cosine to
    # main_dino.py's --min_lr 1e-6; weight decay cosine 0.04 -> 0.4; student temperature 0.1; teacher temperature
    # 0.04 -> 0.07 over the first 30 epochs; teacher momentum 0.996 -> 1 (cosine); out_dim 65536 (main_dino.py)
    c.batch_size = 1024
    c.num_epochs = 100  # the README's "vanilla" ViT-S/16 run
    c.method_kwargs.update(out_dim=65536, student_temp=0.1, teacher_temp=0.07, warmup_teacher_temp=0.04,
                           warmup_teacher_temp_epochs=30, momentum_base=0.996)  # fmt: skip
    multi_crop_views(c)
    dino_adamw(c, lr=5e-4, warmup_epochs=10)
    c.optim.clip_grad = 3.0  # main_dino.py --clip_grad: each parameter's gradient norm at most 3


def dinov2(c) -> None:
    """`paper` with DINOv2's additions (ssl_default_config.yaml and its train/vitl14.yaml recipe): the iBOT
    masked-patch loss (weight 1, half of the global crops masked, 10-50 % of their patches) through its own head,
    Sinkhorn-Knopp centering of both teachers' outputs, KoLeo (weight 0.1), LayerScale 1e-5 and teacher momentum
    from 0.992."""
    paper(c)
    c.model.layer_scale = 1e-5
    c.method_kwargs.update(ibot_weight=1.0, ibot_separate_head=True, centering="sinkhorn_knopp", koleo_weight=0.1,
                           mask_probability=0.5, mask_ratio=(0.1, 0.5), momentum_base=0.992)  # fmt: skip


PRESETS = {"default": default, "tiny": tiny, "paper": paper, "dinov2": dinov2}


def get_config(arg: str | None = None):
    """DINO config; `arg` names a preset (default, tiny, paper, dinov2) optionally followed by ,key=value."""
    c = presets.base_config()
    c.method = "dino"
    c.model = presets.vit_model("vit_small", 16)
    c.method_kwargs = ConfigDict(default_kwargs())
    c.augment.local = ConfigDict()
    multi_crop_views(c)
    dino_adamw(c, lr=5e-4, warmup_epochs=10)
    return config_lib.apply_preset(c, arg, PRESETS)
