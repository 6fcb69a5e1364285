"""A backbone or a plane classifier from any of the forms a user has, with the architecture read from the files.

Backbones: a pretraining workdir (``backbone/backbone.json``), an exported backbone directory (``backbone.json``),
a classification run (``classifier/classifier.json``: its fine-tuned backbone), a ``.safetensors`` / ``.npz`` file
with torchvision or timm ResNet names, or ``"random"``. Classifiers: a classification run (its workdir or its
``classifier/`` directory), or its ONNX export (a ``.onnx`` file, run by onnxruntime: `apply/onnx_model.py`). A
directory of another kind is an error that names the path, what it holds and the forms that are allowed.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import flax.linen as nn

from fetalssl_jax.apply.onnx_model import OnnxClassifier, load_onnx_classifier
from fetalssl_jax.downstream import classification
from fetalssl_jax.downstream.backbones import resolve_backbone
from fetalssl_jax.downstream.export import recorded_image_size
from fetalssl_jax.downstream.trust import Trust, load_trust
from fetalssl_jax.errors import DataError
from fetalssl_jax.models import torch_io
from fetalssl_jax.models.resnet import create_resnet

BACKBONE_FORMS = (
    "a pretraining workdir (backbone/backbone.json), an exported backbone directory (backbone.json), a "
    "classification run (classifier/classifier.json), a .safetensors/.npz file with torchvision/timm ResNet names, "
    "or 'random'"
)
CLASSIFIER_FORMS = (
    "a classification run's workdir (classifier/classifier.json), its classifier/ directory, or its ONNX export "
    "(a .onnx file of configs/export.py with classifier=)"
)


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A ResNet and its variables ({'params', 'batch_stats'}, numpy), the input size it expects, and its origin."""

    module: nn.Module
    variables: dict[str, Any]
    arch: str
    width: int
    image_size: int
    source: str
    kind: str  # "random", "pretrained", "weights_file" or "classifier"


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
        s = self.spec
        variables = {k: self.variables[k]["backbone"] for k in ("params", "batch_stats")}
        module = create_resnet(s.arch, width=s.width, dtype=s.dtype, conv_impl=s.conv_impl)
        return Backbone(module, variables, s.arch, s.width, s.image_size, self.source, "classifier")


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


def _check_identity(source: str, found: tuple[str, int], arch: str | None, width: int | None) -> tuple[str, int]:
    if (arch and arch != found[0]) or (width and width != found[1]):
        raise DataError(
            f"{source} holds a {found[0]} of width {found[1]}; asked for {arch or found[0]} of width "
            f"{width or found[1]} (leave model.arch / model.width empty to use what the files hold)"
        )
    return found


def load_backbone(
    path: str | pathlib.Path, *, arch: str | None = None, width: int | None = None, image_size: int | None = None
) -> Backbone:
    """The backbone at `path` (see the module docstring). `arch`, `width`, `image_size`: None reads them from the
    files (a weights file does not say its input size: give `image_size`); given, they must match the files.
    'random' needs all three."""
    spec = str(path).strip()
    if spec == "random":
        if not (arch and width and image_size):
            raise DataError("a 'random' backbone needs model.arch, model.width and image_size")
        init = resolve_backbone("random", arch, int(width))
        return Backbone(create_resnet(arch, width=width), init.variables, arch, int(width), int(image_size),
                        "random", "random")  # fmt: skip
    path = pathlib.Path(spec).expanduser()
    if not path.exists():
        raise DataError(f"backbone {spec!r}: no such file or directory; use {BACKBONE_FORMS}")
    if path.is_file():
        state_dict = torch_io.load_state_dict_file(path)  # a .pth or another suffix: an error naming the forms
        found_arch, found_width = _check_identity(str(path), torch_io.infer_resnet(state_dict, str(path)), arch, width)
        if not image_size:
            raise DataError(f"{path}: a weights file does not say its input size; set image_size (e.g. 224)")
        init = resolve_backbone(str(path), found_arch, found_width)
        return Backbone(create_resnet(found_arch, width=found_width), init.variables, found_arch, found_width,
                        int(image_size), str(path), "weights_file")  # fmt: skip
    directory = _find(path, "backbone.json", "backbone")
    if directory is not None:
        description = json.loads((directory / "backbone.json").read_text())
        identity = description.get("identity", {})
        found_arch, found_width = _check_identity(str(directory), (identity.get("arch"), identity.get("width")), arch,
                                                  width)  # fmt: skip
        size = image_size or recorded_image_size(directory, description)
        if not size:
            raise DataError(f"{directory}: backbone.json and config.json give no input size; set image_size")
        init = resolve_backbone(str(directory), found_arch, int(found_width))
        return Backbone(create_resnet(found_arch, width=found_width), init.variables, found_arch, int(found_width),
                        int(size), init.source, "pretrained")  # fmt: skip
    if _find(path, "classifier.json", "classifier") is not None:
        backbone = load_classifier(path).backbone
        _check_identity(str(path), (backbone.arch, backbone.width), arch, width)
        if image_size and image_size != backbone.image_size:
            backbone = dataclasses.replace(backbone, image_size=int(image_size))
        return backbone
    raise DataError(f"{path} holds {describe_directory(path)}; a backbone is {BACKBONE_FORMS}")


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
