"""Where a downstream backbone's weights come from: random, a pretraining run, or a PyTorch/timm weights file.

`config.init` is one string:

- ``"random"``: torchvision's default initialisation (no zero-initialised residual BN);
- a pretraining workdir (it holds ``backbone/``), or an exported backbone directory (``backbone.json``);
- a ``.safetensors`` / ``.npz`` file with torchvision or timm ResNet names (e.g. ImageNet weights).

The architecture always comes from ``config.model``; a backbone of another architecture or width is an error
that names both, never a silent partial load.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import numpy as np

from fetalssl_jax.errors import DataError
from fetalssl_jax.models import torch_io
from fetalssl_jax.models.backbone import MIN_IMAGE_SIZE
from fetalssl_jax.models.resnet import RESNET_ARCHS, backbone_initializer, init_key, random_backbone_variables
from fetalssl_jax.train.checkpoint import load_backbone
from fetalssl_jax.validation import Checks, is_int


def check_keys(c: Checks) -> None:
    """Adds the problems of a tool's backbone keys (`backbone`, `model.*` to match the files, `image_size`) to `c`."""
    c.text("backbone", "a model: a run, an exported backbone, a weights file or 'random'")
    if c.get("model.arch") != "":
        c.one_of("model.arch", RESNET_ARCHS)
    c.integer("model.width", 0, "0: from the files")
    size = c.get("image_size")
    if is_int(size) and size == 0:
        return
    c.integer("image_size", MIN_IMAGE_SIZE, "0: the size the backbone was trained at")


@dataclasses.dataclass(frozen=True)
class BackboneInit:
    """Backbone variables ({'params', 'batch_stats'}, numpy) and where they came from."""

    variables: dict[str, Any]
    kind: str  # "random", "pretrained" or "weights_file"
    source: str
    description: dict[str, Any]


def _backbone_directory(path: pathlib.Path) -> pathlib.Path | None:
    if (path / "backbone.json").is_file():
        return path
    if (path / "backbone" / "backbone.json").is_file():
        return path / "backbone"
    return None


def resolve_backbone(spec: str, arch: str, width: int, seed: int = 0) -> BackboneInit:
    """The backbone variables named by `spec` (see the module docstring), checked against `arch`/`width`."""
    spec = str(spec).strip()
    if spec == "random":
        variables = random_backbone_variables(arch, width, seed)
        return BackboneInit(variables, "random", "random", {"arch": arch, "width": width})
    expected = jax.eval_shape(backbone_initializer(arch, width), init_key(seed))  # shapes only: nothing is computed
    path = pathlib.Path(spec).expanduser()
    if path.suffix in (".safetensors", ".npz"):
        state_dict = torch_io.load_state_dict_file(path)
        found_arch, found_width = torch_io.infer_resnet(state_dict, str(path))
        if (found_arch, found_width) != (arch, width):
            raise DataError(
                f"{path} holds a {found_arch} of width {found_width}; the config asks for {arch} of width {width} "
                f"(set --config.model.arch={found_arch} --config.model.width={found_width})"
            )
        variables = torch_io.from_torch_state_dict(state_dict, expected, str(path))
        return BackboneInit(variables, "weights_file", str(path), {"arch": arch, "width": width})
    if not path.exists():
        raise DataError(
            f"config.init={spec!r}: no such file or directory; use 'random', a pretraining workdir, an exported "
            "backbone directory, or a .safetensors/.npz weights file"
        )
    directory = _backbone_directory(path)
    if directory is None:
        hint = " (its pretraining has not finished: run it again to resume)" if (path / "checkpoints").is_dir() else ""
        raise DataError(f"config.init={spec!r}: {path} holds no exported backbone (backbone.json){hint}")
    variables, description = load_backbone(directory)
    identity = description.get("identity", {})
    found = (identity.get("arch"), identity.get("width"))
    if found != (arch, width):
        raise DataError(
            f"{directory} holds a {found[0]} of width {found[1]} ({identity.get('method')}); the config asks for "
            f"{arch} of width {width} (set --config.model.arch={found[0]} --config.model.width={found[1]})"
        )
    shapes = jax.tree.map(np.shape, expected)
    if jax.tree.map(np.shape, {k: variables[k] for k in expected}) != shapes:
        raise DataError(f"{directory}: backbone variables do not match a {arch} of width {width}")
    return BackboneInit(
        {k: jax.tree.map(np.asarray, variables[k]) for k in expected}, "pretrained", str(directory), description
    )
