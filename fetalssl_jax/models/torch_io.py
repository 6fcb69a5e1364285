"""ResNet weights in PyTorch's naming: import torchvision / timm state dicts, export for PyTorch users.

Files are ``.safetensors`` or ``.npz`` holding a flat state dict with torchvision ResNet names
(``conv1.weight``, ``layer1.0.bn1.running_mean``, ``layer2.0.downsample.0.weight``, ...), which is also what
timm's ``resnet*`` models use. The mapping onto the Flax tree is the one documented in
:mod:`fetalssl_jax.models.resnet`: conv kernels are transposed ``[out, in, kh, kw] -> [kh, kw, in, out]``, BN
``weight``/``running_mean``/``running_var`` become ``scale``/``mean``/``var``. A common key prefix in front of
the trunk (``module.``, ``backbone.``, ``encoder.`` ... as written by DDP or SSL code) is found and stripped;
classifier (``fc.*``) and other keys outside the trunk are ignored; anything inside the trunk that does not
match the expected architecture is an error naming the key.
"""

from __future__ import annotations

import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from fetalssl_jax.errors import DataError
from fetalssl_jax.models.state_dicts import check_fits

__all__ = [
    "from_torch_state_dict",
    "infer_resnet",
    "load_state_dict_file",
    "save_state_dict_file",
    "to_torch_state_dict",
]

_BN_FIELDS = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}  # fmt: skip
_BLOCK_KEY = re.compile(r"^layer(\d+)\.(\d+)\.(.+)$")


def _flax_module_path(torch_module: str) -> tuple[str, ...] | None:
    """torch module path (without the field) -> Flax module path; None if it is not a ResNet trunk module."""
    if torch_module in ("conv1", "bn1"):
        return (torch_module,)
    match = _BLOCK_KEY.match(torch_module)
    if not match:
        return None
    stage, block, rest = match.groups()
    flax_block = f"layer{stage}_{block}"
    if re.fullmatch(r"(conv|bn)\d", rest):
        return (flax_block, rest)
    if rest == "downsample.0":
        return (flax_block, "downsample_conv")
    if rest == "downsample.1":
        return (flax_block, "downsample_bn")
    return None


def _torch_module_path(flax_path: tuple[str, ...]) -> str:
    if len(flax_path) == 1:
        return flax_path[0]
    block, layer = flax_path
    stage, index = block[len("layer") :].split("_")
    layer = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(layer, layer)
    return f"layer{stage}.{index}.{layer}"


def _trunk_prefix(state_dict: Mapping[str, Any], source: str) -> str:
    """The prefix in front of the stem's ``conv1.weight`` (e.g. ``module.backbone.``)."""
    stems = [k[: -len("conv1.weight")] for k in state_dict if k.endswith("conv1.weight") and ".layer" not in "." + k]
    stems = [p for p in stems if p == "" or p.endswith(".")]
    if not stems:
        raise DataError(f"{source}: no ResNet stem 'conv1.weight' found; keys start with {sorted(state_dict)[:5]}")
    if len(stems) > 1:
        raise DataError(f"{source}: several ResNet trunks ({', '.join(p + 'conv1.weight' for p in stems)}); keep one")
    return stems[0]


def infer_resnet(state_dict: Mapping[str, Any], source: str = "state dict") -> tuple[str, int]:
    """(arch, width) of a torchvision-named ResNet state dict, e.g. ('resnet50', 64)."""
    from fetalssl_jax.models.resnet import ARCH_SPECS, Bottleneck

    prefix = _trunk_prefix(state_dict, source)
    width = int(np.shape(state_dict[prefix + "conv1.weight"])[0])
    blocks: dict[int, set[int]] = {}
    bottleneck = False
    for key in state_dict:
        match = _BLOCK_KEY.match(key[len(prefix) :]) if key.startswith(prefix) else None
        if match:
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
            bottleneck |= match.group(3).startswith("conv3.")
    stage_sizes = tuple(len(blocks[s]) for s in sorted(blocks))
    for arch, (sizes, block_cls) in ARCH_SPECS.items():
        if sizes == stage_sizes and (block_cls is Bottleneck) == bottleneck:
            return arch, width
    kind = "bottleneck" if bottleneck else "basic"
    raise DataError(f"{source}: ResNet with {kind} blocks per stage {stage_sizes} is not one of {list(ARCH_SPECS)}")


def from_torch_state_dict(
    state_dict: Mapping[str, Any], expected: Mapping[str, Any] | None = None, source: str = "state dict"
) -> dict[str, dict]:
    """Flax variables ``{'params': ..., 'batch_stats': ...}`` from a torchvision/timm-named ResNet state dict.

    With ``expected`` (Flax variables of the target model, e.g. from ``model.init``), every leaf must be present
    with the same shape; a missing, unexpected or mis-shaped trunk entry raises ``DataError`` naming the key and
    ``source`` (`state_dicts.check_fits`).
    """
    prefix = _trunk_prefix(state_dict, source)
    variables: dict[str, dict] = {"params": {}, "batch_stats": {}}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue  # heads, projectors, optimiser entries of a larger checkpoint
        module, _, field = key[len(prefix) :].rpartition(".")
        flax_module = _flax_module_path(module)
        if flax_module is None:
            if module.startswith(("conv1", "bn1", "layer")):
                raise DataError(
                    f"{source}: {key!r} is not part of a torchvision ResNet (deep stem or another variant?)"
                )
            continue  # fc.* and friends
        if field == "num_batches_tracked":
            continue
        array = np.asarray(value, dtype=np.float32)
        if flax_module[-1].startswith(("conv", "downsample_conv")):
            if field != "weight" or array.ndim != 4:
                raise DataError(f"{source}: {key!r} should be a 4-D conv weight, got shape {array.shape}")
            collection, leaf, array = "params", "kernel", array.transpose(2, 3, 1, 0)
        elif field in _BN_FIELDS:
            collection, leaf = _BN_FIELDS[field]
        else:
            raise DataError(f"{source}: unexpected entry {key!r}")
        node = variables[collection]
        for name in flax_module:
            node = node.setdefault(name, {})
        node[leaf] = array
    if expected is not None:
        _check_against(variables, expected, prefix, source)
    return variables


def _flat(tree: Mapping[str, Any], path: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, (*path, key)))
        else:
            out[(*path, key)] = value
    return out


def _torch_key(path: tuple[str, ...]) -> str:
    collection, *module, leaf = path
    field = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean", "var": "running_var"}
    return f"{_torch_module_path(tuple(module))}.{field[leaf]}"


def _check_against(found: Mapping, expected: Mapping, prefix: str, source: str) -> None:
    found_flat = _flat(found)
    expected_flat = {k: v for k, v in _flat(expected).items() if k[0] in ("params", "batch_stats")}
    check_fits(found_flat, expected_flat, lambda path: prefix + _torch_key(path), source, "ResNet",
               "config.model.arch and config.model.width", "config.model.arch and config.model.width")  # fmt: skip


def to_torch_state_dict(variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """A torchvision ResNet state dict (numpy, float32; ``num_batches_tracked`` as int64 0) of Flax variables.

    ``torchvision.models.resnet50().load_state_dict(sd, strict=False)`` then reports only ``fc.*`` as missing.
    """
    state_dict: dict[str, np.ndarray] = {}
    for path, value in _flat({k: variables[k] for k in ("params", "batch_stats")}).items():
        array = np.asarray(value, dtype=np.float32)
        if path[-1] == "kernel":
            array = array.transpose(3, 2, 0, 1)
        state_dict[_torch_key(path)] = np.ascontiguousarray(array)
        if path[0] == "batch_stats" and path[-1] == "mean":
            state_dict[_torch_key(path).replace("running_mean", "num_batches_tracked")] = np.zeros((), np.int64)
    return dict(sorted(state_dict.items()))


def load_state_dict_file(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """A flat state dict from ``.safetensors`` or ``.npz`` (PyTorch pickles need torch: convert them first)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"weights file {str(path)!r} not found")
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(str(path)))
        except Exception as error:  # safetensors raises its own error types for corrupt headers
            raise DataError(f"{path}: not a readable safetensors file ({error})") from error
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    raise DataError(
        f"{path}: weights must be .safetensors or .npz; convert a PyTorch .pth/.pt with "
        "`safetensors.torch.save_file(torch.load(f, map_location='cpu'), 'weights.safetensors')`"
    )


def save_state_dict_file(
    path: str | os.PathLike, state_dict: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
) -> pathlib.Path:
    """Writes ``.safetensors`` or ``.npz`` atomically (a temporary file renamed into place); `metadata` (text) goes
    into a .safetensors file's header (a .npz file has none)."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors":
        from safetensors.numpy import save_file

        save_file({k: np.ascontiguousarray(v) for k, v in state_dict.items()}, str(tmp), metadata=metadata)
    elif path.suffix == ".npz":
        with open(tmp, "wb") as f:
            np.savez(f, **state_dict)
    else:
        raise DataError(f"{path}: choose a .safetensors or .npz file name")
    tmp.replace(path)
    return path
