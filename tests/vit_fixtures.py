"""Tiny ViTs for the downstream and apply tests: timm's own VisionTransformer at vit_micro's sizes (the oracle), and
this project's exported backbones and classifier runs of a ViT, made in milliseconds instead of trained."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import torch  # torch and timm load before JAX runs anything: imported later, torch's triton import can crash
from timm.models.vision_transformer import VisionTransformer

SIZE, PATCH = 32, 8
MICRO = {"arch": "vit_micro", "patch_size": PATCH, "reg_tokens": 0, "layer_scale": 0.0}  # 64 wide, 4 blocks, 2 heads
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])  # ImageNet's, written out


def timm_vit(img_size: int = SIZE, reg_tokens: int = 0, init_values: float | None = None, seed: int = 0):
    """timm's VisionTransformer of vit_micro's sizes (written out: width 64, depth 4, 2 heads), no head, eval mode,
    any input size (position embeddings resampled as timm does); random weights perturbed so every entry matters."""
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=img_size, patch_size=PATCH, embed_dim=64, depth=4, num_heads=2, num_classes=0,
                              reg_tokens=reg_tokens, init_values=init_values, dynamic_img_size=True).eval()  # fmt: skip
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def state_dict_of(model, prefix: str = "") -> dict[str, np.ndarray]:
    return {prefix + k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def normalised(frames: np.ndarray) -> np.ndarray:
    """uint8 gray frames [N, H, W] -> what a network sees, NCHW float32: /255, gray to RGB, ImageNet mean and std
    (numpy, independently of the project's preprocessing)."""
    x = frames.astype(np.float64)[:, None] / 255.0
    return ((np.repeat(x, 3, axis=1) - MEAN[None, :, None, None]) / STD[None, :, None, None]).astype(np.float32)


def timm_features(model, frames: np.ndarray) -> np.ndarray:
    """The class token after timm's final norm (global_pool='token') of uint8 gray frames [N, H, W]."""
    with torch.no_grad():
        return model(torch.from_numpy(normalised(frames))).numpy()


def frames(n: int, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def vit_backbone_dir(directory: pathlib.Path, model: dict | None = None, seed: int = 0, image_size: int = SIZE):
    """An exported ViT backbone (as a pretraining run writes backbone/): timm-init variables perturbed, backbone.json
    with the identity and the input size; returns (directory, variables)."""
    import jax

    from fetalssl_jax.models.backbone import description, random_variables
    from fetalssl_jax.train.checkpoint import export_backbone

    model = model or MICRO
    variables = random_variables(model, image_size, seed)
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda v: (v + 0.1 * rng.standard_normal(v.shape)).astype(np.float32), variables)
    identity = {"method": "dino", **description(model)}
    export_backbone(directory, variables, {"identity": identity, "image_size": image_size})
    return directory, variables


def vit_classifier_run(
    workdir: pathlib.Path, backbone_variables: dict, head_kernel: np.ndarray, class_names: tuple[str, ...],
    model: dict | None = None,
) -> pathlib.Path:  # fmt: skip
    """A classification run's workdir holding classifier/ (as `_test_and_report` writes it) of a ViT backbone and a
    linear head without bias (logits = class token @ head_kernel); no BatchNorm anywhere."""
    from fetalssl_jax.downstream.classification import StepSpec, save_classifier

    model = model or MICRO
    spec = StepSpec(model["arch"], 0, "float32", len(class_names), 0.0, False, "finetune", SIZE, 5, 5.0, 0.5, 0.5,
                    1e-3, 0.05, patch_size=model["patch_size"], reg_tokens=model["reg_tokens"],
                    layer_scale=model["layer_scale"])  # fmt: skip
    variables = {
        "params": {"backbone": backbone_variables["params"], "head": {"kernel": np.asarray(head_kernel, np.float32)}},
        "batch_stats": {},
    }
    save_classifier(workdir / "classifier", variables,
                    {"spec": dataclasses.asdict(spec), "classes": list(class_names)})  # fmt: skip
    return workdir
