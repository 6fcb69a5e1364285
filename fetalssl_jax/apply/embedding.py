"""Frozen pooled features of a backbone: of numpy frames (`embed`), or of a whole input streamed block by block
(`embed_input`), saved as `embeddings.npz` + `embeddings.csv`.

The features are the evaluator's (`eval/frozen.extract_features`: eval-mode BatchNorm, `preprocess_eval`), computed
in batches of exactly `batch_size` rows: rows of consecutive videos share a batch and only the very last batch is
zero-padded, so one compiled program serves a corpus of any size and videos of any length.
"""

from __future__ import annotations

import collections
import dataclasses
import pathlib
from collections.abc import Callable, Iterable, Iterator, Sequence

import numpy as np

from fetalssl_jax.apply.files import write_csv
from fetalssl_jax.apply.inputs import NO_LABEL, FrameBlock, Input, resize_images
from fetalssl_jax.apply.loading import Backbone, PlaneClassifier
from fetalssl_jax.errors import DataError
from fetalssl_jax.eval.frozen import extract_features, with_channel
from fetalssl_jax.train.monitor import make_progress_bar


def as_frames(frames: np.ndarray | Sequence[np.ndarray], image_size: int) -> np.ndarray:
    """uint8 [N, H, W] / [N, H, W, C] as is; a sequence of images of different sizes gray and resized to
    `image_size` (`inputs.resize_images`)."""
    if isinstance(frames, np.ndarray):
        if frames.dtype != np.uint8 or frames.ndim not in (3, 4):
            raise ValueError(f"frames must be uint8 [N, H, W] or [N, H, W, C], got {frames.dtype} {frames.shape}")
        return with_channel(frames)
    if not len(frames):
        raise ValueError("no frames given")
    return resize_images(frames, image_size)


def _backbone(model: Backbone | PlaneClassifier) -> Backbone:
    return model.backbone if isinstance(model, PlaneClassifier) else model


def embed(
    model: Backbone | PlaneClassifier, frames: np.ndarray | Sequence[np.ndarray], batch_size: int = 256
) -> np.ndarray:
    """Pooled features float32 [N, F] of uint8 frames [N, H, W(, C)] (or a list of images of any sizes), exactly as
    the frozen evaluation computes them. A classifier gives its fine-tuned backbone's features."""
    backbone = _backbone(model)
    x = as_frames(frames, backbone.image_size)
    return extract_features(backbone.module, backbone.variables, x, backbone.image_size, batch_size)


def features_fn(backbone: Backbone, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
    """Features of one batch of exactly `batch_size` rows (one compiled program)."""
    return lambda x: extract_features(backbone.module, backbone.variables, x, backbone.image_size, batch_size)


def map_blocks(
    fn: Callable[[np.ndarray], np.ndarray], blocks: Iterable[FrameBlock], batch_size: int, progress: bool = True
) -> Iterator[tuple[FrameBlock, np.ndarray]]:
    """(block, fn's rows of it) for every block, in order; `fn` always sees exactly `batch_size` rows: blocks are
    cut and joined into full batches, and only the last batch of the stream is zero-padded. A tqdm bar counts
    frames (its rate is frames/s)."""
    bar = make_progress_bar(None, 0, progress, unit="frame")
    pending: collections.deque[FrameBlock] = collections.deque()
    queued: list[np.ndarray] = []  # frames not yet computed
    done: list[np.ndarray] = []  # computed rows not yet handed out
    num_queued = num_done = 0

    def run(batch: np.ndarray, n: int) -> None:
        nonlocal num_done
        done.append(np.asarray(fn(batch))[:n])
        num_done += n
        bar.update(n)

    def finished() -> Iterator[tuple[FrameBlock, np.ndarray]]:
        nonlocal num_done, done
        while pending and num_done >= len(pending[0]):
            block = pending.popleft()
            rows = np.concatenate(done) if len(done) > 1 else done[0]
            done = [rows[len(block) :]]
            num_done -= len(block)
            yield block, rows[: len(block)]

    for block in blocks:
        pending.append(block)
        queued.append(block.frames)
        num_queued += len(block)
        while num_queued >= batch_size:
            frames = np.concatenate(queued) if len(queued) > 1 else queued[0]
            run(frames[:batch_size], batch_size)
            queued, num_queued = [frames[batch_size:]], num_queued - batch_size
        yield from finished()
    if num_queued:
        frames = np.concatenate(queued)
        pad = np.zeros((batch_size - num_queued, *frames.shape[1:]), frames.dtype)
        run(np.concatenate([frames, pad]), num_queued)
    yield from finished()
    bar.close()


@dataclasses.dataclass(frozen=True)
class Embeddings:
    """One row per frame: the features, the salted id of its video / image / record, its frame index, and its
    label (NO_LABEL = -1 without one; an index into `class_names`)."""

    features: np.ndarray  # float32 [N, F]
    source_ids: np.ndarray  # str [N]
    frame_index: np.ndarray  # int32 [N]
    labels: np.ndarray  # int32 [N]
    class_names: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.features)

    def save(self, directory: str | pathlib.Path) -> pathlib.Path:
        """`embeddings.npz` (every field) and `embeddings.csv` (row, source_id, frame_index, label) in
        `directory`, each written to a temporary file and renamed; returns the .npz path."""
        directory = pathlib.Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        npz = directory / "embeddings.npz"
        with open(npz.with_name("embeddings.tmp.npz"), "wb") as f:
            np.savez(f, features=self.features, source_ids=self.source_ids.astype(str), frame_index=self.frame_index,
                     labels=self.labels, class_names=np.array(self.class_names, str))  # fmt: skip
        npz.with_name("embeddings.tmp.npz").replace(npz)
        rows = zip(self.source_ids, self.frame_index, self.labels, strict=True)
        write_csv(directory / "embeddings.csv", ["row", "source_id", "frame_index", "label"],
                  ([i, s, int(f), self._label_name(lab)] for i, (s, f, lab) in enumerate(rows)))  # fmt: skip
        return npz

    def _label_name(self, label: int) -> str:
        return "" if label == NO_LABEL else self.class_names[label] if self.class_names else str(label)

    @classmethod
    def load(cls, path: str | pathlib.Path) -> Embeddings:
        """The embeddings saved by `save` (the .npz file or its directory)."""
        path = pathlib.Path(path)
        path = path / "embeddings.npz" if path.is_dir() else path
        with np.load(path, allow_pickle=False) as f:
            return cls(f["features"], f["source_ids"], f["frame_index"], f["labels"], tuple(f["class_names"].tolist()))


def embed_input(
    model: Backbone | PlaneClassifier, data: Input, frame_skip: int = 5, batch_size: int = 256, progress: bool = True
) -> Embeddings:
    """The features of every frame of `data` (one video in memory at a time), with ids, frame indices and labels."""
    backbone = _backbone(model)
    parts = [(block.source_ids, block.frame_index, block.labels, rows) for block, rows in
             map_blocks(features_fn(backbone, batch_size), data.blocks(backbone.image_size, frame_skip, batch_size),
                        batch_size, progress)]  # fmt: skip
    if not parts:
        raise DataError(f"{data.description}: no frames to embed")
    ids, index, labels, features = (np.concatenate(p) for p in zip(*parts, strict=True))
    return Embeddings(features.astype(np.float32), ids.astype(str), index.astype(np.int32), labels.astype(np.int32),
                      data.class_names)  # fmt: skip
