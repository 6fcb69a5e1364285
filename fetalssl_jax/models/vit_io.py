"""ViT weights in timm's naming: export for timm users, import timm / DINO / DINOv2 / MAE encoder state dicts.

Files are ``.safetensors`` or ``.npz`` (``torch_io.load_state_dict_file`` / ``save_state_dict_file``) holding a flat
state dict with timm ``VisionTransformer`` names (``cls_token``, ``pos_embed``, ``reg_token``,
``patch_embed.proj.weight``, ``blocks.0.attn.qkv.weight``, ``blocks.0.ls1.gamma``, ``norm.weight`` ...). Linear
weights are transposed ``[out, in] <-> [in, out]``, the patch embedding ``[D, C, p, p] <-> [p, p, C, D]``,
LayerNorm ``weight`` is Flax's ``scale``. The layout of ``fetalssl_jax.models.vit`` is timm's default one
(position embeddings for class token, registers and patches), so an export loads with ``strict=True`` into
``VisionTransformer(**infer_vit(state_dict).timm_kwargs())``; ``mask_token`` is training-only and not exported.

Import reads any of these layouts and maps it exactly onto ours:

- timm, DINO, MAE encoders: ``pos_embed`` covers class token (+ registers) + patches;
- DINOv2 hub files: ``register_tokens`` without position embeddings (zeros there), ``mask_token`` [1, D],
  blocks possibly in chunks (``blocks.<chunk>.<i>.``); iBOT names its mask token ``masked_embed``;
- timm ``no_embed_class=True`` (timm's DINOv2-with-registers ports): no position embedding for class/registers.

A common key prefix (``module.``, ``backbone.``, ``teacher.backbone.`` ...) is found and stripped; heads, decoders
(MAE ``decoder_*`` and its decoder-width ``mask_token``) and other keys outside the trunk are ignored; anything
inside the trunk that a timm ``Block`` does not have (SwiGLU MLPs, q/k norms, ``norm_pre``) is an error naming it.
Width, depth, patch size, channels, registers and LayerScale come from the shapes; heads from the known widths.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import traverse_util

from fetalssl_jax.models.state_dicts import check_fits
from fetalssl_jax.models.vit import ARCH_SPECS, ViT, resample_pos_embed

__all__ = ["HEADS_BY_WIDTH", "ViTLayout", "from_timm_state_dict", "infer_vit", "to_timm_state_dict"]

# Attention heads of the published ViTs by width: timm tiny/small/base/large/huge, DINO(v2) S/B/L.
HEADS_BY_WIDTH = {64: 2, 192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}
_BLOCK_KEY = re.compile(r"^blocks\.(?:\d+\.)?(\d+)\.(.+)$")  # DINOv2 chunked blocks: blocks.<chunk>.<index>.
_BLOCK_LEAVES = {  # timm Block key (after blocks.i.) -> Flax path under blocks_i
    f"{module}.{field}": (*module.split("."), leaf)
    for module in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "norm1", "norm2")
    for field, leaf in (("weight", "scale" if module.startswith("norm") else "kernel"), ("bias", "bias"))
} | {"ls1.gamma": ("ls1", "gamma"), "ls2.gamma": ("ls2", "gamma")}


@dataclasses.dataclass(frozen=True)
class ViTLayout:
    """What a ViT state dict holds: sizes, and how many position rows precede the patches' (``pos_prefix``)."""

    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    grid_size: int  # side of the square patch grid the position embeddings are made for
    in_chans: int
    mlp_ratio: float
    reg_tokens: int
    layer_scale: bool
    pos_prefix: int  # 1 + reg_tokens (timm default), 1 (DINOv2 with registers) or 0 (timm no_embed_class)

    @property
    def image_size(self) -> int:
        return self.grid_size * self.patch_size

    @property
    def arch(self) -> str | None:
        """The `VIT_ARCHS` name of these sizes, or None."""
        sizes = (self.embed_dim, self.depth, self.num_heads)
        return next((name for name, spec in ARCH_SPECS.items() if spec == sizes and self.mlp_ratio == 4.0), None)

    def build(self, image_size: int | None = None, **kwargs: Any) -> ViT:
        """Our `ViT` of these sizes (position embeddings for ``image_size``, default the checkpoint's)."""
        return ViT(
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            patch_size=self.patch_size,
            image_size=image_size or self.image_size,
            mlp_ratio=self.mlp_ratio,
            reg_tokens=self.reg_tokens,
            layer_scale_init=1e-5 if self.layer_scale else None,
            **kwargs,
        )

    def timm_kwargs(self) -> dict[str, Any]:
        """``timm.models.vision_transformer.VisionTransformer`` arguments that load this state dict (strict)."""
        kwargs = dict(
            img_size=self.image_size,
            patch_size=self.patch_size,
            in_chans=self.in_chans,
            num_classes=0,
            embed_dim=self.embed_dim,
            depth=self.depth,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            reg_tokens=self.reg_tokens,
            init_values=1e-5 if self.layer_scale else None,
        )
        if self.pos_prefix == 0:
            kwargs["no_embed_class"] = True
        elif self.pos_prefix != 1 + self.reg_tokens:
            raise ValueError(
                "DINOv2 layout (registers without position embeddings) has no timm equivalent as it is: convert it "
                "with to_timm_state_dict(from_timm_state_dict(state_dict)) first"
            )
        return kwargs


def _trunk_prefix(state_dict: Mapping[str, Any], source: str, prefix: str | None) -> str:
    if prefix is not None:
        if prefix + "patch_embed.proj.weight" not in state_dict:
            raise KeyError(
                f"{source}: no {prefix + 'patch_embed.proj.weight'!r}; keys start with {sorted(state_dict)[:5]}"
            )
        return prefix
    stems = [k[: -len("patch_embed.proj.weight")] for k in state_dict if k.endswith("patch_embed.proj.weight")]
    stems = [p for p in stems if p == "" or p.endswith(".")]
    if not stems:
        raise KeyError(f"{source}: no ViT 'patch_embed.proj.weight' found; keys start with {sorted(state_dict)[:5]}")
    if len(stems) > 1:
        raise KeyError(f"{source}: several ViT trunks (prefixes {stems}); keep one or pass prefix=")
    return stems[0]


def _trunk(state_dict: Mapping[str, Any], source: str, prefix: str | None) -> tuple[str, dict[str, np.ndarray]]:
    """(prefix, the trunk's entries with the prefix stripped and DINOv2's names made timm's)."""
    prefix = _trunk_prefix(state_dict, source, prefix)
    trunk = {k[len(prefix) :]: np.asarray(v) for k, v in state_dict.items() if k.startswith(prefix)}
    if "register_tokens" in trunk:
        trunk["reg_token"] = trunk.pop("register_tokens")
    if "masked_embed" in trunk:
        trunk["mask_token"] = trunk.pop("masked_embed")  # iBOT's name
    dim = trunk["patch_embed.proj.weight"].shape[0]
    if "mask_token" in trunk:
        if trunk["mask_token"].size == dim:
            trunk["mask_token"] = trunk["mask_token"].reshape(1, dim)
        else:
            del trunk["mask_token"]  # MAE: the decoder's mask token, of the decoder's width
    return prefix, trunk


def infer_vit(
    state_dict: Mapping[str, Any], source: str = "state dict", num_heads: int | None = None, prefix: str | None = None
) -> ViTLayout:
    """The `ViTLayout` of a timm / DINO / DINOv2 / MAE-named ViT state dict; ``num_heads`` for an unknown width."""
    prefix, trunk = _trunk(state_dict, source, prefix)
    dim, in_chans, patch, _ = trunk["patch_embed.proj.weight"].shape
    blocks = {int(m.group(1)) for k in trunk if (m := _BLOCK_KEY.match(k))}
    if not blocks or sorted(blocks) != list(range(len(blocks))):
        raise ValueError(f"{source}: ViT blocks {sorted(blocks)} are not numbered 0..depth-1")
    if num_heads is None:
        if dim not in HEADS_BY_WIDTH:
            raise ValueError(f"{source}: ViT width {dim} is not one of {sorted(HEADS_BY_WIDTH)}; give num_heads")
        num_heads = HEADS_BY_WIDTH[dim]
    fc1 = next((v for k, v in trunk.items() if k.endswith(".mlp.fc1.weight")), None)
    if fc1 is None:
        raise KeyError(f"{source}: no {prefix}blocks.*.mlp.fc1.weight (a SwiGLU MLP is not supported)")
    reg_tokens = int(trunk["reg_token"].shape[1]) if "reg_token" in trunk else 0
    for needed, why in (("pos_embed", "learned absolute position embeddings"), ("norm.weight", "the final norm")):
        if needed not in trunk:
            raise KeyError(f"{source}: no {prefix}{needed}: a ViT here needs {why} (as timm's global_pool='token')")
    rows = trunk["pos_embed"].shape[1]
    fits = [
        (k, math.isqrt(rows - k))
        for k in dict.fromkeys((1 + reg_tokens, 1, 0))
        if math.isqrt(rows - k) ** 2 == rows - k
    ]
    if len(fits) != 1:
        raise ValueError(
            f"{source}: {prefix}pos_embed has {rows} rows: not a square patch grid after 0, 1 or "
            f"{1 + reg_tokens} prefix rows (or ambiguous)"
        )
    return ViTLayout(
        embed_dim=int(dim),
        depth=len(blocks),
        num_heads=int(num_heads),
        patch_size=int(patch),
        grid_size=int(fits[0][1]),
        in_chans=int(in_chans),
        mlp_ratio=fc1.shape[0] / dim,
        reg_tokens=reg_tokens,
        layer_scale=any(k.endswith(".ls1.gamma") for k in trunk),
        pos_prefix=int(fits[0][0]),
    )


def _flax_path(key: str) -> tuple[str, ...] | None:
    """timm trunk key -> Flax params path; None for keys outside the trunk."""
    if key in ("cls_token", "reg_token", "pos_embed", "mask_token"):
        return (key,)
    if key.startswith("patch_embed.proj."):
        return ("patch_embed", {"weight": "kernel", "bias": "bias"}[key.rsplit(".", 1)[1]])
    if key in ("norm.weight", "norm.bias"):
        return ("norm", "scale" if key.endswith("weight") else "bias")
    match = _BLOCK_KEY.match(key)
    if match and match.group(2) in _BLOCK_LEAVES:
        return (f"blocks_{match.group(1)}", *_BLOCK_LEAVES[match.group(2)])
    if match or key.startswith(("patch_embed.", "norm_pre.")):
        raise KeyError(f"{key!r} is not part of a timm ViT trunk (another block type?)")
    return None  # head.*, fc_norm.*, decoder_*, ...


def _to_flax_array(key: str, value: np.ndarray) -> np.ndarray:
    value = np.asarray(value, np.float32)
    if key.endswith("patch_embed.proj.weight"):
        return value.transpose(2, 3, 1, 0)
    if value.ndim == 2 and key.endswith(".weight"):
        return value.T
    return value


def _pos_embed_rows(pos_embed: np.ndarray, layout: ViTLayout) -> np.ndarray:
    """Position embeddings in our layout (class, registers, patches): zero rows where the file's layout has none."""
    missing = 1 + layout.reg_tokens - layout.pos_prefix  # registers (DINOv2), or class token too (no_embed_class)
    if not missing:
        return pos_embed
    zeros = np.zeros((1, missing, pos_embed.shape[-1]), np.float32)
    if layout.pos_prefix == 1:
        return np.concatenate([pos_embed[:, :1], zeros, pos_embed[:, 1:]], axis=1)
    return np.concatenate([zeros, pos_embed], axis=1)


def from_timm_state_dict(
    state_dict: Mapping[str, Any],
    expected: Mapping[str, Any] | None = None,
    source: str = "state dict",
    num_heads: int | None = None,
    prefix: str | None = None,
) -> dict[str, dict]:
    """Flax variables ``{'params': ...}`` of our `ViT` from a timm / DINO / DINOv2 / MAE-named state dict.

    With ``expected`` (variables or shapes of the target model, e.g. ``jax.eval_shape(model.init, ...)``), the
    position embeddings are resampled to its grid (as timm's checkpoint loading does), a ``mask_token`` it has and
    the file lacks starts at zeros (its init), one the file has and it lacks is dropped, and every other leaf must
    be present with the same shape: a missing, unexpected or mis-shaped entry raises naming the key and ``source``.
    """
    layout = infer_vit(state_dict, source, num_heads, prefix)
    prefix, trunk = _trunk(state_dict, source, prefix)
    params: dict[tuple[str, ...], np.ndarray] = {}
    for key, value in trunk.items():
        try:
            path = _flax_path(key)
        except KeyError as error:
            raise KeyError(f"{source}: {prefix}{error.args[0]}") from None
        if path is not None:
            params[path] = _to_flax_array(key, value)
    params[("pos_embed",)] = _pos_embed_rows(params[("pos_embed",)], layout)
    if expected is not None:
        _fit_to(params, traverse_util.flatten_dict(dict(expected["params"])), layout, prefix, source)
    return {"params": traverse_util.unflatten_dict(params)}


def _fit_to(params: dict, expected: Mapping[tuple[str, ...], Any], layout: ViTLayout, prefix: str, source: str) -> None:
    """Makes `params` (flat) the shape of `expected` (flat) where the conversion is exact or timm's, or raises."""
    pos, want = params[("pos_embed",)], tuple(np.shape(expected[("pos_embed",)]))
    num_prefix = 1 + layout.reg_tokens
    side = math.isqrt(max(want[1] - num_prefix, 0))
    if pos.shape != want and pos.shape[2] == want[2] and side * side == want[1] - num_prefix:
        params[("pos_embed",)] = np.asarray(resample_pos_embed(pos, (side, side), num_prefix))
    if ("mask_token",) in expected and ("mask_token",) not in params:
        params[("mask_token",)] = np.zeros(expected[("mask_token",)].shape, np.float32)
    if ("mask_token",) not in expected:
        params.pop(("mask_token",), None)
    check_fits(params, expected, lambda path: prefix + _timm_key(path), source, "ViT",
               "the ViT arch, registers and LayerScale", "the ViT arch, patch size and input channels")  # fmt: skip


def _timm_key(path: tuple[str, ...]) -> str:
    """Flax params path -> timm key (the inverse of `_flax_path`)."""
    if len(path) == 1:
        return path[0]
    if path[0] == "patch_embed":
        return "patch_embed.proj." + {"kernel": "weight", "bias": "bias"}[path[1]]
    field = {"kernel": "weight", "scale": "weight", "bias": "bias", "gamma": "gamma"}[path[-1]]
    if path[0] == "norm":
        return f"norm.{field}"
    return f"blocks.{path[0][len('blocks_') :]}.{'.'.join(path[1:-1])}.{field}"


def to_timm_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A timm ``VisionTransformer`` state dict (numpy float32) of our ViT's variables, ``mask_token`` left out.

    ``VisionTransformer(**infer_vit(sd).timm_kwargs()).load_state_dict(sd, strict=True)`` then loads it.
    """
    state_dict = {}
    for path, value in traverse_util.flatten_dict(dict(variables["params"])).items():
        if path == ("mask_token",):
            continue
        array = np.asarray(value, np.float32)
        if path == ("patch_embed", "kernel"):
            array = array.transpose(3, 2, 0, 1)
        elif path[-1] == "kernel":
            array = array.T
        state_dict[_timm_key(path)] = np.ascontiguousarray(array)
    return dict(sorted(state_dict.items()))
