"""Export a trained model: a backbone for PyTorch users (a ``.safetensors`` state dict with torchvision ResNet
names), or a backbone or a whole plane classifier as ONNX (`downstream/onnx_export.py`).

  python -m fetalssl_jax.main --config configs/export.py --config.backbone=workdirs/barlow_twins --workdir runs/export
  python -m fetalssl_jax.main --config configs/export.py --config.classifier=runs/classify --config.format=onnx \
      --workdir runs/export

write ``backbone.safetensors`` (``backbone.npz``, ``backbone.onnx``) or ``classifier.onnx`` into the workdir.
`config.backbone` is a pretraining workdir, an exported backbone directory, or a classification run (its
fine-tuned backbone); `config.classifier` a classification run. In PyTorch::

    from safetensors.torch import load_file
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(load_file("runs/export/backbone.safetensors"), strict=False)
    # missing == ['fc.weight', 'fc.bias']: the classifier head is not part of a backbone
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from fetalssl_jax.errors import DataError
from fetalssl_jax.models import torch_io
from fetalssl_jax.runtime.workdir import make_workdir
from fetalssl_jax.runtime.workdir_lock import exclusive_workdir
from fetalssl_jax.validation import Checks, raise_if


def recorded_image_size(directory: pathlib.Path, description: dict[str, Any]) -> int | None:
    """The input size a pretraining run trained at: in backbone.json, else in the run's config.json."""
    if description.get("image_size"):
        return int(description["image_size"])
    for config_file in (directory / "config.json", directory.parent / "config.json"):
        if config_file.is_file():
            size = json.loads(config_file.read_text()).get("data", {}).get("image_size")
            return int(size) if size else None
    return None


def backbone_variables_of(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables, description) of the backbone in a pretraining workdir, exported backbone or classifier run; the
    description's `identity` is {'arch', 'width'} and its `image_size` the input size (None where no file says)."""
    from fetalssl_jax.train.checkpoint import load_backbone

    path = pathlib.Path(path)
    for directory in (path, path / "backbone"):
        if (directory / "backbone.json").is_file():
            variables, description = load_backbone(directory)
            return variables, {**description, "image_size": recorded_image_size(directory, description)}
    for directory in (path, path / "classifier"):
        if (directory / "classifier.json").is_file():
            from fetalssl_jax.downstream.classification import load_classifier

            _, variables, description, spec = load_classifier(directory)
            backbone = {k: variables[k]["backbone"] for k in ("params", "batch_stats")}
            return backbone, {**description, "identity": {"arch": spec.arch, "width": spec.width},
                              "image_size": spec.image_size}  # fmt: skip
    raise DataError(f"{path} holds no backbone (backbone.json) and no classifier (classifier.json)")


def export_torch(backbone: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Writes the backbone of `backbone` as a torchvision-named state dict to `out` (.safetensors or .npz)."""
    variables, _ = backbone_variables_of(backbone)
    return torch_io.save_state_dict_file(out, torch_io.to_torch_state_dict(variables))


FORMATS = ("safetensors", "npz", "onnx")


def validate(config) -> None:
    """Raises ConfigError listing every problem of an export config (configs/export.py): one model, a backbone or
    (to ONNX only) a whole classifier."""
    c = Checks(config)
    c.one_of("format", FORMATS)
    given = [k for k in ("backbone", "classifier") if isinstance(c.get(k), str) and c.get(k).strip()]
    if not given:
        c.fail("backbone", c.get("backbone"), "must name a model, or config.classifier a classifier (it is empty)")
    elif len(given) == 2:
        c.fail("classifier", c.get("classifier"), f"give a backbone or a classifier, not both (config.backbone = "
                                                  f"{c.get('backbone')!r})")  # fmt: skip
    elif given == ["classifier"] and c.get("format") != "onnx":
        c.fail("format", c.get("format"), "a classifier exports as 'onnx' only (config.backbone = <the run> "
                                          "exports its fine-tuned backbone as safetensors or npz)")  # fmt: skip
    if given == ["classifier"] and c.get("image_size") != 0:
        c.fail("image_size", c.get("image_size"), "must be 0 with a classifier (it takes the size it was trained at)")
    raise_if(c.problems)


@exclusive_workdir
def run(config, workdir: str | pathlib.Path) -> str:
    """The `export` task (configs/export.py): `<workdir>/backbone.<config.format>` or `<workdir>/classifier.onnx`."""
    validate(config)
    workdir = make_workdir(workdir)
    if config.format != "onnx":
        return f"wrote {export_torch(config.backbone, workdir / f'backbone.{config.format}')}"
    from fetalssl_jax.downstream import onnx_export

    if config.classifier.strip():
        path = onnx_export.export_classifier(config.classifier, workdir / "classifier.onnx")
    else:
        path = onnx_export.export_backbone(config.backbone, workdir / "backbone.onnx", config.image_size or None)
    return f"wrote {path}"
