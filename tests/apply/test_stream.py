"""predict with stream=True on a generated mp4 with black and frozen frames inserted: the bad frames are skipped and
counted; every other kept frame gets the probabilities offline predict gives it (before smoothing), through JAX
and through the ONNX export; the smoothed probabilities, plane changes and best frames are what a numpy
re-computation of the causal moving average from those probabilities gives; the best-frame PNGs are the recorded
frames. Frames of another size and a decoding error in the middle do not stop a stream; bad settings do, before
anything is written."""

import csv
import json

import numpy as np
import pytest
from apply_fixtures import SIZE, random_backbone, save_classifier_run, tool_config
from PIL import Image
from sklearn.linear_model import LogisticRegression
from us_fixtures import moving_frames, write_video

from fetalssl_jax.apply.loading import load_classifier
from fetalssl_jax.apply.stream import stream_planes, timed_frames
from fetalssl_jax.apply.tasks import run_predict
from fetalssl_jax.config_lib import set_by_path
from fetalssl_jax.data.build import readers
from fetalssl_jax.downstream.export import run as run_export
from fetalssl_jax.eval.frozen import extract_features
from fetalssl_jax.validation import ConfigError

CLASSES = ("a", "b", "c", "d")
BLACK, FROZEN = (6, 7), (15, 16)  # frames 15 and 16 repeat frame 14
THRESHOLD, WINDOW = 0.3, 3


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """An mp4 of 40 moving frames with speckle (every frame differs, as live ultrasound) and black and frozen ones,
    a tiny classifier run and its ONNX export, and the offline predictions (frame_skip 1, no smoothing)."""
    root = tmp_path_factory.mktemp("stream")
    frames = moving_frames(40, 48, 64, seed=4) + np.random.default_rng(0).normal(0, 12, (40, 48, 64))
    frames = np.clip(frames, 0, 255).astype(np.uint8)
    frames[list(BLACK)] = 0
    frames[list(FROZEN)] = frames[FROZEN[0] - 1]
    write_video(root / "scans" / "scan.mp4", frames)
    backbone = random_backbone(0)
    # a head that tells the quarters of the video apart (the blob's position), so that the plane changes
    prepared, _ = readers.prepare_video(frames, "scan", SIZE, 1)
    features = extract_features(backbone.module, backbone.variables, prepared, SIZE)
    fit = LogisticRegression(fit_intercept=False, max_iter=5000).fit(features, np.arange(40) // 10)
    run = save_classifier_run(root / "run", backbone.variables, fit.coef_.T.astype(np.float32), CLASSES)
    run_export(tool_config("export.py", classifier=str(run), format="onnx"), root / "export")
    run_predict(tool_config("predict.py:tiny", classifier=str(run), input=str(root / "scans" / "scan.mp4"),
                        frame_skip=1), root / "offline")  # fmt: skip
    offline = {int(r["frame_index"]): [float(r[f"p_{c}"]) for c in CLASSES] for r in _csv(root / "offline/frames.csv")}
    return root, run, root / "export" / "classifier.onnx", offline


def _csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def _stream(root, classifier, out, **overrides):
    config = tool_config("predict.py:tiny", classifier=str(classifier), input=str(root / "scans" / "scan.mp4"),
                     stream=True, frame_skip=1, smooth_window=WINDOW, threshold=THRESHOLD)  # fmt: skip
    for key, value in overrides.items():
        set_by_path(config, key, value)
    line = run_predict(config, out)
    return line, json.loads((out / "summary.json").read_text()), _csv(out / "frames.csv"), _csv(out / "stream.csv")


def _causal_events(index, probabilities, window, threshold):
    """Smoothed probabilities (mean of the last `window` rows) and the events, by numpy and plain loops."""
    smoothed = np.stack([probabilities[max(0, i - window + 1) : i + 1].mean(0) for i in range(len(probabilities))])
    events, current, best = [], None, [-1.0] * smoothed.shape[1]
    for frame, s in zip(index, smoothed, strict=True):
        top = int(np.argmax(s))
        plane = CLASSES[top] if s[top] >= threshold else "none"
        if plane != current:
            events.append(("plane", frame, plane, s[top]))
            current = plane
        for c in range(len(CLASSES)):
            if s[c] >= threshold and s[c] > best[c]:
                best[c] = s[c]
                events.append(("best", frame, CLASSES[c], s[c]))
    return smoothed, events


def test_a_stream_skips_bad_frames_and_reports_what_offline_predict_and_numpy_give(scan, tmp_path):
    root, run, _, offline = scan
    line, summary, rows, events = _stream(root, run, tmp_path / "live")
    assert summary["frames_skipped"] == {"black": len(BLACK), "frozen": len(FROZEN), "wrong_size": 0}
    assert (summary["frames_decoded"], summary["frames_kept"], summary["frames"]) == (40, 40, 36)
    assert line.startswith("36 of 40 frames classified (2 black, 2 frozen, 0 wrong_size skipped; end of the video)")
    index = [int(r["frame_index"]) for r in rows]
    assert index == [i for i in range(40) if i not in BLACK + FROZEN]
    probabilities = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    np.testing.assert_allclose(probabilities, [offline[i] for i in index], atol=1e-5)  # offline, before smoothing
    smoothed, expected = _causal_events(index, probabilities, WINDOW, THRESHOLD)
    np.testing.assert_allclose([[float(r[f"smoothed_{c}"]) for c in CLASSES] for r in rows], smoothed, atol=1e-5)
    assert [(e["event"], int(e["frame_index"]), e["plane"]) for e in events] == [e[:3] for e in expected]
    np.testing.assert_allclose([float(e["probability"]) for e in events], [e[3] for e in expected], atol=1e-5)
    assert sum(e[0] == "plane" for e in expected) >= 3  # the plane changes during the video
    assert [float(e["time_s"]) for e in events[:1]] == [0.0] and float(events[-1]["time_s"]) > 0.1
    gray = readers.to_grayscale(readers.read_video(readers.VideoRef("scan.mp4", root=str(root / "scans"))))
    for plane, (found,) in summary["planes_found"].items():
        last_best = [e for e in expected if e[0] == "best" and e[2] == plane][-1]
        assert found["frame"] == last_best[1] and found["png"] == f"best_{plane}.png"
        png = Image.open(tmp_path / "live" / found["png"])
        np.testing.assert_array_equal(np.asarray(png), gray[found["frame"]])  # the recorded frame, at its size
        assert png.text["frame"] == str(found["frame"])
    latency = {s: np.array([float(r[f"{s}_ms"]) for r in rows]) for s in ("decode", "preprocess", "model", "total")}
    assert set(summary["latency_ms"]) == set(latency) and latency["model"].min() > 0
    np.testing.assert_array_less(latency["decode"] + latency["preprocess"] + latency["model"], latency["total"] + 2e-3)
    for stage, ms in latency.items():  # the summary's mean and p95 are those of the frames' latencies
        assert summary["latency_ms"][stage] == pytest.approx({"mean": ms.mean(), "p95": np.percentile(ms, 95)},
                                                             abs=2e-3)  # fmt: skip
    assert (tmp_path / "live" / "timeline.png").stat().st_size > 5000


def test_an_onnx_stream_with_a_frame_skip_gives_the_offline_probabilities(scan, tmp_path):
    root, _, onnx_file, offline = scan
    _, summary, rows, _ = _stream(root, onnx_file, tmp_path / "live", frame_skip=2)
    # kept: 0, 2, 4, ...; black 6 (7 is not kept); 16 repeats 14, the previous classified frame (15 is not kept)
    assert summary["frames_skipped"] == {"black": 1, "frozen": 1, "wrong_size": 0}
    index = [int(r["frame_index"]) for r in rows]
    assert index == [i for i in range(0, 40, 2) if i not in (6, 16)]
    probabilities = [[float(r[f"p_{c}"]) for c in CLASSES] for r in rows]
    np.testing.assert_allclose(probabilities, [offline[i] for i in index], atol=1e-4)  # onnxruntime against JAX


def test_frames_of_another_size_and_a_decoding_error_do_not_stop_a_stream(scan, tmp_path):
    root, _, onnx_file, _ = scan
    frames = moving_frames(8, 48, 64, seed=1)

    def decoded():
        yield np.zeros((48, 64), np.uint8), 0.0  # black, and the stream's size
        for i, f in enumerate(frames):
            yield (f[:40] if i == 3 else f), 0.04 * (i + 1)
            if i == 4:
                yield f, 0.5  # frozen
        raise readers.DataError("scan.mp4: unreadable or truncated video (EOFError: end of data)")

    config = tool_config("predict.py:tiny", stream=True, frame_skip=1, smooth_window=2)
    (tmp_path / "out").mkdir()
    summary = stream_planes(load_classifier(onnx_file), timed_frames(decoded()), tmp_path / "out", config, "id")
    assert summary["frames_skipped"] == {"black": 1, "frozen": 1, "wrong_size": 1}
    assert summary["frames"] == 7 and summary["frames_decoded"] == 10
    assert summary["stopped"] == "decoding error: scan.mp4: unreadable or truncated video (EOFError: end of data)"
    assert [r["time_s"] for r in _csv(tmp_path / "out" / "frames.csv")][:2] == ["0.040", "0.080"]


def test_bad_settings_stop_a_stream_before_anything_is_written(scan, tmp_path):
    root, run, onnx_file, _ = scan
    cases = [({"fit": "crop_pad"}, r"config.fit = 'crop_pad': needs the whole video's content box"),
             ({"input": "device:zero"}, r"config.input = 'device:zero': a capture device is device:<number>"),
             ({"input": str(root / "x.npy")}, r"x.npy': a stream reads one video file that PyAV decodes")]  # fmt: skip
    for overrides, message in cases:
        with pytest.raises(ConfigError, match=message):
            _stream(root, onnx_file, tmp_path / "out", **overrides)
        assert not (tmp_path / "out").exists()
    with pytest.raises(readers.DataError, match=r"device:987 \(/dev/video987\): unreadable"):  # no such camera
        _stream(root, onnx_file, tmp_path / "out", input="device:987")
    assert not (tmp_path / "out").exists()
    _stream(root, onnx_file, tmp_path / "done")
    before = (tmp_path / "done" / "stream.csv").read_bytes()
    with pytest.raises(FileExistsError, match=r"done already holds a stream's results \(stream.csv\)"):
        _stream(root, onnx_file, tmp_path / "done")
    assert (tmp_path / "done" / "stream.csv").read_bytes() == before
