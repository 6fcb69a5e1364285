"""Export a trained backbone for PyTorch users: a ``.safetensors`` state dict with torchvision ResNet names.

  python -m fetalssl_jax.main --config configs/export.py --config.backbone=workdirs/barlow_twins --workdir runs/export

writes ``backbone.safetensors`` into the workdir. `config.backbone` is a pretraining workdir, an exported backbone
directory, or a classification run (its fine-tuned backbone). In PyTorch::

    from safetensors.torch import load_file
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(load_file("runs/export/backbone.safetensors"), strict=False)
    # missing == ['fc.weight', 'fc.bias']: the classifier head is not part of a backbone
"""

from __future__ import annotations

import pathlib
from typing import Any

from fetalssl_jax.errors import DataError
from fetalssl_jax.models import torch_io
from fetalssl_jax.runtime.workdir_lock import exclusive_workdir
from fetalssl_jax.validation import Checks, raise_if


def backbone_variables_of(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables, description) of the backbone in a pretraining workdir, exported backbone or classifier run."""
    from fetalssl_jax.train.checkpoint import load_backbone

    path = pathlib.Path(path)
    for directory in (path, path / "backbone"):
        if (directory / "backbone.json").is_file():
            return load_backbone(directory)
    for directory in (path, path / "classifier"):
        if (directory / "classifier.json").is_file():
            from fetalssl_jax.downstream.classification import load_classifier

            _, variables, description, spec = load_classifier(directory)
            backbone = {k: variables[k]["backbone"] for k in ("params", "batch_stats")}
            return backbone, {"identity": {"arch": spec.arch, "width": spec.width}, **description}
    raise DataError(f"{path} holds no backbone (backbone.json) and no classifier (classifier.json)")


def export_torch(backbone: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Writes the backbone of `backbone` as a torchvision-named state dict to `out` (.safetensors or .npz)."""
    variables, _ = backbone_variables_of(backbone)
    return torch_io.save_state_dict_file(out, torch_io.to_torch_state_dict(variables))


FORMATS = ("safetensors", "npz")


def validate(config) -> None:
    """Raises ConfigError listing every problem of an export config (configs/export.py)."""
    c = Checks(config)
    c.text("backbone", "a pretraining workdir, an exported backbone or a classification run")
    c.one_of("format", FORMATS)
    raise_if(c.problems)


@exclusive_workdir
def run(config, workdir: str | pathlib.Path) -> str:
    """The `export` task (configs/export.py): `<workdir>/backbone.<config.format>`."""
    validate(config)
    path = export_torch(config.backbone, pathlib.Path(workdir) / f"backbone.{config.format}")
    return f"wrote {path}"
