"""The host-side batch sampler: deterministic in (seed, step), epoch coverage, process slices, temporal pairs."""

import numpy as np
import pytest

from fetalssl_jax.data.pipeline import BatchSampler, FrameDataset
from fetalssl_jax.data.types import Video


def make_dataset(lengths=(7, 5, 9), size=4):
    videos = []
    counter = 0
    for v, n in enumerate(lengths):
        # every frame carries its global index in pixel (0, 0) and its video in pixel (0, 1)
        frames = np.zeros((n, size, size), np.uint8)
        frames[:, 0, 0] = np.arange(counter, counter + n)
        frames[:, 0, 1] = v
        counter += n
        videos.append(Video(frames, np.zeros(n, np.int32), f"P{v}", f"V{v}"))
    return FrameDataset.from_videos(videos)


def test_from_videos_layout():
    ds = make_dataset()
    assert ds.frames.shape == (21, 4, 4, 1) and ds.frames.dtype == np.uint8
    np.testing.assert_array_equal(ds.frames[:, 0, 0, 0], np.arange(21))
    np.testing.assert_array_equal(ds.video_start, [0, 7, 12])
    np.testing.assert_array_equal(ds.video_index, [0] * 7 + [1] * 5 + [2] * 9)


def test_same_step_same_batch_and_epoch_covers_each_frame_once():
    ds = make_dataset()
    a, b = BatchSampler(ds, 4, seed=3), BatchSampler(ds, 4, seed=3)
    assert a.steps_per_epoch == 5
    for step in [0, 3, 7, 12]:
        np.testing.assert_array_equal(a.batch(step)["frames"], b.batch(step)["frames"])
    seen = np.concatenate([a.indices(s)[:, 0] for s in range(a.steps_per_epoch)])
    assert len(set(seen.tolist())) == 20  # one epoch: 5 batches of 4 distinct frames (one dropped)
    assert not np.array_equal(a.indices(0), BatchSampler(ds, 4, seed=4).indices(0))
    assert not np.array_equal(a.indices(0), a.indices(5))  # next epoch reshuffles


def test_process_slices_make_the_global_batch():
    ds = make_dataset()
    whole = BatchSampler(ds, 6, seed=0).indices(2)
    parts = [BatchSampler(ds, 6, seed=0, process_index=i, process_count=3).indices(2) for i in range(3)]
    np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_temporal_pairs_stay_in_their_video_within_max_gap():
    ds = make_dataset()
    sampler = BatchSampler(ds, 8, seed=1, mode="pairs", max_gap=2)
    for step in range(10):
        frames = sampler.batch(step)["frames"]
        assert frames.shape == (8, 2, 4, 4, 1)
        first, second = frames[:, 0, 0, 0, 0].astype(int), frames[:, 1, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(frames[:, 0, 0, 1, 0], frames[:, 1, 0, 1, 0])  # same video
        assert np.all(np.abs(first - second) <= 2)


def test_errors_name_the_problem():
    ds = make_dataset()
    with pytest.raises(ValueError, match="fewer than one batch of 64"):
        BatchSampler(ds, 64, seed=0)
    with pytest.raises(ValueError, match="not divisible by the 3 processes"):
        BatchSampler(ds, 8, seed=0, process_count=3)
    odd = Video(np.zeros((3, 5, 5), np.uint8), np.zeros(3, np.int32), "P", "V")
    with pytest.raises(ValueError, match="differing frame sizes"):
        FrameDataset.from_videos([odd, Video(np.zeros((3, 4, 4), np.uint8), np.zeros(3, np.int32), "P", "W")])


def test_clips_are_ordered_strided_frames_of_one_video():
    ds = make_dataset()
    sampler = BatchSampler(ds, 8, seed=2, mode="clips", clip_length=3, clip_stride=2)
    for step in range(8):
        frames = sampler.batch(step)["frames"]
        assert frames.shape == (8, 3, 4, 4, 1)
        index = frames[:, :, 0, 0, 0].astype(int)
        np.testing.assert_array_equal(np.diff(index, axis=1), 2)  # consecutive kept frames 2 apart, in order
        assert np.all(frames[:, :, 0, 1, 0] == frames[:, :1, 0, 1, 0])  # one video per clip
    with pytest.raises(ValueError, match="shorter than one clip of 4 frames with stride 2"):
        BatchSampler(ds, 8, seed=0, mode="clips", clip_length=4, clip_stride=2)  # video 1 has 5 frames < 7
