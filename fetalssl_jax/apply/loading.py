"""A backbone or a plane classifier from any of the forms a user has, with the architecture read from the files.

Backbones: a pretraining workdir (``backbone/backbone.json``), an exported backbone directory (``backbone.json``),
a classification run (``classifier/classifier.json``: its fine-tuned backbone), a ``.safetensors`` / ``.npz`` file
with torchvision or timm ResNet names or timm / DINO / DINOv2 ViT names, or ``"random"`` (`downstream/backbones.py`).
A ResNet or a ViT: its identity (arch and width, or arch, patch size, registers, LayerScale) comes from the files.
Classifiers: a classification run (its workdir or its ``classifier/`` directory), or its ONNX export (a ``.onnx``
file, run by onnxruntime: `apply/onnx_model.py`). A directory of another kind is an error that names the path, what
it holds and the forms that are allowed.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import flax.linen as nn

from fetalssl_jax.apply.onnx_model import OnnxClassifier, load_onnx_classifier
from fetalssl_jax.downstream import classification
from fetalssl_jax.downstream.backbones import check_identity, find_backbone, fit_variables, resolve_backbone
from fetalssl_jax.downstream.trust import Trust, load_trust
from fetalssl_jax.errors import DataError
from fetalssl_jax.models.backbone import backbone_variables, create_backbone, description, is_vit

BACKBONE_FORMS = (
    "a pretraining workdir (backbone/backbone.json), an exported backbone directory (backbone.json), a "
    "classification run (classifier/classifier.json), a .safetensors/.npz file with torchvision/timm ResNet names "
    "or timm/DINO/DINOv2 ViT names, or 'random'"
)
CLASSIFIER_FORMS = (
    "a classification run's workdir (classifier/classifier.json), its classifier/ directory, or its ONNX export "
    "(a .onnx file of configs/export.py with classifier=)"
)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A ResNet or ViT and its variables (numpy: {'params'}, and {'batch_stats'} for a ResNet), what it is
    (`identity`: `models.backbone.description`), the input size it expects, and its origin."""

    module: nn.Module
    variables: dict[str, Any]
    identity: dict[str, Any]
    image_size: int
    source: str
    kind: str  # "random", "pretrained", "weights_file" or "classifier"

    @property
    def arch(self) -> str:
        return self.identity["arch"]

    @property
    def width(self) -> int | None:
        """A ResNet's base width (None for a ViT)."""
        return self.identity.get("width")


@dataclasses.dataclass(frozen=True)
class PlaneClassifier:
    """A trained plane classifier (backbone + linear head) of a classification run, its class names, and its
    temperature and known-frame rule (`downstream/trust.py`)."""

    spec: classification.StepSpec
    variables: dict[str, Any]
    class_names: tuple[str, ...]
    source: str
    trust: Trust = Trust()

    @property
    def image_size(self) -> int:
        return self.spec.image_size

    @property
    def ood_threshold(self) -> float | None:
        """The score above which a frame is not a known plane; None for a classifier saved without the rule."""
        return None if self.trust.rule is None else self.trust.rule.threshold

    @property
    def backbone(self) -> Backbone:
        """The classifier's (fine-tuned) backbone."""
        module = self.spec.model().backbone
        return Backbone(module, backbone_variables(self.variables), self.spec.identity(), self.spec.image_size,
                        self.source, "classifier")  # fmt: skip


def _find(path: pathlib.Path, name: str, sub: str) -> pathlib.Path | None:
    """`path` or `path/sub`, whichever holds `name`."""
    for directory in (path, path / sub):
        if (directory / name).is_file():
            return directory
    return None


def describe_directory(path: pathlib.Path) -> str:
    """What a directory that holds no model holds, in words (for error messages)."""
    if (path / "checkpoints").is_dir():
        return "a pretraining or classification run that has not finished (checkpoints/ only: run it again)"
    if (path / "results.csv").is_file():
        return "a grid's results (results.csv; its classification runs are in its sub-folders)"
    if (path / "dataset_info.json").is_file() or any(path.glob("*/dataset_info.json")):
        return "a TFDS dataset"
    if (path / "embeddings.npz").is_file():
        return "the output of an embed or select run (embeddings.npz)"
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir() if not p.name.startswith("."))
    return f"no model files (entries: {entries[:8]}{' ...' if len(entries) > 8 else ''})" if entries else "nothing"


def _random(arch: str | None, width: int | None, patch_size: int | None, image_size: int | None) -> Backbone:
    """A random backbone: torchvision's init of a ResNet (arch, width), timm's of a ViT (arch, patch_size)."""
    vit = bool(arch) and is_vit(arch)
    if not (arch and (patch_size if vit else width) and image_size):
        needs = "model.patch_size" if vit else "model.width"
        raise DataError(f"a 'random' backbone needs model.arch, {needs} and image_size")
    model = {"arch": arch, "patch_size": int(patch_size)} if vit else {"arch": arch, "width": int(width)}
    init = resolve_backbone("random", model, int(image_size))
    return Backbone(create_backbone(model, int(image_size)), init.variables, description(model), int(image_size),
                    "random", "random")  # fmt: skip


def load_backbone(
    path: str | pathlib.Path, *, arch: str | None = None, width: int | None = None, patch_size: int | None = None,
    image_size: int | None = None,
) -> Backbone:  # fmt: skip
    """The backbone at `path` (see the module docstring). `arch`, `width` (a ResNet's), `patch_size` (a ViT's),
    `image_size`: None reads them from the files (a ResNet weights file does not say its input size: give
    `image_size`; a ViT's is that of its position embeddings); given, they must match the files ('random' needs
    them)."""
    spec = str(path).strip()
    if spec == "random":
        return _random(arch, width, patch_size, image_size)
    path = pathlib.Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"backbone {spec!r}: no such file or directory; use {BACKBONE_FORMS}")
    classifier_run = _find(path, "backbone.json", "backbone") is None and _find(path, "classifier.json", "classifier")
    if path.is_dir() and classifier_run:  # its backbone as the classifier computes it (its dtype)
        backbone = load_classifier(path).backbone
        check_identity(str(path), backbone.identity, _given(arch, width, patch_size), tool=True)
        patch = backbone.identity.get("patch_size")
        if image_size and patch and image_size % patch:
            raise DataError(f"image_size = {image_size}: not a multiple of {path}'s ViT patch size {patch}")
        return dataclasses.replace(backbone, image_size=int(image_size)) if image_size else backbone
    found = find_backbone(path)  # a file that is no weights file: an error naming the formats
    if found is None:
        raise DataError(f"{path} holds {describe_directory(path)}; a backbone is {BACKBONE_FORMS}")
    check_identity(found.source, found.identity, _given(arch, width, patch_size), tool=True)
    size = image_size or found.image_size
    if not size:
        what = "a weights file does not say its input size" if path.is_file() else "its files give no input size"
        raise DataError(f"{path}: {what}; set image_size (e.g. 224)")
    model = {**found.identity, "dtype": "float32"}
    return Backbone(create_backbone(model, int(size)), fit_variables(found, model, int(size)), found.identity,
                    int(size), found.source, found.kind)  # fmt: skip


def _given(arch: str | None, width: int | None, patch_size: int | None) -> dict[str, Any]:
    """The identity keys a tool names (the others: from the files)."""
    return {k: v for k, v in (("arch", arch), ("width", width), ("patch_size", patch_size)) if v}


def load_classifier(path: str | pathlib.Path) -> PlaneClassifier | OnnxClassifier:
    """The classifier of a classification run (its workdir or its ``classifier/`` directory), or of its ONNX
    export (a ``.onnx`` file: an `OnnxClassifier`, which predict uses as it uses a `PlaneClassifier`)."""
    path = pathlib.Path(str(path).strip()).expanduser()
    if not path.exists():
        raise DataError(f"classifier {str(path)!r}: no such file or directory; use {CLASSIFIER_FORMS}")
    if path.is_file() and path.suffix.lower() == ".onnx":
        return load_onnx_classifier(path)
    if not path.is_dir() or _find(path, "classifier.json", "classifier") is None:
        if path.is_dir() and _find(path, "backbone.json", "backbone") is not None:
            holds = "a backbone (backbone.json), not a classifier"
            hint = (f"; train one on it: python -m fetalssl_jax.main --config configs/classify.py "
                    f"--config.init={path}")  # fmt: skip
        else:
            holds, hint = ("a file" if path.is_file() else describe_directory(path)), ""
        raise DataError(f"{path} holds {holds}; a classifier is {CLASSIFIER_FORMS}{hint}")
    _, variables, description, spec = classification.load_classifier(path)
    return PlaneClassifier(spec, variables, tuple(description["classes"]), str(path), load_trust(path))


def check_class_names(
    classifier: PlaneClassifier | OnnxClassifier, names: tuple[str, ...] | list[str], where: str
) -> None:
    """ValueError when the data's class names (label order) are not the classifier's."""
    if tuple(names) != classifier.class_names:
        raise DataError(
            f"{classifier.source} was trained on the classes {list(classifier.class_names)} but {where} has "
            f"{list(names)}; its predictions would be read with the wrong names: use a classifier trained on "
            "these classes"
        )
