"""Tests of the embedded synthetic fetal-ultrasound data (fetalssl_jax.data.synthetic)."""

from __future__ import annotations

import numpy as np
import pytest

from fetalssl_jax.data import synthetic as syn
from fetalssl_jax.data.types import LabelledFrames, Video


def _fan_bounds(size: int) -> np.ndarray:
    """Largest possible fan, from the documented geometry: apex at the top centre, half angle <= 40 degrees,
    radius <= 1 image side (pixel centres at ((col + 0.5) / S - 0.5, (row + 0.5) / S))."""
    c = (np.arange(size) + 0.5) / size
    x = c[None, :] - 0.5
    y = c[:, None]
    r = np.hypot(x, y)
    theta = np.degrees(np.arctan2(x, y))
    return (r <= 1.0) & (np.abs(theta) <= 40.0)


@pytest.fixture(scope="module")
def videos() -> list[Video]:
    return syn.generate_videos(num_videos=8, num_frames=12, image_size=48, seed=3, frame_skip=5)


@pytest.fixture(scope="module")
def labelled() -> dict[str, LabelledFrames]:
    return syn.generate_labelled_frames(
        num_patients=40, frames_per_patient=10, image_size=32, seed=5, split_fractions=(0.5, 0.1, 0.4)
    )


def test_planes_names_and_order():
    assert syn.PLANES == ("3VV/3VT", "4CH", "LVOT", "RVOT", "non-heart")


def test_render_video_shapes_and_dtypes():
    frames, planes = syn.render_video(np.random.default_rng(0), num_frames=7, image_size=40, frame_skip=3)
    assert frames.shape == (7, 40, 40) and frames.dtype == np.uint8
    assert planes.shape == (7,) and planes.dtype == np.int32
    assert planes.min() >= 0 and planes.max() < len(syn.PLANES)
    assert frames.max() > 100  # not a blank image


@pytest.mark.parametrize("size", [16, 256])
def test_render_video_small_and_large_sizes(size):
    frames, planes = syn.render_video(np.random.default_rng(1), num_frames=2, image_size=size)
    assert frames.shape == (2, size, size) and planes.shape == (2,)
    assert frames.any()


def test_generate_videos_structure(videos):
    assert len(videos) == 8
    for i, v in enumerate(videos):
        assert isinstance(v, Video)
        assert v.frames.shape == (12, 48, 48) and v.frames.dtype == np.uint8
        assert v.planes.shape == (12,) and v.planes.dtype == np.int32
        assert v.planes.min() >= 0 and v.planes.max() < len(syn.PLANES)
        assert v.patient_id == f"P{i // 2:04d}"
    assert len({v.video_id for v in videos}) == len(videos)
    # Several videos per patient.
    assert len({v.patient_id for v in videos}) == 4


def test_determinism_same_seed_identical_different_seed_differs():
    a = syn.generate_videos(2, 5, 32, seed=11)
    b = syn.generate_videos(2, 5, 32, seed=11)
    c = syn.generate_videos(2, 5, 32, seed=12)
    for va, vb in zip(a, b, strict=True):
        assert va.frames.tobytes() == vb.frames.tobytes()
        assert np.array_equal(va.planes, vb.planes)
        assert (va.patient_id, va.video_id) == (vb.patient_id, vb.video_id)
    assert any(va.frames.tobytes() != vc.frames.tobytes() for va, vc in zip(a, c, strict=True))
    r1 = syn.render_video(np.random.default_rng(4), 3, 24)
    r2 = syn.render_video(np.random.default_rng(4), 3, 24)
    assert r1[0].tobytes() == r2[0].tobytes() and np.array_equal(r1[1], r2[1])


def test_labelled_determinism():
    a = syn.generate_labelled_frames(5, 5, 16, seed=2)
    b = syn.generate_labelled_frames(5, 5, 16, seed=2)
    for split in ("train", "valid", "test"):
        assert a[split].images.tobytes() == b[split].images.tobytes()
        assert np.array_equal(a[split].labels, b[split].labels)
        assert list(a[split].patient_ids) == list(b[split].patient_ids)


def test_generate_videos_prefix_property():
    short = syn.generate_videos(3, 6, 32, seed=7)
    long = syn.generate_videos(6, 6, 32, seed=7)
    for vs, vl in zip(short, long[:3], strict=True):
        assert vs.frames.tobytes() == vl.frames.tobytes()
        assert np.array_equal(vs.planes, vl.planes)
        assert (vs.patient_id, vs.video_id) == (vl.patient_id, vl.video_id)


@pytest.mark.parametrize("size", [33, 64])
def test_outside_fan_is_zero(size):
    vids = syn.generate_videos(4, 6, size, seed=9)
    outside = ~_fan_bounds(size)
    inner_fan = _fan_bounds(size)  # loose check that the fan itself is filled
    for v in vids:
        assert not v.frames[:, outside].any()
        assert (v.frames[:, 0, 0] == 0).all() and (v.frames[:, 0, -1] == 0).all()
        assert (v.frames[:, -1, 0] == 0).all() and (v.frames[:, -1, -1] == 0).all()
        assert (v.frames[:, inner_fan] > 0).mean() > 0.5
    assert np.array_equal(syn.fan_bounds_mask(size), _fan_bounds(size))


def test_labelled_splits_by_patient(labelled):
    assert set(labelled) == {"train", "valid", "test"}
    patients = {}
    for name, split in labelled.items():
        assert isinstance(split, LabelledFrames)
        n = len(split.labels)
        assert split.images.shape == (n, 32, 32) and split.images.dtype == np.uint8
        assert split.labels.dtype == np.int32 and split.patient_ids.shape == (n,)
        assert split.labels.min() >= 0 and split.labels.max() < len(syn.PLANES)
        counts = np.bincount(split.labels, minlength=len(syn.PLANES))
        assert (counts > 0).all(), (name, counts)
        assert counts.min() >= 0.7 * counts.max(), (name, counts)
        patients[name] = set(split.patient_ids.tolist())
        assert all(p.startswith("L") for p in patients[name])
        # Every patient contributes every class.
        for p in patients[name]:
            assert set(split.labels[split.patient_ids == p].tolist()) == set(range(len(syn.PLANES)))
    assert not patients["train"] & patients["valid"]
    assert not patients["train"] & patients["test"]
    assert not patients["valid"] & patients["test"]
    assert len(patients["train"] | patients["valid"] | patients["test"]) == 40
    assert sum(len(s.labels) for s in labelled.values()) == 400


def test_labelled_patients_disjoint_from_video_patients(labelled, videos):
    video_patients = {v.patient_id for v in videos}
    for split in labelled.values():
        assert not video_patients & set(split.patient_ids.tolist())


def test_sweep_contains_several_planes_in_order():
    seq = [4, 1, 2, 3]
    _, planes = syn.render_video(np.random.default_rng(3), num_frames=80, image_size=16, plane_sequence=seq)
    assert set(planes.tolist()) == set(seq)
    # Segments are contiguous and in the given order.
    changes = [int(p) for i, p in enumerate(planes) if i == 0 or p != planes[i - 1]]
    assert changes == seq


def test_constant_plane_video_and_random_sweeps():
    for k in range(len(syn.PLANES)):
        _, planes = syn.render_video(np.random.default_rng(k), 10, 16, plane_sequence=[k])
        assert (planes == k).all()
    vids = syn.generate_videos(20, 30, 16, seed=1)
    n_planes = [len(set(v.planes.tolist())) for v in vids]
    assert max(n_planes) > 1  # some videos sweep
    assert min(n_planes) == 1  # some stay on one plane


def test_mean_brightness_does_not_separate_classes(labelled):
    from sklearn.linear_model import LogisticRegression

    def feat(split):
        return split.images.reshape(len(split.images), -1).mean(axis=1, keepdims=True) / 255.0

    train, test = labelled["train"], labelled["test"]
    xtr, xte = feat(train), feat(test)
    means = np.array([xtr[train.labels == c].mean() for c in range(len(syn.PLANES))])
    ncm_acc = (np.abs(xte - means[None]).argmin(axis=1) == test.labels).mean()
    clf = LogisticRegression(max_iter=1000).fit(xtr, train.labels)
    lr_acc = (clf.predict(xte) == test.labels).mean()
    assert ncm_acc < 0.45 and lr_acc < 0.45, (ncm_acc, lr_acc)


def test_heartbeat_motion_and_temporal_similarity():
    a, pa = syn.render_video(np.random.default_rng(21), 10, 48, frame_skip=1, plane_sequence=[1])
    b, _ = syn.render_video(np.random.default_rng(22), 10, 48, frame_skip=1, plane_sequence=[1])
    assert (pa == 1).all()
    a = a.astype(np.float32)
    b = b.astype(np.float32)
    consecutive = np.abs(a[1:] - a[:-1]).mean(axis=(1, 2))
    across = np.abs(a - b).mean(axis=(1, 2))
    assert (consecutive > 0).all()
    assert consecutive.max() < across.min(), (consecutive, across)
    corr_next = np.corrcoef(a[0].ravel(), a[1].ravel())[0, 1]
    corr_other = np.corrcoef(a[0].ravel(), b[0].ravel())[0, 1]
    assert corr_next > corr_other


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: syn.render_video(np.random.default_rng(0), 3, 8), "image_size"),
        (lambda: syn.render_video(np.random.default_rng(0), 0, 32), "num_frames"),
        (lambda: syn.render_video(np.random.default_rng(0), 3, 32, frame_skip=0), "frame_skip"),
        (lambda: syn.render_video(np.random.default_rng(0), 3, 32, plane_sequence=[5]), "plane_sequence"),
        (lambda: syn.render_video(np.random.default_rng(0), 3, 32, plane_sequence=[]), "plane_sequence"),
        (lambda: syn.generate_videos(0, 3, 32, seed=0), "num_videos"),
        (lambda: syn.generate_videos(2, 0, 32, seed=0), "num_frames"),
        (lambda: syn.generate_videos(2, 3, 15, seed=0), "image_size"),
        (lambda: syn.generate_videos(2, 3, 32, seed=0, frame_skip=0), "frame_skip"),
        (lambda: syn.generate_videos(2, 3, 32, seed=0, videos_per_patient=0), "videos_per_patient"),
        (lambda: syn.generate_labelled_frames(2, 10, 32, seed=0), "num_patients"),
        (lambda: syn.generate_labelled_frames(4, 10, 32, seed=0, split_fractions=(0.9, 0.05, 0.05)), "num_patients"),
        (lambda: syn.generate_labelled_frames(10, 10, 32, seed=0, split_fractions=(0.5, 0.5, 0.5)), "split_fractions"),
        (lambda: syn.generate_labelled_frames(10, 10, 32, seed=0, split_fractions=(1.0, 0.0, 0.0)), "split_fractions"),
        (lambda: syn.generate_labelled_frames(10, 3, 32, seed=0), "frames_per_patient"),
        (lambda: syn.generate_labelled_frames(10, 10, 10, seed=0), "image_size"),
    ],
)
def test_bad_arguments_raise(call, name):
    with pytest.raises(ValueError, match=name):
        call()
