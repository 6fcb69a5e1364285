"""DINO (Caron et al. 2021) self-distillation, with DINOv2's (Oquab et al. 2024) iBOT masked-patch loss and KoLeo
regulariser as options.

A student network (backbone -> `DINOHead`) and a teacher, its exponential moving average (`MomentumMethod`:
momentum cosine from `momentum_base` to 1, every parameter, heads included). Views, made on the device: two global
crops at `data.image_size` (`augment.view1`, `augment.view2`) and `local_crops` local crops at `local_crop_size`
(`augment.local`), one frame each. The teacher sees the two global crops, the student all of them; the loss is the
cross-entropy between the teacher's centred and sharpened softmax, softmax((t - centre) / teacher_temp), and the
student's softmax(s / student_temp), averaged over every (teacher crop, other student crop) pair (`dino_loss`).
The centre is an EMA (`center_momentum`) of the teacher's logits, kept in the train state's `extra` beside the
teacher; `centering` 'sinkhorn_knopp' (DINOv2's recipes) replaces the centred softmax by three Sinkhorn-Knopp
iterations over the batch of both global crops (`sinkhorn_knopp`), and the centre then stays unused. The teacher
temperature rises linearly from `warmup_teacher_temp` to `teacher_temp` over the first `warmup_teacher_temp_epochs`;
epochs of this method are `num_epochs`' share of the run's steps (with `num_steps`, the same share of them).

DINOv2's options: with `ibot_weight` > 0 a random `mask_probability` share of the student's global crops has a
`mask_ratio` share of its patches replaced by the ViT's mask token (`mask_mode`: 'block', blobs of neighbouring
patches, or 'random' patches), and the student's patch tokens there are distilled from the teacher's on the
unmasked crop (`ibot_patch_loss`, through the DINO head or a separate one, with its own centre); with
`koleo_weight` > 0 the KoLeo loss spreads the student's class tokens of each global crop. The last layer of the
heads is kept fixed for the first epoch by the optimiser (`optim.frozen_params`, `optim.freeze_epochs`).

Choices where the references leave room: block masks are made with static shapes (the patches of lowest score in
a smooth random field, exactly round(ratio * N) of them) instead of DINOv2's rejection-sampled rectangles on the
host; the teacher temperature rises per step as DINOv2's, not per epoch as DINO's.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fetalssl_jax.data.augment import augment_batch, check_view
from fetalssl_jax.methods.base import apply_model, register
from fetalssl_jax.methods.dino_losses import CENTERINGS, dino_center_update, dino_loss, ibot_patch_loss, koleo_loss
from fetalssl_jax.methods.momentum import MomentumMethod
from fetalssl_jax.models.backbone import MIN_IMAGE_SIZE, create_backbone, is_vit
from fetalssl_jax.models.heads import DINOHead
from fetalssl_jax.validation import MISSING, is_int, is_number

MASK_MODES = ("block", "random")


def patch_masks(
    rng: jax.Array, images: int, grid: int, probability: float, ratio: tuple[float, float], mode: str
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """iBOT masks of `images` crops of grid x grid patches: each crop is masked with `probability`, then a share
    U[ratio] of its N = grid**2 patches, exactly round(share * N) of them ('random': any patches; 'block': those
    of lowest value in bilinearly upsampled coarse noise, so blobs of neighbours).

    Returns (mask [images, N] bool, index [images, M] int32, selected [images, M] bool): the M = ceil(ratio[1] * N)
    patches of lowest score of each crop (the masked ones first) and which of them are masked; the losses read
    only these M, so their shapes are static."""
    n = grid * grid
    keys = jax.random.split(rng, 4)
    masked = jax.random.uniform(keys[0], (images,)) < probability
    share = jax.random.uniform(keys[1], (images,), minval=ratio[0], maxval=ratio[1])
    count = jnp.where(masked, jnp.round(share * n), 0).astype(jnp.int32)
    score = jax.random.uniform(keys[2], (images, n))
    if mode == "block":
        coarse = max(2, grid // 3)
        field = jax.random.uniform(keys[3], (images, coarse, coarse))
        field = jax.image.resize(field, (images, grid, grid), method="linear").reshape(images, n)
        score = field + 1e-3 * score  # ties broken at random
    order = jnp.argsort(score, axis=1)
    rank = jnp.argsort(order, axis=1)
    m = math.ceil(ratio[1] * n)
    return rank < count[:, None], order[:, :m].astype(jnp.int32), jnp.arange(m)[None, :] < count[:, None]


class DINONetwork(nn.Module):
    """Backbone and head(s) for the student (`student=True`: every crop, masked global crops) and the teacher (the
    global crops as they are). `inputs`: {'global' [2B, H, W, 3], 'local' [L*B, h, w, 3], and with iBOT 'mask'
    [2B, N], 'patch_index' [2B, M]}. Returns {'cls' (backbone features of the global crops), 'global' and 'local'
    (head logits), 'patches' (head logits of the indexed patches [2B, M, K], iBOT only)}."""

    backbone: nn.Module
    head: nn.Module
    patch_head: nn.Module | None = None
    ibot: bool = False

    def __call__(self, inputs: dict[str, jax.Array], train: bool = True, student: bool = True) -> dict[str, Any]:
        out = {}
        if self.ibot:
            mask = inputs["mask"] if student else None
            tokens = self.backbone(inputs["global"], train=train, mask=mask, return_tokens=True)
            out["cls"] = tokens.cls
            patches = jnp.take_along_axis(tokens.patches, inputs["patch_index"][..., None], axis=1)
            out["patches"] = (self.patch_head or self.head)(patches, train=train)
        else:
            out["cls"] = self.backbone(inputs["global"], train=train)
        out["global"] = self.head(out["cls"], train=train)
        if student and "local" in inputs:
            out["local"] = self.head(self.backbone(inputs["local"], train=train), train=train)
        return out


@register
class DINO(MomentumMethod):
    """DINO; `method_kwargs`: see `default_kwargs`. `extra` = {'target_params', 'target_state' (the teacher),
    'center' [1, out_dim], and with iBOT 'patch_center' [1, out_dim]}."""

    name = "dino"

    @classmethod
    def check_config(cls, c):
        super().check_config(c)
        for key in ("out_dim", "head_hidden", "head_bottleneck", "head_layers", "local_crop_size"):
            c.integer(f"method_kwargs.{key}")
        c.integer("method_kwargs.local_crops", 0)
        for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            c.positive_number(f"method_kwargs.{key}")
        for key in ("warmup_teacher_temp_epochs", "koleo_weight", "ibot_weight"):
            c.non_negative_number(f"method_kwargs.{key}")
        c.below_one("method_kwargs.center_momentum")
        for key in ("norm_last_layer", "ibot_separate_head", "use_bn_in_head"):
            c.boolean(f"method_kwargs.{key}")
        c.probability("method_kwargs.mask_probability")
        c.one_of("method_kwargs.mask_mode", MASK_MODES)
        c.one_of("method_kwargs.centering", CENTERINGS)
        ratio = c.get("method_kwargs.mask_ratio")
        if ratio is not MISSING and not (
            isinstance(ratio, (tuple, list)) and len(ratio) == 2 and all(is_number(r) for r in ratio)
            and 0 < ratio[0] <= ratio[1] <= 1
        ):  # fmt: skip
            c.fail("method_kwargs.mask_ratio", ratio, "must be (low, high) with 0 < low <= high <= 1")
        cls._check_architecture(c)
        if is_int(c.get("method_kwargs.local_crops")) and c.get("method_kwargs.local_crops") > 0:
            check_view(c, "augment.local")
        if is_number(c.get("method_kwargs.koleo_weight")) and c.get("method_kwargs.koleo_weight") > 0:
            c.integer("batch_size", 2, "KoLeo needs a nearest neighbour in the batch")

    @classmethod
    def _check_architecture(cls, c):
        """iBOT masks a ViT's patches (a ResNet is refused by name); the local crops must fit the backbone."""
        arch, ibot = c.get("model.arch"), c.get("method_kwargs.ibot_weight")
        vit = isinstance(arch, str) and is_vit(arch)
        if is_number(ibot) and ibot > 0 and arch is not MISSING and not vit:
            why = "the iBOT loss (method_kwargs.ibot_weight > 0) masks a ViT's patches; use a ViT (configs/dino.py)"
            c.fail("model.arch", arch, why + " or set method_kwargs.ibot_weight = 0 for plain DINO")
        size, patch = c.get("method_kwargs.local_crop_size"), c.get("model.patch_size")
        if not is_int(size) or size < 1:
            return
        if vit and is_int(patch) and patch > 0 and size % patch:
            c.fail("method_kwargs.local_crop_size", size, f"must be a multiple of model.patch_size = {patch}")
        if not vit and arch is not MISSING and size < MIN_IMAGE_SIZE:
            c.fail("method_kwargs.local_crop_size", size, f"must be >= {MIN_IMAGE_SIZE} (the ResNets downsample 32x)")

    @classmethod
    def example_mode(cls, config) -> str:
        return "pairs" if config.data.max_gap > 0 else "frames"

    # ---- schedules ------------------------------------------------------------------------------------------
    def epochs_to_steps(self, epochs: float) -> int:
        """Steps of `epochs` of this run: their share of `num_epochs`, of the run's steps."""
        return round(epochs / max(float(self.config.num_epochs), 1e-9) * self.total_steps)

    def teacher_temp(self, step: jax.Array) -> jax.Array:
        """The teacher temperature of `step`: linear from `warmup_teacher_temp` to `teacher_temp`, then constant."""
        k = self.kwargs
        warmup = self.epochs_to_steps(k.warmup_teacher_temp_epochs)
        progress = jnp.clip(jnp.asarray(step, jnp.float32) / max(warmup, 1), 0.0, 1.0) if warmup > 0 else 1.0
        return k.warmup_teacher_temp + (k.teacher_temp - k.warmup_teacher_temp) * progress

    # ---- model ----------------------------------------------------------------------------------------------
    @property
    def uses_ibot(self) -> bool:
        return self.kwargs.ibot_weight > 0

    def _head(self, name: str) -> DINOHead:
        k = self.kwargs
        return DINOHead(k.out_dim, k.head_hidden, k.head_bottleneck, k.head_layers, k.norm_last_layer,
                        k.use_bn_in_head, self.dtype, name=name)  # fmt: skip

    def build_model(self) -> nn.Module:
        model = {**self.config.model.to_dict(), "mask_token": self.uses_ibot}
        backbone = create_backbone(model, self.config.data.image_size)
        patch_head = self._head("patch_head") if self.uses_ibot and self.kwargs.ibot_separate_head else None
        return DINONetwork(backbone, self._head("head"), patch_head, self.uses_ibot)

    def init_extra_state(self, variables):
        extra = super().init_extra_state(variables)
        extra["center"] = jnp.zeros((1, self.kwargs.out_dim), jnp.float32)
        if self.uses_ibot:
            extra["patch_center"] = jnp.zeros((1, self.kwargs.out_dim), jnp.float32)
        return extra

    # ---- views ----------------------------------------------------------------------------------------------
    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> dict[str, jax.Array]:
        """Two global crops (view1 of the first frame, view2 of the last), `local_crops` local crops of the first
        frame (crop-major: crop i is rows i*B..(i+1)*B), and the iBOT masks of the global crops."""
        k, augment = self.kwargs, self.config.augment
        global_rng, local_rng, mask_rng = jax.random.split(rng, 3)
        inputs = {"global": jnp.concatenate(self.two_views(global_rng, frames))}
        if k.local_crops > 0:
            first = jnp.concatenate([frames[:, 0]] * k.local_crops)
            local = augment_batch(local_rng, first, augment.local.to_dict(), k.local_crop_size)
            inputs["local"] = local.astype(self.dtype)
        if self.uses_ibot:
            grid = self.config.data.image_size // self.config.model.patch_size
            mask, index, selected = patch_masks(mask_rng, inputs["global"].shape[0], grid, k.mask_probability,
                                                tuple(k.mask_ratio), k.mask_mode)  # fmt: skip
            inputs.update(mask=mask, patch_index=index, patch_selected=selected)
        return inputs

    # ---- loss -----------------------------------------------------------------------------------------------
    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        k = self.kwargs
        model = self.build_model()
        student, new_state = apply_model(model, params, model_state, inputs, train=True, rng=rng)
        teacher, _ = apply_model(model, extra["target_params"], extra["target_state"], inputs, train=True,
                                 student=False)  # fmt: skip
        teacher = jax.lax.stop_gradient(teacher)
        batch, temp = inputs["global"].shape[0] // 2, self.teacher_temp(step)
        crops = lambda x: x.reshape(-1, batch, x.shape[-1])  # noqa: E731  [crops * B, K] -> [crops, B, K]
        student_logits = crops(student["global"])
        if "local" in student:
            student_logits = jnp.concatenate([student_logits, crops(student["local"])])
        teacher_logits = crops(teacher["global"])
        loss = dino_loss(student_logits, teacher_logits, extra["center"], k.student_temp, temp, k.centering)
        metrics = {"momentum": self.momentum(step), "teacher_temp": temp, "loss_dino": loss}
        if k.centering == "centering":
            extra = {**extra, "center": dino_center_update(extra["center"], teacher_logits, k.center_momentum)}
        if self.uses_ibot:
            ibot, extra["patch_center"] = self._ibot(student, teacher, inputs, extra["patch_center"], temp)
            loss = loss + k.ibot_weight * ibot
            metrics["loss_ibot"] = ibot
        if k.koleo_weight > 0:
            koleo = sum(koleo_loss(cls) for cls in crops(student["cls"]))
            loss = loss + k.koleo_weight * koleo
            metrics["loss_koleo"] = koleo
        return loss, (new_state, extra, metrics)

    def _ibot(self, student, teacher, inputs, center, temp) -> tuple[jax.Array, jax.Array]:
        """iBOT's loss on the masked patches and the patch centre's update with the teacher's logits there."""
        k = self.kwargs
        selected = inputs["patch_selected"]
        loss = ibot_patch_loss(student["patches"], teacher["patches"], selected, center, k.student_temp, temp,
                               k.centering)  # fmt: skip
        if k.centering != "centering":
            return loss, center
        weight = selected.astype(jnp.float32)[..., None]
        count = jnp.sum(weight)
        batch_center = jnp.sum(teacher["patches"] * weight, axis=(0, 1)) / jnp.maximum(count, 1.0)
        new_center = dino_center_update(center, batch_center[None], k.center_momentum)
        return loss, jnp.where(count > 0, new_center, center)


def default_kwargs(
    out_dim: int = 65536,
    head_hidden: int = 2048,
    head_bottleneck: int = 256,
    head_layers: int = 3,
    norm_last_layer: bool = True,
    use_bn_in_head: bool = False,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
    warmup_teacher_temp: float = 0.04,
    warmup_teacher_temp_epochs: float = 0.0,
    center_momentum: float = 0.9,
    centering: str = "centering",
    momentum_base: float = 0.996,
    local_crops: int = 8,
    local_crop_size: int = 96,
    koleo_weight: float = 0.0,
    ibot_weight: float = 0.0,
    ibot_separate_head: bool = False,
    mask_probability: float = 0.5,
    mask_ratio: tuple[float, float] = (0.1, 0.5),
    mask_mode: str = "block",
) -> dict:
    """`method_kwargs` of DINO's reference (main_dino.py's defaults); DINOv2 adds koleo_weight 0.1, ibot_weight 1
    with its mask settings (mask_probability 0.5, mask_ratio (0.1, 0.5))."""
    return {
        "out_dim": out_dim, "head_hidden": head_hidden, "head_bottleneck": head_bottleneck,
        "head_layers": head_layers, "norm_last_layer": norm_last_layer, "use_bn_in_head": use_bn_in_head,
        "student_temp": student_temp,
        "teacher_temp": teacher_temp, "warmup_teacher_temp": warmup_teacher_temp,
        "warmup_teacher_temp_epochs": warmup_teacher_temp_epochs, "center_momentum": center_momentum,
        "centering": centering,
        "momentum_base": momentum_base, "local_crops": local_crops, "local_crop_size": local_crop_size,
        "koleo_weight": koleo_weight, "ibot_weight": ibot_weight, "ibot_separate_head": ibot_separate_head,
        "mask_probability": mask_probability, "mask_ratio": tuple(mask_ratio), "mask_mode": mask_mode,
    }  # fmt: skip
