"""Export a trained backbone for PyTorch users: a ``.safetensors`` state dict with torchvision ResNet names.

  python -m fetalssl_jax.downstream.export --backbone workdirs/barlow_twins --out barlow_resnet18.safetensors

`--backbone` is a pretraining workdir, an exported backbone directory, or a classification run (its fine-tuned
backbone). In PyTorch::

    from safetensors.torch import load_file
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(load_file("barlow_resnet18.safetensors"), strict=False)
    # missing == ['fc.weight', 'fc.bias']: the classifier head is not part of a backbone
"""

from __future__ import annotations

import pathlib
import sys
from collections.abc import Sequence
from typing import Any

from fetalssl_jax.models import torch_io


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
    raise FileNotFoundError(f"{path} holds no backbone (backbone.json) and no classifier (classifier.json)")


def export_torch(backbone: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Writes the backbone of `backbone` as a torchvision-named state dict to `out` (.safetensors or .npz)."""
    variables, _ = backbone_variables_of(backbone)
    return torch_io.save_state_dict_file(out, torch_io.to_torch_state_dict(variables))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line."""
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", required=True, help="pretraining workdir, backbone directory or classifier run")
    parser.add_argument("--out", required=True, help="output .safetensors (or .npz) file")
    args = parser.parse_args(argv)
    try:
        path = export_torch(args.backbone, args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
