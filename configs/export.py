"""Export a trained model: a backbone for PyTorch users (a state dict with torchvision ResNet names, or timm
VisionTransformer names for a ViT), or a backbone or a whole plane classifier as ONNX (onnxruntime at the scanner:
predict reads the file as its classifier).

  python -m fetalssl_jax.main --config configs/export.py --config.backbone=workdirs/barlow_twins --workdir runs/export
  python -m fetalssl_jax.main --config configs/export.py --config.classifier=runs/classify --config.format=onnx \
      --workdir runs/export

Give one of `backbone` (a pretraining workdir, an exported backbone directory, a classification run: its
fine-tuned backbone, or a weights file: a DINOv2 file comes out in timm's layout) and `classifier` (a classification
run: the whole classifier, format onnx only). Writes backbone.safetensors (backbone.npz with --config.format=npz,
backbone.onnx with onnx) or classifier.onnx into --workdir. The ONNX graph takes uint8 gray frames [N, S, S, 1]
at the trained size S (N any) and does the preprocessing itself; it outputs features [N, D] or class probabilities
[N, C]; its metadata_props hold the input size, the normalisation, the class names, the architecture and the
project's version. In PyTorch::

    from safetensors.torch import load_file
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(load_file("runs/export/backbone.safetensors"), strict=False)
    # missing == ['fc.weight', 'fc.bias']: the classifier head is not part of a backbone

A ViT's line names the timm constructor that loads it strictly (also in the file's metadata, `timm_kwargs`)::

    model = timm.models.vision_transformer.VisionTransformer(img_size=64, patch_size=8, in_chans=3, num_classes=0,
        embed_dim=192, depth=12, num_heads=3, mlp_ratio=4.0, reg_tokens=0, init_values=None)
    model.load_state_dict(load_file("runs/export/backbone.safetensors"), strict=True)
"""

from fetalssl_jax import config_lib, presets

PRESETS = {"default": lambda c: None}


def get_config(arg: str | None = None):
    """Export config; `arg` names a preset (default) optionally followed by ,key=value."""
    c = presets.tool_config("export")
    c.backbone = ""  # what to export: a backbone ...
    c.classifier = ""  # ... or a whole classifier (format "onnx")
    c.format = "safetensors"  # or "npz", or "onnx"
    c.image_size = 0  # onnx: the input size; 0: what the files record (a classifier's is fixed)
    return config_lib.apply_preset(c, arg, PRESETS)
