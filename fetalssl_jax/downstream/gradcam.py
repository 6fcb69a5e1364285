"""Where does a trained plane classifier look? Grad-CAM (Selvaraju et al. 2017) of a ResNet, the last block's
attention of a ViT.

ResNet: the activation of a stage (the output of its last block; layer4 by default, as the paper) is read and
perturbed through a Flax method interceptor, so no model code changes for it: the gradient of the class score
with respect to that activation, averaged over space, weights its channels; the ReLU of the weighted sum is the
map, upsampled to the image and scaled to [0, 1] per image.

ViT: the class token's attention to the patches in the last block, averaged over the heads (the map of DINO, Caron
et al. 2021): the class token is what the head reads, and the last block is where it gathers from the patches. The
block's input is read through the same interceptor and its attention weights recomputed from its qkv projection;
the patch grid is upsampled bilinearly to the image and stretched to [0, 1] per image. It is chosen over Grad-CAM on the
patch tokens, whose gradients through the last block's MLP flip sign from patch to patch and speckle the map. Unlike
Grad-CAM it does not depend on the class explained: it shows what the class token looked at, whatever it decided.

  python -m fetalssl_jax.main --config configs/gradcam.py --config.classifier=workdirs/classify --workdir runs/cam

writes ``gradcam.png`` (test images with the map over them, true and predicted plane in the titles) into the
workdir.
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from fetalssl_jax.downstream.report import save_figure
from fetalssl_jax.errors import DataError, UserError
from fetalssl_jax.models.backbone import is_vit
from fetalssl_jax.models.classifier import Classifier
from fetalssl_jax.runtime.workdir_lock import exclusive_workdir
from fetalssl_jax.validation import Checks, is_int, raise_if


def _stage_output_name(model: Classifier, stage: int) -> str:
    sizes = tuple(model.backbone.stage_sizes)
    if not 1 <= stage <= len(sizes):
        raise ValueError(f"stage must be 1..{len(sizes)} (layer1..layer{len(sizes)}), got {stage}")
    return f"layer{stage}_{sizes[stage - 1] - 1}"


def grad_cam(
    model: Classifier,
    variables: dict[str, Any],
    images: jax.Array,
    stage: int = 4,
    target: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Grad-CAM maps [B, H, W] in [0, 1] and logits [B, C] of normalised images [B, H, W, 3].

    `target` [B] picks the explained class per image; default: the predicted class.
    """
    block = _stage_output_name(model, stage)

    def forward(delta: jax.Array | None) -> tuple[jax.Array, jax.Array]:
        captured = {}

        def interceptor(next_fun, args, kwargs, context):
            out = next_fun(*args, **kwargs)
            module = context.module
            in_backbone = getattr(module.parent, "name", None) == "backbone"
            if context.method_name == "__call__" and module.name == block and in_backbone:
                captured["activation"] = out
                if delta is not None:
                    out = out + delta.astype(out.dtype)
            return out

        with nn.intercept_methods(interceptor):
            logits = model.apply(variables, images, train=False)
        if "activation" not in captured:
            raise RuntimeError(f"Grad-CAM found no backbone block {block!r} in the classifier")
        return logits, captured["activation"]

    _, activation_shape = jax.eval_shape(lambda: forward(None))
    delta0 = jnp.zeros(activation_shape.shape, jnp.float32)

    def score(delta):
        logits, activation = forward(delta)
        chosen = jnp.argmax(logits, axis=-1) if target is None else target
        return jnp.sum(jnp.take_along_axis(logits, chosen[:, None], axis=-1)), (logits, activation)

    gradient, (logits, activation) = jax.grad(score, has_aux=True)(delta0)
    weights = jnp.mean(gradient, axis=(1, 2))  # [B, K]: channel importance
    cam = jax.nn.relu(jnp.einsum("bhwk,bk->bhw", activation.astype(jnp.float32), weights))
    b, h, w = images.shape[:3]
    cam = jax.image.resize(cam, (b, h, w), method="bilinear")
    cam = cam / jnp.maximum(jnp.max(cam, axis=(1, 2), keepdims=True), 1e-12)
    return cam, logits


def _attention_input(model: Classifier, variables: dict[str, Any], images: jax.Array, block: str):
    """(logits, the input of ViT block `block`'s attention: its normed tokens) of an eval-mode forward pass."""
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
        module = context.module
        if context.method_name == "__call__" and module.name == "attn" and module.parent.name == block:
            captured["input"] = args[0]
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(interceptor):
        logits = model.apply(variables, images, train=False)
    return logits, captured["input"]


def attention_map(model: Classifier, variables: dict[str, Any], images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The ViT classifier's last-block attention of the class token to the patches, averaged over heads, as maps
    [B, H, W] (bilinear from the patch grid, stretched to [0, 1] per image: attention is positive everywhere, and
    scaled by its maximum alone a near-even map would read as hot everywhere), and the logits [B, C] of normalised
    images [B, H, W, 3]."""
    vit = model.backbone
    last = f"blocks_{vit.depth - 1}"
    logits, x = _attention_input(model, variables, images, last)  # [B, T, D]
    qkv = variables["params"]["backbone"][last]["attn"]["qkv"]
    b, t, d = x.shape
    heads = vit.num_heads
    proj = (x.astype(jnp.float32) @ qkv["kernel"] + qkv["bias"]).reshape(b, t, 3, heads, d // heads)
    q, k = proj[:, 0, 0], proj[:, :, 1]  # the class token's queries [B, heads, d_h]; every token's keys
    weights = jax.nn.softmax(jnp.einsum("bhe,bthe->bht", q, k) / jnp.sqrt(d / heads), axis=-1)
    patches = jnp.mean(weights[:, :, vit.num_prefix_tokens :], axis=1)  # [B, N]: registers left out
    h, w = images.shape[1] // vit.patch_size, images.shape[2] // vit.patch_size
    maps = jax.image.resize(patches.reshape(b, h, w), (b, *images.shape[1:3]), method="bilinear")
    low, high = jnp.min(maps, axis=(1, 2), keepdims=True), jnp.max(maps, axis=(1, 2), keepdims=True)
    return (maps - low) / jnp.maximum(high - low, 1e-12), logits


def overlay_grid(
    images: np.ndarray,
    cams: np.ndarray,
    labels: Sequence[int],
    predictions: Sequence[int],
    class_names: Sequence[str],
    path: pathlib.Path,
    columns: int = 4,
    alpha: float = 0.45,
    title: str = "Grad-CAM: true / predicted plane",
) -> None:
    """A PNG grid: each image in gray with its map in 'jet' over it; titles 'true / predicted' (red if wrong)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    columns = min(columns, n)
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 3.0 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        ax = axes.ravel()[i]
        ax.imshow(images[i], cmap="gray", vmin=0, vmax=255)
        ax.imshow(cams[i], cmap="jet", alpha=alpha, vmin=0.0, vmax=1.0)
        ok = labels[i] == predictions[i]
        ax.set_title(f"{class_names[labels[i]]} / {class_names[predictions[i]]}", fontsize=8,
                     color="black" if ok else "red")  # fmt: skip
    fig.suptitle(title)
    fig.tight_layout()
    save_figure(fig, path)


def gradcam_for_run(workdir: str | pathlib.Path, num_images: int = 16, stage: int = 4, out: str | None = None,
                    seed: int = 0) -> pathlib.Path:  # fmt: skip
    """Grad-CAM overlays (a ViT: its last block's attention, `attention_map`) of `num_images` test images (a
    class-balanced random pick) of a classification run."""
    import ml_collections

    from fetalssl_jax.data import sources
    from fetalssl_jax.data.augment import preprocess_eval
    from fetalssl_jax.downstream.classification import load_classifier

    workdir = pathlib.Path(workdir)
    model, variables, description, spec = load_classifier(workdir)
    config_file = workdir / "config.json"
    if not config_file.is_file():
        raise DataError(f"{config_file} not found: pass the workdir of a classification run")
    config = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    test = sources.labelled_splits(config)["test"]
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(test.labels))
    # Round-robin over classes so every plane shows up in the grid.
    by_class = [order[test.labels[order] == c] for c in range(len(description["classes"]))]
    pick = [int(idx[k]) for k in range(max(map(len, by_class))) for idx in by_class if k < len(idx)][:num_images]
    raw = test.images[pick]
    raw = raw[..., None] if raw.ndim == 3 else raw
    x = preprocess_eval(jnp.asarray(raw), spec.image_size)
    if is_vit(spec.arch):
        if stage != 4:
            raise UserError(f"config.stage = {stage}: a ViT classifier's map is its last block's attention; stage "
                            "picks a ResNet's stage (leave it 4)")  # fmt: skip
        cams, logits = jax.jit(lambda v, x: attention_map(model, v, x))(variables, x)
        title = "class token's attention in the last block (mean over heads): true / predicted plane"
    else:
        cams, logits = jax.jit(lambda v, x: grad_cam(model, v, x, stage))(variables, x)
        title = f"Grad-CAM of layer{stage}: true / predicted plane"
    shown = np.asarray(jax.image.resize(jnp.asarray(raw[..., 0], jnp.float32), (len(pick), spec.image_size,
                                                                                spec.image_size), "cubic"))  # fmt: skip
    path = pathlib.Path(out) if out else workdir / "gradcam.png"
    overlay_grid(np.clip(shown, 0, 255), np.asarray(cams), test.labels[pick], np.asarray(logits).argmax(1),
                 description["classes"], path, title=title)  # fmt: skip
    return path


def validate(config) -> None:
    """Raises ConfigError listing every problem of a Grad-CAM config (configs/gradcam.py)."""
    c = Checks(config)
    c.text("classifier", "a classification run")
    c.integer("num_images")
    c.integer("seed", 0)
    stage = c.get("stage")
    if not (is_int(stage) and 1 <= stage <= 4):
        c.fail("stage", stage, "must be a ResNet stage 1..4 (layer1..layer4)")
    raise_if(c.problems)


@exclusive_workdir
def run(config, workdir: str | pathlib.Path) -> str:
    """The `gradcam` task (configs/gradcam.py): the Grad-CAM grid of `config.classifier` in `workdir`."""
    validate(config)
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    path = gradcam_for_run(config.classifier, config.num_images, config.stage, workdir / "gradcam.png", config.seed)
    return f"wrote {path}"
