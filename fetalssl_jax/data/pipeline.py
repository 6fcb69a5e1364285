"""Input pipeline from frames in host memory to sharded uint8 device batches.

The batch for step s is a pure function of (seed, s): resuming at any step reproduces the same data order, so
nothing about the iterator needs to be checkpointed. Every process builds only its own slice of the global
batch; `jax.make_array_from_process_local_data` joins the slices into one global array sharded over the mesh.
Floats are made on the device (augmentations run inside the compiled step).
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator, Sequence

import jax
import numpy as np

from fetalssl_jax.data.types import Video
from fetalssl_jax.errors import DataError


@dataclasses.dataclass(frozen=True)
class FrameDataset:
    """All kept frames of a set of videos, with where each frame came from."""

    frames: np.ndarray  # uint8 [N, H, W, C]
    video_index: np.ndarray  # int32 [N]
    video_start: np.ndarray  # int64 [num_videos]: index in `frames` of each video's first frame
    video_length: np.ndarray  # int64 [num_videos]

    def __len__(self) -> int:
        return len(self.frames)

    @classmethod
    def from_videos(cls, videos: Sequence[Video]) -> FrameDataset:
        """Concatenates videos of uint8 frames [T, H, W] or [T, H, W, C]."""
        if not videos:
            raise DataError("no videos to train on")
        shapes = {v.frames.shape[1:3] for v in videos}
        if len(shapes) != 1:
            raise DataError(f"videos have differing frame sizes {sorted(shapes)}; resize them to one size first")
        frames = [v.frames if v.frames.ndim == 4 else v.frames[..., None] for v in videos]
        lengths = np.array([len(f) for f in frames], np.int64)
        starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        index = np.repeat(np.arange(len(frames), dtype=np.int32), lengths)
        return cls(np.concatenate(frames).astype(np.uint8), index, starts, lengths)


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> np.ndarray:
    """The shuffle of `epoch`: a permutation of the example indices seeded by (seed, epoch), for every sampler of
    pretraining and classification."""
    return np.random.default_rng([seed, epoch]).permutation(num_examples)


class EpochOrder:
    """The order shared by the samplers: each epoch a permutation seeded by (seed, epoch); step s of the epoch takes
    the s-th run of `global_batch` examples, and each process its `local_batch` slice of it. So the batch of a step
    is a pure function of (seed, step), whatever the number of processes."""

    def __init__(self, num_examples: int, global_batch: int, seed: int, process_index: int, process_count: int,
                 too_small: str):  # fmt: skip
        if global_batch % process_count:
            raise ValueError(f"batch_size {global_batch} is not divisible by the {process_count} processes")
        if num_examples < global_batch:
            raise DataError(f"{too_small}, fewer than one batch of {global_batch}")
        self.num_examples = num_examples
        self.global_batch = global_batch
        self.local_batch = global_batch // process_count
        self.seed = seed
        self.process_index = process_index
        self.steps_per_epoch = num_examples // global_batch
        self._order_epoch, self._order = None, None

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if self._order_epoch != epoch:
            self._order = epoch_permutation(self.num_examples, self.seed, epoch)
            self._order_epoch = epoch
        return self._order

    def global_indices(self, step: int) -> tuple[int, int, np.ndarray]:
        """(epoch, position in the epoch, example indices [global_batch]) of `step`, for every process alike."""
        epoch, position = divmod(step, self.steps_per_epoch)
        lo = position * self.global_batch
        return epoch, position, self._epoch_order(epoch)[lo : lo + self.global_batch]

    def local_slice(self, batch: np.ndarray) -> np.ndarray:
        """This process's rows of a global batch."""
        lo = self.process_index * self.local_batch
        return batch[lo : lo + self.local_batch]


class BatchSampler(EpochOrder):
    """Deterministic epoch-shuffled batches for one process: single frames, temporal pairs or clips.

    `mode` "frames": V = 1. "pairs": V = 2, the second frame of the same video at most `max_gap` kept frames
    away. "clips": V = `clip_length` consecutive frames `clip_stride` apart, all from one video, in order.
    """

    def __init__(
        self,
        dataset: FrameDataset,
        global_batch: int,
        seed: int,
        mode: str = "frames",
        max_gap: int = 0,
        clip_length: int = 4,
        clip_stride: int = 1,
        process_index: int = 0,
        process_count: int = 1,
    ):
        if mode not in ("frames", "pairs", "clips"):
            raise ValueError(f"unknown example mode {mode!r}; choose 'frames', 'pairs' or 'clips'")
        super().__init__(len(dataset), global_batch, seed, process_index, process_count,
                         f"the dataset has {len(dataset)} frames")  # fmt: skip
        if mode == "clips":
            span = (clip_length - 1) * clip_stride + 1
            short = np.flatnonzero(dataset.video_length < span)
            if len(short):
                raise DataError(
                    f"{len(short)} videos (the first: index {short[0]}, {dataset.video_length[short[0]]} frames) are "
                    f"shorter than one clip of {clip_length} frames with stride {clip_stride} ({span} frames)"
                )
        self.dataset = dataset
        self.mode = mode
        self.max_gap = max_gap
        self.clip_length = clip_length
        self.clip_stride = clip_stride

    def indices(self, step: int) -> np.ndarray:
        """Frame indices [local_batch, V] of this process for `step`."""
        epoch, position, first = self.global_indices(step)
        video = self.dataset.video_index[first]
        start, length = self.dataset.video_start[video], self.dataset.video_length[video]
        if self.mode == "pairs":
            rng = np.random.default_rng([self.seed, epoch, position, 1])
            offset = rng.integers(-self.max_gap, self.max_gap + 1, size=first.shape)
            both = np.stack([first, np.clip(first + offset, start, start + length - 1)], axis=1)
        elif self.mode == "clips":
            # every frame can start a clip; starts too close to the video's end are moved back to fit
            span = (self.clip_length - 1) * self.clip_stride
            begin = np.minimum(first, start + length - 1 - span)
            both = begin[:, None] + self.clip_stride * np.arange(self.clip_length)[None, :]
        else:
            both = first[:, None]
        return self.local_slice(both)

    def batch(self, step: int) -> dict[str, np.ndarray]:
        """{'frames': uint8 [local_batch, V, H, W, C]} for `step`."""
        return {"frames": self.dataset.frames[self.indices(step)]}


def device_batches(
    sampler: BatchSampler, start_step: int, sharding: jax.sharding.Sharding, prefetch: int = 2
) -> Iterator[dict[str, jax.Array]]:
    """Global device arrays for steps start_step, start_step + 1, ...; a thread keeps `prefetch` batches ready."""

    def to_device(step: int) -> dict[str, jax.Array]:
        return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in sampler.batch(step).items()}

    if prefetch <= 0:
        step = start_step
        while True:
            yield to_device(step)
            step += 1

    buffer: queue.Queue = queue.Queue(maxsize=prefetch)
    stop = threading.Event()

    def producer() -> None:
        step = start_step
        try:
            while not stop.is_set():
                item = to_device(step)
                while not stop.is_set():
                    try:
                        buffer.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                step += 1
        except BaseException as e:  # surfaced in the consumer, never swallowed
            buffer.put(e)

    thread = threading.Thread(target=producer, daemon=True, name="device-prefetch")
    thread.start()
    try:
        while True:
            item = buffer.get()
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
