"""Export a trained model: a backbone for PyTorch users (a ``.safetensors`` state dict with torchvision ResNet names,
or timm VisionTransformer names for a ViT), or a backbone or a whole plane classifier as ONNX
(`downstream/onnx_export.py`).

  python -m fetalssl_jax.main --config configs/export.py --config.backbone=workdirs/barlow_twins --workdir runs/export
  python -m fetalssl_jax.main --config configs/export.py --config.classifier=runs/classify --config.format=onnx \
      --workdir runs/export

write ``backbone.safetensors`` (``backbone.npz``, ``backbone.onnx``) or ``classifier.onnx`` into the workdir.
`config.backbone` is a pretraining workdir, an exported backbone directory, a classification run (its
fine-tuned backbone) or a weights file (a DINOv2 file, for one, comes out in timm's layout); `config.classifier` a
classification run. In PyTorch::

    from safetensors.torch import load_file
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(load_file("runs/export/backbone.safetensors"), strict=False)
    # missing == ['fc.weight', 'fc.bias']: the classifier head is not part of a backbone

A ViT loads strictly into ``timm.models.vision_transformer.VisionTransformer(**kwargs)`` (no head: num_classes=0);
the printed line names the arguments, and ``safetensors.safe_open(path, "np").metadata()["timm_kwargs"]`` holds them
as JSON.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from fetalssl_jax.downstream.backbones import find_backbone, own_variables
from fetalssl_jax.errors import DataError, UserError
from fetalssl_jax.models import torch_io, vit_io
from fetalssl_jax.models.backbone import is_vit
from fetalssl_jax.runtime.workdir import make_workdir
from fetalssl_jax.runtime.workdir_lock import exclusive_workdir
from fetalssl_jax.validation import Checks, raise_if


def backbone_variables_of(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(variables, description) of the backbone in a pretraining workdir, exported backbone, classifier run or
    weights file; the description's `identity` is `models.backbone.description` (arch and width, or a ViT's arch,
    patch size, registers, LayerScale) and its `image_size` the input size (None where no file says)."""
    found = find_backbone(path)
    if found is None:
        raise DataError(f"{path} holds no backbone (backbone.json) and no classifier (classifier.json)")
    return own_variables(found), {**found.description, "identity": found.identity, "image_size": found.image_size}


def timm_loading_line(path: pathlib.Path, kwargs: dict[str, Any]) -> str:
    """The Python that loads a timm-named ViT export into timm (strict: every key used, none missing); a .npz file
    is read with numpy (`np.load`) into torch tensors."""
    arguments = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    read = f"safetensors.torch.load_file({str(path)!r})"
    if path.suffix == ".npz":
        read = f"{{k: torch.from_numpy(v) for k, v in numpy.load({str(path)!r}).items()}}"
    return f"timm.models.vision_transformer.VisionTransformer({arguments}).load_state_dict({read}, strict=True)"


def _export_torch(backbone: str | pathlib.Path, out: str | pathlib.Path) -> tuple[pathlib.Path, dict | None]:
    """`export_torch`, and a ViT's timm constructor arguments (None for a ResNet)."""
    variables, description = backbone_variables_of(backbone)
    if not is_vit(description["identity"]["arch"]):
        return torch_io.save_state_dict_file(out, torch_io.to_torch_state_dict(variables)), None
    state_dict = vit_io.to_timm_state_dict(variables)
    kwargs = vit_io.infer_vit(state_dict, str(backbone)).timm_kwargs()
    return torch_io.save_state_dict_file(out, state_dict, {"timm_kwargs": json.dumps(kwargs)}), kwargs


def export_torch(backbone: str | pathlib.Path, out: str | pathlib.Path) -> pathlib.Path:
    """Writes the backbone of `backbone` as a PyTorch state dict to `out` (.safetensors or .npz): torchvision's
    ResNet names, or timm's VisionTransformer names for a ViT (`vit_io.to_timm_state_dict`), with the constructor
    arguments that load it (`timm_loading_line`) in a .safetensors file's metadata (`timm_kwargs`)."""
    return _export_torch(backbone, out)[0]


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
        out = workdir / f"backbone.{config.format}"
        if out.resolve() == pathlib.Path(config.backbone.strip()).expanduser().resolve():
            raise UserError(f"config.backbone = {config.backbone!r} is the file the export would write; choose "
                            "another --workdir")  # fmt: skip
        path, timm_kwargs = _export_torch(config.backbone, out)
        return f"wrote {path}" + (f"; load it with {timm_loading_line(path, timm_kwargs)}" if timm_kwargs else "")
    from fetalssl_jax.downstream import onnx_export

    if config.classifier.strip():
        path = onnx_export.export_classifier(config.classifier, workdir / "classifier.onnx")
    else:
        path = onnx_export.export_backbone(config.backbone, workdir / "backbone.onnx", config.image_size or None)
    return f"wrote {path}"
