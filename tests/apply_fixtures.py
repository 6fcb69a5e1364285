"""Tiny models for the tests of `fetalssl_jax.apply`: a random backbone, and classifiers saved as a classification
run saves them, made in milliseconds instead of trained."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from conftest import REPO

from fetalssl_jax.config_lib import load_config, set_by_path

ARCH, WIDTH, SIZE = "resnet10", 8, 32


def random_backbone(seed: int = 0, directory: pathlib.Path | None = None):
    """A torchvision-init width-8 ResNet-10 at 32 px; with a `directory`, exported there and loaded from it."""
    from fetalssl_jax.apply import load_backbone
    from fetalssl_jax.downstream.backbones import resolve_backbone
    from fetalssl_jax.train.checkpoint import export_backbone

    if directory is None:
        return load_backbone("random", arch=ARCH, width=WIDTH, image_size=SIZE)
    variables = resolve_backbone("random", {"arch": ARCH, "width": WIDTH}, SIZE, seed).variables
    export_backbone(directory, variables, {"identity": {"arch": ARCH, "width": WIDTH}, "image_size": SIZE})
    return load_backbone(directory)


def save_classifier_run(
    workdir: pathlib.Path, backbone_variables: dict, head_kernel: np.ndarray, class_names: tuple[str, ...],
    head_norm: tuple[np.ndarray, np.ndarray] | None = None, trust=None,
) -> pathlib.Path:  # fmt: skip
    """A classification run's workdir holding `classifier/` (as `_test_and_report` writes it) with the given
    backbone and linear head (no bias: logits = features @ head_kernel; with `head_norm` = (mean, var), logits =
    (features - mean) / sqrt(var + 1e-5) @ head_kernel, the head's non-affine BatchNorm), and with a `trust`
    (`downstream.trust.Trust`: a temperature and a known-frame rule) where given; without one, as a classifier
    saved before they existed."""
    from fetalssl_jax.downstream.classification import StepSpec, save_classifier

    spec = StepSpec(ARCH, WIDTH, "float32", len(class_names), 0.5, head_norm is not None, "finetune", SIZE, 5, 5.0,
                    0.5, 0.5, 1e-3, 1e-6)  # fmt: skip
    variables = {
        "params": {"backbone": backbone_variables["params"], "head": {"kernel": np.asarray(head_kernel, np.float32)}},
        "batch_stats": {"backbone": backbone_variables["batch_stats"]},
    }
    if head_norm is not None:
        variables["batch_stats"]["head_norm"] = {"mean": np.asarray(head_norm[0], np.float32),
                                                 "var": np.asarray(head_norm[1], np.float32)}  # fmt: skip
    description = {"spec": dataclasses.asdict(spec), "classes": list(class_names)}
    if trust is not None:
        trust.save(workdir / "classifier")
        description.update(trust.description())
    save_classifier(workdir / "classifier", variables, description)
    return workdir


def map_statistics(module, variables: dict, frames: np.ndarray, image_size: int) -> np.ndarray:
    """float64 [N, D], by numpy: for each stage of a ResNet (its last block's output, taken out by Flax's
    capture_intermediates), the mean and the standard deviation over positions of every channel, L2-normalised per
    stage, concatenated: the features of the known-frame score, of uint8 frames [N, H, W] (the evaluation's
    preprocessing)."""
    from fetalssl_jax.data.augment import preprocess_eval

    x = preprocess_eval(np.asarray(frames)[..., None], image_size)
    _, state = module.apply(variables, x, train=False, capture_intermediates=True, mutable=["intermediates"])
    blocks = state["intermediates"]
    stages = sorted({name.split("_")[0] for name in blocks if name.startswith("layer")})
    out = []
    for stage in stages:
        last = max((name for name in blocks if name.startswith(stage + "_")), key=lambda n: int(n.split("_")[1]))
        positions = np.asarray(blocks[last]["__call__"][0], np.float64).reshape(len(frames), -1, blocks[last][
            "__call__"][0].shape[-1])  # fmt: skip
        statistics = np.concatenate([positions.mean(1), positions.std(1)], axis=1)
        out.append(statistics / np.linalg.norm(statistics, axis=1, keepdims=True))
    return np.concatenate(out, axis=1)


def tool_config(name: str, **overrides):
    """configs/<name> (a file name with an optional :preset) with `overrides` set by their dotted paths."""
    config = load_config(f"{REPO / 'configs' / name}")
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return config
