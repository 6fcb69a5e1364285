"""Training from a built TFDS dataset: records equal the generated videos, the record sampler's process slices,
evaluation from a built fetal_cardiac_planes dataset, and 2 JAX processes (gloo) == 1 process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, free_port, tiny_config

from fetalssl_jax.data import sources, synthetic, tfds_source
from fetalssl_jax.data.tfds_source import RecordSampler

sys.path.insert(0, str(REPO / "data_builders"))
tfds = pytest.importorskip("tensorflow_datasets")

NAME = "fetal_us_video/tiny_pairs"  # built by the data_dir fixture (conftest.py)


def test_records_are_the_generated_videos_split_by_patient(data_dir):
    builder = tfds.builder(NAME, data_dir=str(data_dir))
    videos = synthetic.generate_videos(6, 16, 32, seed=0, frame_skip=5)
    seen = {}
    for split in ("train", "validation"):
        source = builder.as_data_source(split=split)
        for r in source.__getitems__(list(range(len(source)))):
            i1, i2 = int(r["frame_index1"]) // 5, int(r["frame_index2"]) // 5
            assert abs(i1 - i2) <= 2
            seen.setdefault(r["video_id"], (split, []))[1].append((i1, r["frame1"][..., 0], r["frame2"][..., 0], i2))
    assert len(seen) == 6 and sum(len(v[1]) for v in seen.values()) == 6 * 16
    by_frames = {}
    for split, frames in seen.values():
        # identify the generated video by its first frame; every frame of a record must be that video's frame
        first = next(f for i, f, _, _ in frames if i == 0)
        k = next(k for k, v in enumerate(videos) if np.array_equal(v.frames[0], first))
        for i1, f1, f2, i2 in frames:
            np.testing.assert_array_equal(f1, videos[k].frames[i1])
            np.testing.assert_array_equal(f2, videos[k].frames[i2])
        by_frames[k] = split
    # the split is by patient (videos 2p, 2p + 1): never a video, nor a patient, in both splits
    assert all(by_frames[2 * p] == by_frames[2 * p + 1] for p in range(3))
    assert sorted(set(by_frames.values())) == ["train", "validation"]


def test_record_sampler_slices_make_the_global_batch(data_dir):
    config = tiny_config(**{"data.source": "tfds", "data.name": NAME, "data.data_dir": str(data_dir)})
    records = sources.pretraining_frames(config, "pairs")
    whole = RecordSampler(records, 8, seed=1)
    halves = [RecordSampler(records, 8, seed=1, process_index=i, process_count=2) for i in range(2)]
    for step in (0, 3, whole.steps_per_epoch + 1):
        joined = np.concatenate([h.batch(step)["frames"] for h in halves])
        np.testing.assert_array_equal(joined, whole.batch(step)["frames"])
        assert joined.shape == (8, 2, 32, 32, 1)
    epoch = np.concatenate([whole.indices(s) for s in range(whole.steps_per_epoch)])
    assert len(set(epoch.tolist())) == len(epoch)  # an epoch reads every record at most once
    with pytest.raises(ValueError, match="has no 'clips' examples.*record='clips'"):
        sources.pretraining_frames(config, "clips")


def test_records_are_read_where_tensorflow_cannot_be_imported(data_dir, monkeypatch):
    # An accelerator image may have TFDS and array_record but no TensorFlow (TFDS reads ArrayRecord files by index
    # without it); only the loader's "keep TensorFlow off the GPUs" step imports it, and must not need it.
    expected = tfds.builder(NAME, data_dir=str(data_dir)).as_data_source(split="train").__getitems__([0, 3])
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # any `import tensorflow` now raises ImportError
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401
    records = tfds_source.open_pretraining_records(NAME, str(data_dir), "train", "pairs", clip_length=4)
    got = records.read(np.array([0, 3]))
    np.testing.assert_array_equal(got, np.stack([np.stack([r["frame1"], r["frame2"]]) for r in expected]))


def test_evaluation_reads_the_built_planes(data_dir):
    config = tiny_config(**{"eval.dataset": "fetal_cardiac_planes/tiny", "eval.data_dir": str(data_dir)})
    got = sources.labelled_splits(config)
    expected = synthetic.generate_labelled_frames(10, 10, 32, seed=0)
    for split in ("train", "valid", "test"):
        # records are stored shuffled: compare as multisets of (image bytes, label)
        a = sorted((im.tobytes(), int(lab)) for im, lab in zip(got[split].images, got[split].labels, strict=True))
        b = sorted((im.tobytes(), int(lab)) for im, lab in zip(expected[split].images, expected[split].labels,
                                                                  strict=True))  # fmt: skip
        assert a == b
    patients = [set(got[s].patient_ids.tolist()) for s in ("train", "valid", "test")]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])


def test_classifier_trains_on_the_built_planes(data_dir, tmp_path):
    from fetalssl_jax.config_lib import load_config
    from fetalssl_jax.downstream.classification import run_classification

    arg = f"tiny,num_epochs=1,eval.dataset=fetal_cardiac_planes/tiny,eval.data_dir={data_dir}"
    config = load_config(f"{REPO / 'configs' / 'classify.py'}:{arg}")
    results = run_classification(config, tmp_path)
    assert results["test"]["class_names"] == list(synthetic.PLANES)  # the dataset's label names
    assert results["test"]["num_images"] == len(sources.labelled_splits(config)["test"].labels)


def test_two_processes_train_like_one(data_dir, tmp_path):
    script = str(REPO / "tests" / "multiprocess_check.py")
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_backend_optimization_level=0")
    port = free_port()
    common = [sys.executable, script, str(data_dir), NAME, "3"]
    run = dict(env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    procs = [subprocess.Popen(common + [str(tmp_path / f"p{i}.json"), str(i), "2", str(port)], **run) for i in range(2)]
    single = subprocess.Popen(common + [str(tmp_path / "one.json")], env=env, cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)  # fmt: skip
    outputs = []
    try:
        for p in [*procs, single]:
            outputs.append(p.communicate(timeout=420)[0])  # a hung collective fails the test, not CI
    finally:
        for p in [*procs, single]:
            if p.poll() is None:
                p.kill()
    for p, out, result in zip([*procs, single], outputs, ["p0.json", "p1.json", "one.json"], strict=True):
        # A process that wrote its results and then died in gloo's teardown is not a training failure.
        assert p.returncode == 0 or (tmp_path / result).is_file(), out[-3000:]
    two = [json.loads((tmp_path / f"p{i}.json").read_text()) for i in range(2)]
    one = json.loads((tmp_path / "one.json").read_text())
    assert [r["process_count"] for r in two] == [2, 2] and two[0]["device_count"] == 2 and one["process_count"] == 1
    assert two[0]["local_batch"] == 8 and one["local_batch"] == 16
    for step in range(3):  # each process read only its half of the global batch of the 1-process run
        assert two[0]["indices"][step] + two[1]["indices"][step] == one["indices"][step]
    np.testing.assert_allclose(two[0]["losses"], one["losses"], rtol=1e-5)
    np.testing.assert_allclose(two[1]["losses"], one["losses"], rtol=1e-5)
