"""t-SNE of frozen backbone features, coloured by plane: does a backbone separate the planes without labels?

  python -m fetalssl_jax.main --config configs/tsne.py --config.init=workdirs/barlow_twins --workdir runs/tsne

writes ``tsne_<split>.png`` and ``tsne_<split>.npz`` (the 2-D points, labels and patient ids) into the workdir.
Any backbone `config.init` accepts works (`downstream/backbones.py`): random, a pretraining workdir, an exported
backbone, a classification run, a ResNet or ViT weights file; a ViT's features are its class token.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
from sklearn.manifold import TSNE
from sklearn.preprocessing import StandardScaler

from fetalssl_jax.downstream.report import save_figure
from fetalssl_jax.runtime.workdir_lock import exclusive_workdir
from fetalssl_jax.validation import Checks, raise_if


def tsne_embedding(features: np.ndarray, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE (scikit-learn, PCA init) of standardised features [N, F]; perplexity capped below N."""
    features = np.asarray(features, np.float64)
    if len(features) < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {len(features)}")
    x = StandardScaler().fit_transform(features)
    perplexity = min(perplexity, (len(x) - 1) / 3)
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x).astype(np.float32)


def plot_embedding(
    points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: pathlib.Path, title: str = ""
) -> None:
    """Scatter of the 2-D points, one colour per plane."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 5.5))
    for c, name in enumerate(class_names):
        mask = labels == c
        if np.any(mask):
            ax.scatter(points[mask, 0], points[mask, 1], s=10, alpha=0.8, label=f"{name} ({mask.sum()})")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(fontsize=8, markerscale=2)
    ax.set_title(title or "t-SNE of frozen features")
    fig.tight_layout()
    save_figure(fig, path)


def embed_backbone(config, out_dir: str | pathlib.Path, split: str = "test") -> pathlib.Path:
    """Features of `config.init`'s backbone on a labelled split -> t-SNE plot and points; returns the PNG path."""
    from fetalssl_jax.data import sources
    from fetalssl_jax.downstream.backbones import resolve_backbone
    from fetalssl_jax.eval.frozen import extract_features
    from fetalssl_jax.models.backbone import create_backbone

    splits = sources.labelled_splits(config)
    data = splits[split]
    init = resolve_backbone(config.init, config.model, config.data.image_size, config.seed)
    backbone = create_backbone(config.model, config.data.image_size)
    features = extract_features(backbone, init.variables, data.images, config.data.image_size, config.eval_batch_size)
    points = tsne_embedding(features, config.seed)
    out_dir = pathlib.Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    np.savez(out_dir / f"tsne_{split}.npz", points=points, labels=data.labels, patient_ids=data.patient_ids.astype(str))
    path = out_dir / f"tsne_{split}.png"
    name = "random init" if init.kind == "random" else pathlib.Path(init.source).name
    names = tuple(config.classes) or sources.class_names(config)
    plot_embedding(points, data.labels, names, path, f"t-SNE of {name} features ({split} split)")
    return path


def validate(config) -> None:
    """Raises ConfigError listing every problem of a t-SNE config (configs/tsne.py)."""
    from fetalssl_jax.data import sources
    from fetalssl_jax.models import backbone

    c = Checks(config)
    c.text("init", "'random', a pretraining workdir, a backbone directory or a weights file")
    c.one_of("split", ("train", "valid", "test"))
    c.integer("seed", 0)
    c.integer("eval_batch_size")
    backbone.check_config(c)
    sources.check_labelled(c)
    raise_if(c.problems)


@exclusive_workdir
def run(config, workdir: str | pathlib.Path) -> str:
    """The `tsne` task (configs/tsne.py): t-SNE of `config.init`'s features on `config.split`, in `workdir`."""
    validate(config)
    return f"wrote {embed_backbone(config, workdir, config.split)}"
