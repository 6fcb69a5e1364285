"""Where a downstream backbone's weights come from, and what it is: random, a run of this project, or a weights file.

`config.init` (classification, t-SNE, grid) and a tool's `backbone` (embed, select, export) name one of:

- ``"random"``: torchvision's default init of a ResNet (no zero-initialised residual BN), timm's of a ViT;
- a pretraining workdir (it holds ``backbone/``), an exported backbone directory (``backbone.json``), or a
  classification run (``classifier/classifier.json``: its fine-tuned backbone);
- a ``.safetensors`` / ``.npz`` file with torchvision / timm ResNet names (e.g. ImageNet weights), or a timm / DINO /
  DINOv2 / MAE-named ViT (`models.vit_io`; e.g. UltraDINO or DINOv2 weights).

What a backbone is, its identity (`models.backbone.description`: arch and width, or arch, patch size, registers and
LayerScale), is read from its files and must match what the config names: another architecture is an error naming
both and the overrides that fit, never a silent partial load. A ViT's position embeddings are resampled to the
configured input size as timm does when it loads a checkpoint for another size.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from fetalssl_jax.errors import DataError
from fetalssl_jax.models import torch_io, vit_io
from fetalssl_jax.models.backbone import (
    ARCHS,
    MIN_IMAGE_SIZE,
    backbone_variables,
    description,
    is_vit,
    random_variables,
    variable_shapes,
)
from fetalssl_jax.models.vit import VIT_ARCHS
from fetalssl_jax.train.checkpoint import load_backbone
from fetalssl_jax.validation import MISSING, Checks, is_int

FILE_LAYER_SCALE = 1e-5  # the identity of a weights file with LayerScale: its initial value is not in the file


def check_keys(c: Checks) -> None:
    """Adds the problems of a tool's backbone keys (`backbone`, `model.*` to match the files, `image_size`) to `c`."""
    c.text("backbone", "a model: a run, an exported backbone, a weights file or 'random'")
    if c.get("model.arch") != "":
        c.one_of("model.arch", ARCHS)
    c.integer("model.width", 0, "0: from the files")
    if c.get("model.patch_size") is not MISSING:
        c.integer("model.patch_size", 0, "0: from the files")
    size = c.get("image_size")
    if is_int(size) and size == 0:
        return
    c.integer("image_size", MIN_IMAGE_SIZE, "0: the size the backbone was trained at")


@dataclasses.dataclass(frozen=True)
class BackboneInit:
    """Backbone variables (numpy: {'params'}, and {'batch_stats'} for a ResNet) and where they came from."""

    variables: dict[str, Any]
    kind: str  # "random", "pretrained", "classifier" or "weights_file"
    source: str
    description: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class FoundBackbone:
    """A backbone as its files hold it, before it is fitted to a configured model (`fit_variables`)."""

    identity: dict[str, Any]  # `models.backbone.description` of what the files hold
    image_size: int | None  # the input size the files record (None: they do not say)
    kind: str  # "pretrained", "classifier" or "weights_file"
    source: str
    description: dict[str, Any]  # backbone.json or classifier.json (a weights file: its identity)
    variables: dict[str, Any] | None = None  # a run's variables in this project's layout ...
    state_dict: dict[str, Any] | None = dataclasses.field(default=None, repr=False)  # ... or a weights file's entries


def describe(identity: Mapping[str, Any]) -> str:
    """A backbone's identity in words: 'a resnet18 of width 64', 'a vit_small with 14-pixel patches and 4
    registers'."""
    if not is_vit(identity.get("arch", "")):
        return f"a {identity.get('arch')}" + (f" of width {identity['width']}" if identity.get("width") else "")
    extras = [f"{identity['patch_size']}-pixel patches"] if identity.get("patch_size") else []
    registers = identity.get("reg_tokens") or 0
    extras += [f"{registers} register{'s' if registers > 1 else ''}"] if registers else []
    extras += ["LayerScale"] if identity.get("layer_scale") else []
    return f"a {identity['arch']}" + (f" with {' and '.join(extras)}" if extras else "")


def _comparable(identity: Mapping[str, Any]) -> dict[str, Any]:
    """An identity as compared: LayerScale by its presence (its value is only the initial one)."""
    return {k: bool(v) if k == "layer_scale" else v for k, v in identity.items()}


TOOL_HINT = "leave model.arch, model.width and model.patch_size empty ('' / 0) to use what the files hold"


def check_identity(source: str, found: Mapping[str, Any], wanted: Mapping[str, Any], tool: bool = False) -> None:
    """DataError when the backbone at `source` (its identity `found`) is not what `wanted` names (the keys it has:
    a tool gives only some); the message names both and, for a config (not a `tool`), the overrides that fit."""
    have, want = _comparable(found), _comparable(wanted)
    if all(have.get(k) == v for k, v in want.items()):
        return
    same_family = is_vit(found.get("arch", "")) == is_vit(wanted.get("arch", found.get("arch", "")))
    differ = [k for k in found if k in want and have[k] != want[k] or not same_family]
    hint = "set " + " ".join(f"--config.model.{k}={found[k]}" for k in differ)
    if not same_family:
        family = "ViT" if is_vit(found.get("arch", "")) else "ResNet"
        preset = "a ViT preset (e.g. configs/classify.py:vit)" if family == "ViT" else "the default preset"
        hint = f"a {family} needs a {family}'s model keys: start from {preset}, then {hint}"
    wanted_text = describe({**found, **wanted} if same_family else wanted)
    asker = "asked" if tool else "the config asks"
    raise DataError(f"{source} holds {describe(found)}; {asker} for {wanted_text} ({TOOL_HINT if tool else hint})")


def weights_identity(state_dict: Mapping[str, Any], source: str) -> tuple[dict[str, Any], int | None]:
    """(identity, input size) of a weights file: a ResNet's arch and width (its input size is not in the file), or a
    ViT's arch, patch size, registers and LayerScale and the input size of its position embeddings."""
    if not any(k.endswith("patch_embed.proj.weight") for k in state_dict):
        arch, width = torch_io.infer_resnet(state_dict, source)
        return {"arch": arch, "width": width}, None
    try:
        layout = vit_io.infer_vit(state_dict, source)
    except (KeyError, ValueError) as error:
        raise DataError(str(error.args[0])) from None
    if layout.arch is None:
        raise DataError(
            f"{source}: a ViT of width {layout.embed_dim}, depth {layout.depth}, {layout.num_heads} heads and MLP "
            f"ratio {layout.mlp_ratio:g} is none of {', '.join(VIT_ARCHS)} (timm's tiny/small/base and the test size)"
        )
    identity = {"arch": layout.arch, "patch_size": layout.patch_size, "reg_tokens": layout.reg_tokens,
                "layer_scale": FILE_LAYER_SCALE if layout.layer_scale else 0.0}  # fmt: skip
    return identity, layout.image_size


def recorded_image_size(directory: pathlib.Path, description: dict[str, Any]) -> int | None:
    """The input size a pretraining run trained at: in backbone.json, else in the run's config.json."""
    if description.get("image_size"):
        return int(description["image_size"])
    for config_file in (directory / "config.json", directory.parent / "config.json"):
        if config_file.is_file():
            size = json.loads(config_file.read_text()).get("data", {}).get("image_size")
            return int(size) if size else None
    return None


def stored_backbone(path: str | pathlib.Path) -> FoundBackbone | None:
    """The backbone of a pretraining workdir, an exported backbone directory or a classification run (its workdir or
    its classifier/ directory) at `path`; None when `path` holds none of them."""
    path = pathlib.Path(path)
    for directory in (path, path / "backbone"):
        if (directory / "backbone.json").is_file():
            variables, found = load_backbone(directory)
            identity = found.get("identity", {})
            if "arch" not in identity:
                raise DataError(f"{directory / 'backbone.json'} names no architecture (identity.arch)")
            return FoundBackbone(description(identity), recorded_image_size(directory, found), "pretrained",
                                 str(directory), found, variables)  # fmt: skip
    for directory in (path, path / "classifier"):
        if (directory / "classifier.json").is_file():
            from fetalssl_jax.downstream.classification import load_classifier

            _, variables, found, spec = load_classifier(directory)
            return FoundBackbone(spec.identity(), spec.image_size, "classifier", str(path), found,
                                 backbone_variables(variables))  # fmt: skip
    return None


def find_backbone(spec: str | pathlib.Path) -> FoundBackbone | None:
    """The backbone at `spec` (a weights file or a directory of a run, see the module docstring), or None for a
    directory that holds none. DataError for a path that does not exist or a file that is no weights file."""
    path = pathlib.Path(str(spec).strip()).expanduser()
    if not path.exists():
        raise DataError(f"{str(spec).strip()!r}: no such file or directory")
    if path.is_file():
        state_dict = torch_io.load_state_dict_file(path)  # a .pth or another suffix: an error naming the formats
        identity, size = weights_identity(state_dict, str(path))
        return FoundBackbone(identity, size, "weights_file", str(path), identity, state_dict=state_dict)
    return stored_backbone(path)


def own_variables(found: FoundBackbone) -> dict[str, Any]:
    """`found`'s variables in this project's layout as its files hold them (a weights file converted at the input
    size it records, a ResNet's at any)."""
    if found.state_dict is None:
        return found.variables
    return fit_variables(found, {**found.identity, "dtype": "float32"}, found.image_size or MIN_IMAGE_SIZE)


def fit_variables(found: FoundBackbone, model: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """`found`'s variables (numpy) for the backbone `model` at `image_size` inputs: names converted from a weights
    file, a ViT's position embeddings resampled to the input size and its training-only mask token dropped. Every
    entry must fit (DataError naming the first that does not)."""
    expected = variable_shapes(model, image_size)
    if is_vit(model["arch"]):
        if image_size % int(model["patch_size"]):
            raise DataError(f"{found.source}: input size {image_size} is not a multiple of the ViT's patch size "
                            f"{model['patch_size']}; set image_size to one")  # fmt: skip
        state_dict = found.state_dict if found.state_dict is not None else vit_io.to_timm_state_dict(found.variables)
        try:
            return vit_io.from_timm_state_dict(state_dict, expected, found.source)
        except (KeyError, ValueError) as error:
            raise DataError(str(error.args[0])) from None
    if found.state_dict is not None:
        return torch_io.from_torch_state_dict(found.state_dict, expected, found.source)
    variables = found.variables
    shapes = jax.tree.map(np.shape, expected)
    if not set(expected) <= set(variables) or jax.tree.map(np.shape, {k: variables[k] for k in expected}) != shapes:
        raise DataError(f"{found.source}: backbone variables do not match {describe(description(model))}")
    return {k: jax.tree.map(np.asarray, variables[k]) for k in expected}


def resolve_backbone(spec: str, model: Mapping[str, Any], image_size: int, seed: int = 0) -> BackboneInit:
    """The variables of the backbone `spec` names (see the module docstring) for the configured `model` (a config's
    `model` keys) at `image_size` inputs; `seed`: of a random init."""
    spec = str(spec).strip()
    wanted = description(model)
    if spec == "random":
        return BackboneInit(random_variables(model, image_size, seed), "random", "random", wanted)
    forms = "use 'random', a pretraining workdir, an exported backbone directory, a classification run, or a " \
            ".safetensors/.npz weights file"  # fmt: skip
    path = pathlib.Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"config.init={spec!r}: no such file or directory; {forms}")
    found = find_backbone(path)
    if found is None:
        hint = " (its pretraining has not finished: run it again to resume)" if (path / "checkpoints").is_dir() else ""
        raise DataError(f"config.init={spec!r}: {path} holds no exported backbone (backbone.json) and no classifier "
                        f"(classifier.json){hint}; {forms}")  # fmt: skip
    check_identity(found.source, found.identity, wanted)
    return BackboneInit(fit_variables(found, model, image_size), found.kind, found.source, found.description)
