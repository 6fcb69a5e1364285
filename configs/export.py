"""Export a trained backbone for PyTorch users: a state dict with torchvision ResNet names.

  python -m fetalssl_jax.main --config configs/export.py --config.backbone=workdirs/barlow_twins --workdir runs/export

`backbone`: a pretraining workdir, an exported backbone directory, or a classification run (its fine-tuned
backbone). Writes backbone.safetensors (or backbone.npz with --config.format=npz) into --workdir. In PyTorch::

    from safetensors.torch import load_file
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(load_file("runs/export/backbone.safetensors"), strict=False)
    # missing == ['fc.weight', 'fc.bias']: the classifier head is not part of a backbone
"""

from fetalssl_jax import config_lib, presets

PRESETS = {"default": lambda c: None}


def get_config(arg: str | None = None):
    """Export config; `arg` names a preset (default) optionally followed by ,key=value."""
    c = presets.tool_config("export")
    c.backbone = ""
    c.format = "safetensors"  # or "npz"
    return config_lib.apply_preset(c, arg, PRESETS)
