"""An out-of-distribution score per frame, so that predict can say "not a known plane" instead of forcing a class.

The score is the distance from a frame's L2-normalised features to its k-th nearest neighbour among the
L2-normalised features of the classifier's training images (Sun et al. 2022, "Out-of-distribution detection with
deep nearest neighbors"): frames like the training images lie among them, a black frame, a colour overlay or a
photograph lies far from all of them. The features are, for each stage of the backbone, the mean and the standard
deviation over positions of each channel, L2-normalised per stage (`trust.logits_and_features`): the pooled
features alone are what fine-tuning shaped to tell the planes apart, and a checkerboard or a black frame can land
among a plane's; how the channels of the earlier stages vary over the image (speckle, edges, flat areas) sets them
apart. docs/results.md ("Predictions that know their limits") measures both. The reference is the training split's
features (at most `MAX_REFERENCE` images and `MAX_REFERENCE_VALUES` numbers, a seeded subsample beyond), stored
with the classifier; the threshold is the `QUANTILE` of the validation frames' scores, so that that share of frames
of new patients like the training ones is known.

The score is a JAX function (one matrix product and a top-k), so the JAX classifier and its ONNX export compute
it alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

K = 10  # the neighbour whose distance is the score (fewer reference images: all of them)
QUANTILE = 0.95  # of the validation frames' scores: the threshold
MAX_REFERENCE = 4096  # training images kept as the reference (a seeded subsample beyond)
MAX_REFERENCE_VALUES = 1 << 24  # and at most 64 MiB of float32 (a ResNet-50's features: 2,184 images)
REFERENCE_FILE = "ood_reference.npy"


def normalised(features: jax.Array | np.ndarray) -> jax.Array:
    """Features [N, F] scaled to unit length (a zero row stays zero)."""
    features = jnp.asarray(features, jnp.float32)
    return features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)


def knn_distance(features: jax.Array, reference: jax.Array, k: int) -> jax.Array:
    """Distance [N] from each row of `features` [N, F], L2-normalised, to its `k`-th nearest row of `reference`
    [M, F] (already L2-normalised): sqrt(2 - 2 cos), in [0, 2]."""
    similarity = jnp.matmul(normalised(features), reference.T, precision=jax.lax.Precision.HIGHEST)
    kth = jax.lax.top_k(similarity, k)[0][..., k - 1]
    return jnp.sqrt(jnp.maximum(2.0 - 2.0 * kth, 0.0))


def reference_rows(num_images: int, seed: int, dim: int = 1) -> np.ndarray:
    """Which training images (of features of `dim` numbers) form the reference: all of them, or a seeded
    `MAX_REFERENCE` (at most `MAX_REFERENCE_VALUES` / `dim`) of them, sorted."""
    most = min(MAX_REFERENCE, MAX_REFERENCE_VALUES // max(dim, 1))
    if num_images <= most:
        return np.arange(num_images)
    return np.sort(np.random.default_rng([seed, 4093]).choice(num_images, most, replace=False))


@dataclasses.dataclass(frozen=True, eq=False)
class KnownRule:
    """A frame is known when its score (`knn_distance` to `reference` [M, F], L2-normalised) is at most
    `threshold`."""

    reference: np.ndarray
    k: int
    threshold: float
    quantile: float = QUANTILE

    @classmethod
    def fit(cls, train_features: np.ndarray, valid_scores_of, quantile: float = QUANTILE, seed: int = 0) -> KnownRule:
        """The rule with `train_features` (`reference_rows` of them) as the reference and the `quantile` of the
        validation scores as the threshold; `valid_scores_of(reference, k)` gives the validation frames' scores."""
        train_features = np.asarray(train_features)
        rows = reference_rows(len(train_features), seed, train_features.shape[1])
        reference = np.asarray(normalised(train_features[rows]))
        k = min(K, len(reference))
        scores = np.asarray(valid_scores_of(reference, k))
        return cls(reference, k, float(np.quantile(scores, quantile)), quantile)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The scores [N] of features [N, F] (`trust.logits_and_features`)."""
        return np.asarray(knn_distance(jnp.asarray(features), jnp.asarray(self.reference), self.k))

    def known(self, scores: np.ndarray) -> np.ndarray:
        """bool [N]: score <= threshold."""
        return np.asarray(scores) <= self.threshold

    def digest(self) -> str:
        """SHA-256 (16 hex digits) of the reference's bytes, k and the threshold."""
        sha = hashlib.sha256(np.ascontiguousarray(self.reference, np.float32).tobytes())
        sha.update(f"{self.k}:{self.threshold!r}".encode())
        return sha.hexdigest()[:16]

    def description(self) -> dict[str, Any]:
        """What classifier.json records of the rule (the reference is `REFERENCE_FILE` beside it)."""
        return {"score": f"distance to the k-th nearest training image (k = {self.k}), L2-normalised features: per "
                         "backbone stage, the mean and std over positions of every channel",
                "k": self.k, "threshold": self.threshold, "quantile": self.quantile, "reference": REFERENCE_FILE,
                "reference_images": len(self.reference)}  # fmt: skip

    def save(self, directory: pathlib.Path) -> None:
        """The reference into `directory`/`REFERENCE_FILE` (written to a temporary file and renamed)."""
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / (REFERENCE_FILE + ".tmp")
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(self.reference, np.float32))
        tmp.replace(directory / REFERENCE_FILE)

    @classmethod
    def load(cls, directory: pathlib.Path, description: dict[str, Any]) -> KnownRule:
        """The rule classifier.json's `description` ('ood') records, its reference read from `directory`."""
        reference = np.load(directory / description["reference"])
        return cls(reference, int(description["k"]), float(description["threshold"]), float(description["quantile"]))
