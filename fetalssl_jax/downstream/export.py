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

from fetalssl_jax.models import torch_io


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
    raise FileNotFoundError(f"{path} holds no backbone (backbone.json) and no classifier (classifier.json)")


def export_torch(backbone: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Writes the backbone of `backbone` as a torchvision-named state dict to `out` (.safetensors or .npz)."""
    variables, _ = backbone_variables_of(backbone)
    return torch_io.save_state_dict_file(out, torch_io.to_torch_state_dict(variables))


def run_export(config, workdir: str | pathlib.Path) -> str:
    """The `export` task (configs/export.py): `<workdir>/backbone.<config.format>` or `<workdir>/classifier.onnx`."""
    from fetalssl_jax.config_lib import validate_tool

    validate_tool(config)
    workdir = pathlib.Path(workdir)
    if config.format != "onnx":
        return f"wrote {export_torch(config.backbone, workdir / f'backbone.{config.format}')}"
    from fetalssl_jax.downstream import onnx_export

    workdir.mkdir(parents=True, exist_ok=True)
    if config.get("classifier", "").strip():
        path = onnx_export.export_classifier(config.classifier, workdir / "classifier.onnx")
    else:
        path = onnx_export.export_backbone(config.backbone, workdir / "backbone.onnx", config.get("image_size") or None)
    return f"wrote {path}"
