"""Training and evaluation data from built TFDS datasets (see `data_builders/`), read by record index.

Why by index: `builder.as_data_source()` gives random access to ArrayRecord files, so the global batch of step s
can be the same pure function of (seed, s) as for in-memory frames (`pipeline.BatchSampler`): an epoch-seeded
permutation of all record indices, cut into global batches. Every process reads only its own slice of those
indices, which is what `tfds.split_for_jax_process` achieves at the file level, but here 1 process and N processes
with the same global batch see identical batches (and resuming at any step needs no iterator state). The
slices are joined into global arrays by `jax.make_array_from_process_local_data` in `pipeline.device_batches`,
which also prefetches to the device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from fetalssl_jax.data.pipeline import EpochOrder
from fetalssl_jax.data.types import LabelledFrames
from fetalssl_jax.errors import DataError

log = logging.getLogger("fetalssl_jax")


def load_builder(name: str, data_dir: str | None):
    """The built dataset `name` ("fetal_us_video/synthetic", "name/config:version") in `data_dir` (None/"":
    TFDS's default directory); its builder code is not needed, only the files."""
    import tensorflow_datasets as tfds

    from fetalssl_jax.runtime.tensorflow import import_tensorflow

    # TFDS imports TensorFlow where it is installed: keep it off the accelerators JAX uses. Built records read by
    # index need no TensorFlow (an accelerator image may not have it).
    with contextlib.suppress(ImportError):
        import_tensorflow()
    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as e:  # tfds raises several types for "not found": name the key and the directory
        raise DataError(
            f"TFDS dataset {name!r} (config.data.name / config.eval.dataset) not found in data_dir "
            f"{data_dir or '~/tensorflow_datasets'!r}; build it first, e.g. `tfds build data_builders/"
            f"{name.split('/')[0]} --config {name.split('/')[1] if '/' in name else 'synthetic'} "
            f"--data_dir DIR` ({type(e).__name__}: {e})"
        ) from e
    if not builder.is_prepared():
        raise DataError(f"TFDS dataset {name!r} is not built in {builder.data_dir}")
    return builder


def data_source(builder, split: str, name: str):
    """Random access to `split` of a built dataset (`builder.as_data_source`); a missing split or a file format
    without random access is a ValueError naming the dataset."""
    if split not in builder.info.splits:
        raise DataError(f"TFDS dataset {name!r} has no split {split!r}; it has {sorted(builder.info.splits)}")
    try:
        return builder.as_data_source(split=split)
    except Exception as e:
        raise DataError(
            f"TFDS dataset {name!r} cannot be read by index ({e}); build it with --file_format array_record "
            "(the default of the builders in data_builders/)"
        ) from e


@dataclasses.dataclass
class RecordDataset:
    """A split of a built fetal_us_video dataset, read by record index.

    `fields`: the features that make the V views of an example, in order: ('frame1', 'frame2') for pairs,
    ('frame1',) or ('image',) for single frames, ('clip',) for clips (V = clip length).
    """

    source: Any
    fields: tuple[str, ...]
    name: str
    num_threads: int = 8

    def __post_init__(self):
        self._pool = ThreadPoolExecutor(self.num_threads, thread_name_prefix="records") if self.num_threads else None

    def __len__(self) -> int:
        return len(self.source)

    def _read(self, indices: list[int]) -> list[dict]:
        return self.source.__getitems__(indices)

    def read(self, indices: np.ndarray) -> np.ndarray:
        """uint8 [n, V, H, W, C] of records `indices` (any order, repeats allowed)."""
        indices = [int(i) for i in np.asarray(indices).reshape(-1)]
        if self._pool is not None and len(indices) >= 2 * self.num_threads:
            # ArrayRecord reads and PNG decoding release the GIL: a few threads per process keep up with the step
            chunks = np.array_split(np.arange(len(indices)), self.num_threads)
            parts = self._pool.map(lambda c: self._read([indices[i] for i in c]), chunks)
            records = [r for part in parts for r in part]
        else:
            records = self._read(indices)
        if self.fields == ("clip",):
            return np.stack([r["clip"] for r in records]).astype(np.uint8, copy=False)
        return np.stack([np.stack([r[f] for f in self.fields]) for r in records]).astype(np.uint8, copy=False)


def open_pretraining_records(name: str, data_dir: str | None, split: str, mode: str, clip_length: int) -> RecordDataset:
    """The records of a built fetal_us_video dataset for a method's example `mode`.

    frames: frame1 of pair records or the image of frame records. pairs: needs pair records (built with
    max_gap > 0 for temporal positives). clips: needs clip records of `clip_length` frames.
    """
    builder = load_builder(name, data_dir)
    features = set(builder.info.features.keys())
    meta = dict(builder.info.metadata or {})
    if mode == "frames":
        fields = ("frame1",) if "frame1" in features else ("image",) if "image" in features else None
    elif mode == "pairs":
        fields = ("frame1", "frame2") if "frame1" in features else None
    elif mode == "clips":
        fields = ("clip",) if "clip" in features else None
        if fields and builder.info.features["clip"].shape[0] != clip_length:
            raise DataError(
                f"TFDS dataset {name!r} has clips of {builder.info.features['clip'].shape[0]} frames but "
                f"config.data.clip_length is {clip_length}"
            )
    else:
        raise DataError(f"unknown example mode {mode!r}")
    if fields is None:
        kind = {"frames": "frames or pairs", "pairs": "pairs", "clips": "clips"}[mode]
        raise DataError(
            f"TFDS dataset {name!r} (features {sorted(features)}) has no {mode!r} examples: build a "
            f"fetal_us_video config with record={kind!r} for this method"
        )
    if mode == "pairs" and meta.get("max_gap") == 0:
        log.warning("%s was built with max_gap 0: both frames of every pair are the same frame", name)
    return RecordDataset(data_source(builder, split, name), fields, name)


class RecordSampler(EpochOrder):
    """`pipeline.BatchSampler`'s contract over records (the shared `EpochOrder`): each process reads only its
    `local_batch` slice of the global batch of `step`."""

    def __init__(self, dataset: RecordDataset, global_batch: int, seed: int, process_index: int = 0,
                 process_count: int = 1):  # fmt: skip
        super().__init__(len(dataset), global_batch, seed, process_index, process_count,
                         f"{dataset.name} has {len(dataset)} records")  # fmt: skip
        self.dataset = dataset

    def indices(self, step: int) -> np.ndarray:
        """Record indices [local_batch] of this process for `step`."""
        return self.local_slice(self.global_indices(step)[2])

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """{'frames': uint8 [local_batch, V, H, W, C]} for `step`."""
        return {"frames": self.dataset.read(self.indices(step))}


def labelled_splits_from_tfds(name: str, data_dir: str | None) -> dict[str, LabelledFrames]:
    """'train', 'valid', 'test' of a built fetal_cardiac_planes dataset (its 'validation' split is 'valid')."""
    builder = load_builder(name, data_dir)
    features = set(builder.info.features.keys())
    if not {"image", "label"} <= features:
        raise DataError(f"TFDS dataset {name!r} (config.eval.dataset) has no image/label features: {sorted(features)}")
    result = {}
    for ours, theirs in (("train", "train"), ("valid", "validation"), ("test", "test")):
        source = data_source(builder, theirs, name)
        records = source.__getitems__(list(range(len(source))))
        if not records:
            raise DataError(f"TFDS dataset {name!r}: split {theirs!r} is empty")
        result[ours] = LabelledFrames(
            images=np.stack([r["image"][..., 0] for r in records]).astype(np.uint8),
            labels=np.array([r["label"] for r in records], np.int32),
            patient_ids=np.array(
                [r["patient_id"].decode() if isinstance(r["patient_id"], bytes) else r["patient_id"] for r in records]
            ),  # fmt: skip
        )
    return result
