"""Plane detection on a live video (predict with ``stream=True``): frames are read one at a time as the video
plays, from a file through PyAV or from a capture device (``input="device:N"``: PyAV's v4l2 input, /dev/videoN on
Linux; untested without a camera), never the whole video first.

Every `frame_skip`-th decoded frame is kept (frame numbers 0, k, 2k, ... as offline). A kept frame that is black
(no pixel above `readers.CONTENT_THRESHOLD`), frozen (the previous classified frame again, up to a codec's noise:
`FROZEN_DIFFERENCE`) or of another size than the stream's first frame is skipped and counted, never fatal.
The others are prepared exactly as the file path prepares them (`readers.prepare_video` on that one frame),
classified one at a time (an ONNX classifier through onnxruntime, or a classification run in JAX) and their
probabilities averaged over the last `smooth_window` classified frames.

Causal smoothing: a stream knows only the past, so a frame's smoothed probability is the mean of itself and the
`smooth_window - 1` classified frames before it (fewer at the start), where offline predict (`planes.smooth`)
centres the window on the frame. The causal mean lags the centred one by (smooth_window - 1) / 2 frames: a plane
is reported that much later, and a plane's best frame tends to be that much after the offline one.

A classifier with a known-frame rule (`apply/planes.py`) scores every classified frame as offline predict does: a
frame that is not a known plane (score above the threshold, or colour Doppler) makes the current plane none and is
never a best frame; frames.csv gets its score and `known`, summary.json the count of frames not known.

The current plane is the class of highest smoothed probability where it reaches `threshold`, else none. Written
into the workdir as it goes: stream.csv, the events (`plane`: the current plane changed, to "none" when no class
reaches the threshold; `best`: a frame became a plane's best so far, its highest smoothed probability at or above
the threshold); best_<plane>.png, each plane's best frame so far (gray, at its recorded size, replaced by a
better one); frames.csv, every classified frame's probabilities, smoothed probabilities and latency in ms (decode,
preprocess, model, total). At the end (of the video, at Ctrl-C, or at a decoding error after the first frame):
timeline.png and summary.json (planes found as offline; frames decoded, kept, classified and skipped as black,
frozen or wrong_size; latency mean and p95). `fit` 'crop_pad' needs the whole video's content box: not in a stream.
"""

from __future__ import annotations

import collections
import csv
import dataclasses
import itertools
import logging
import pathlib
import time
from collections.abc import Iterator
from typing import Any

import ml_collections
import numpy as np

from fetalssl_jax.apply import planes
from fetalssl_jax.apply.files import save_png, write_csv
from fetalssl_jax.apply.inputs import open_input
from fetalssl_jax.apply.loading import PlaneClassifier, load_classifier
from fetalssl_jax.apply.onnx_model import OnnxClassifier
from fetalssl_jax.apply.outputs import COSMETIC_KEYS
from fetalssl_jax.data.build import readers, sector
from fetalssl_jax.downstream.report import write_json
from fetalssl_jax.runtime.sharding import enable_compilation_cache
from fetalssl_jax.runtime.workdir import make_workdir
from fetalssl_jax.train.fingerprint import config_json
from fetalssl_jax.validation import ConfigError

log = logging.getLogger("fetalssl_jax")

DEVICE_PREFIX = "device:"
BAD_FRAMES = ("black", "frozen", "wrong_size")
# A frozen picture that went through a lossy codec comes back with small differences (an mp4 of a repeated frame:
# a few gray levels at a few % of the pixels); moving anatomy and speckle change far more.
FROZEN_DIFFERENCE = 0.5  # gray levels of 255, averaged over the frame
STAGES = ("decode", "preprocess", "model", "total")


@dataclasses.dataclass(frozen=True)
class Frame:
    """A decoded frame: its number in the stream, its time (s; None without timestamps), its pixels (uint8
    [H, W] or [H, W, C]) and the seconds its decoding took."""

    index: int
    time: float | None
    pixels: np.ndarray
    decode_seconds: float


def timed_frames(decoded: Iterator[tuple[np.ndarray, float | None]]) -> Iterator[Frame]:
    """(pixels, time) pairs as Frames numbered from 0, each with the time its decoding took."""
    for index in itertools.count():
        start = time.perf_counter()
        item = next(decoded, None)
        if item is None:
            return
        yield Frame(index, item[1], item[0], time.perf_counter() - start)


def open_stream(spec: str) -> tuple[str, str, Iterator[Frame]]:
    """(source id, the source's name for sources.csv, its frames) of a video file that PyAV reads or of a capture
    device 'device:N'; nothing is decoded before the first frame is asked for."""
    spec = str(spec).strip()
    if spec.startswith(DEVICE_PREFIX):
        number = spec[len(DEVICE_PREFIX) :]
        if not number.isdigit():
            raise ConfigError([f"config.input = {spec!r}: a capture device is device:<number>, e.g. "
                                          "device:0 for /dev/video0"])  # fmt: skip
        source_id, device = readers.salted_hash(spec, readers.id_salt()), f"/dev/video{number}"
        return source_id, spec, timed_frames(readers.decode_container(device, f"{spec} ({device})", "v4l2"))
    if pathlib.Path(spec).suffix.lower() not in readers.VIDEO_CONTAINER_SUFFIXES:
        raise ConfigError([f"config.input = {spec!r}: a stream reads one video file that PyAV decodes "
                                      f"({', '.join(readers.VIDEO_CONTAINER_SUFFIXES)}) or a capture device "
                                      "(device:N); run other inputs without stream"])  # fmt: skip
    data = open_input(spec, "videos")
    (source_id, name), ref = data.sources()[0], data.videos[0]
    return source_id, name, timed_frames(readers.decode_container(str(ref.path), ref.name))


class FrameCheck:
    """Why a kept frame cannot be classified ('wrong_size', 'black' or 'frozen'), or None for a good frame (which
    becomes the one the next frame is compared with). The first frame checked sets the stream's size."""

    def __init__(self) -> None:
        self.size: tuple[int, ...] | None = None
        self.previous: np.ndarray | None = None

    def __call__(self, gray: np.ndarray) -> str | None:
        self.size = self.size or gray.shape
        if gray.shape != self.size:
            return "wrong_size"
        if gray.max() <= readers.CONTENT_THRESHOLD:
            return "black"
        if self.previous is not None and np.mean(np.abs(gray.astype(np.int16) - self.previous)) < FROZEN_DIFFERENCE:
            return "frozen"
        self.previous = gray
        return None


class CausalSmoother:
    """The mean of the last `window` probability vectors given (fewer at the start): the causal moving average."""

    def __init__(self, window: int) -> None:
        if window < 1:
            raise ValueError(f"smoothing window must be >= 1 frame, got {window}")
        self.recent: collections.deque[np.ndarray] = collections.deque(maxlen=window)

    def __call__(self, probabilities: np.ndarray) -> np.ndarray:
        self.recent.append(np.asarray(probabilities, np.float64))
        return np.mean(self.recent, axis=0).astype(np.float32)


class LiveCsv:
    """A CSV written row by row and flushed at each, for a reader who watches it grow."""

    def __init__(self, path: pathlib.Path, header: list[str]) -> None:
        self.file = open(path, "w", newline="")  # noqa: SIM115 (closed by `close`)
        self.writer = csv.writer(self.file)
        self.write(header)

    def write(self, row: list[Any]) -> None:
        self.writer.writerow(row)
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class PlaneTracker:
    """The current plane and each plane's best frame so far: events to stream.csv, best frames to PNGs."""

    def __init__(self, class_names: tuple[str, ...], threshold: float, out: pathlib.Path) -> None:
        self.class_names, self.threshold, self.out = class_names, threshold, out
        self.current: int | None = None
        self.best: list[planes.PlaneFrame | None] = [None] * len(class_names)
        self.events = LiveCsv(out / "stream.csv", ["event", "frame_index", "time_s", "plane", "probability"])

    def update(self, row: int, frame: Frame, time_s: str, gray: np.ndarray, smoothed: np.ndarray, known: bool) -> None:
        """The events of one classified frame (a frame that is not a known plane: no plane, never a best frame)."""
        top = int(np.argmax(smoothed))
        plane = top if smoothed[top] >= self.threshold and known else None
        if plane != self.current:
            self.current = plane
            name = "none" if plane is None else self.class_names[plane]
            self.events.write(["plane", frame.index, time_s, name, f"{smoothed[top]:.6f}"])
            log.info("frame %d (%s s): %s (%.2f)", frame.index, time_s or "?", name, smoothed[top])
        for c in np.flatnonzero(smoothed >= self.threshold) if known else ():
            if self.best[c] is None or smoothed[c] > self.best[c].probability:
                self.best[c] = planes.PlaneFrame(row, frame.index, float(smoothed[c]))
                save_png(self.out / self.png(c), gray, {"plane": self.class_names[c], "frame": str(frame.index),
                                                        "probability": f"{smoothed[c]:.6f}"})  # fmt: skip
                self.events.write(["best", frame.index, time_s, self.class_names[c], f"{smoothed[c]:.6f}"])

    def png(self, c: int) -> str:
        return f"best_{planes.file_safe(self.class_names[c])}.png"

    def found(self) -> tuple[list[list[planes.PlaneFrame]], list[list[str]]]:
        """Per class, [its best frame] or [], and [its PNG] or [] (as `planes.summarise` takes them)."""
        return ([[] if b is None else [b] for b in self.best],
                [[] if b is None else [self.png(c)] for c, b in enumerate(self.best)])  # fmt: skip


@dataclasses.dataclass
class StreamRun:
    """The state of one stream: `step` takes each decoded frame, `finish` writes timeline.png and summary.json."""

    classifier: PlaneClassifier | OnnxClassifier
    config: ml_collections.ConfigDict
    out: pathlib.Path
    source_id: str

    def __post_init__(self) -> None:
        names = self.classifier.class_names
        self.model = planes.outputs_fn(self.classifier, 1)
        self.check, self.smoother = FrameCheck(), CausalSmoother(self.config.smooth_window)
        self.tracker = PlaneTracker(names, self.config.threshold, self.out)
        self.has_rule = self.classifier.ood_threshold is not None
        self.rows = LiveCsv(self.out / "frames.csv", ["frame_index", "time_s", *(f"p_{n}" for n in names),
                                                      *(f"smoothed_{n}" for n in names),
                                                      *(f"{s}_ms" for s in STAGES),
                                                      *(("ood_score", "known") if self.has_rule else ())])  # fmt: skip
        self.skipped = dict.fromkeys(BAD_FRAMES, 0)
        self.decoded = self.kept = 0
        self.first_time: float | None = None
        self.latency: list[list[float]] = []
        self.smoothed: list[np.ndarray] = []
        self.frame_index: list[int] = []
        self.known: list[bool] = []
        self.started = time.perf_counter()

    def step(self, frame: Frame) -> None:
        """Checks, prepares, classifies and smooths one decoded frame (nothing for a frame between kept ones)."""
        start = time.perf_counter()
        self.decoded += 1
        self.first_time = frame.time if self.decoded == 1 else self.first_time
        if frame.index % self.config.frame_skip:
            return
        self.kept += 1
        stored = readers.check_frames(frame.pixels[None], self.source_id)
        gray = readers.to_grayscale(stored)[0]
        bad = self.check(gray)
        if bad:
            self.skipped[bad] += 1
            return
        prepared, _ = readers.prepare_video(gray[None], self.source_id, self.classifier.image_size, 1, self.config.fit)
        prepared_at = time.perf_counter()
        out = np.asarray(self.model(prepared))[0]
        modelled_at = time.perf_counter()
        probabilities, score = out[:-1], out[-1:]
        known = planes.known_frames(self.classifier, score, sector.colour_doppler(stored))
        smoothed = self.smoother(probabilities)
        time_s = "" if frame.time is None or self.first_time is None else f"{frame.time - self.first_time:.3f}"
        self.tracker.update(len(self.smoothed), frame, time_s, gray, smoothed, known is None or bool(known[0]))
        self.smoothed.append(smoothed)
        self.frame_index.append(frame.index)
        self.known.append(known is None or bool(known[0]))
        ms = [1e3 * frame.decode_seconds, 1e3 * (prepared_at - start), 1e3 * (modelled_at - prepared_at),
              1e3 * (frame.decode_seconds + time.perf_counter() - start)]  # fmt: skip
        self.latency.append(ms)
        rule = [f"{score[0]:.6f}", str(self.known[-1]).lower()] if self.has_rule else []
        self.rows.write([frame.index, time_s, *(f"{x:.6f}" for x in probabilities),
                         *(f"{x:.6f}" for x in smoothed), *(f"{x:.3f}" for x in ms), *rule])  # fmt: skip

    def finish(self, stopped: str) -> dict[str, Any]:
        """Closes the CSVs, writes timeline.png (when a frame was classified) and summary.json; the summary."""
        self.rows.close()
        self.tracker.events.close()
        seconds = time.perf_counter() - self.started
        names, c = self.classifier.class_names, self.config
        found, files = self.tracker.found()
        if self.smoothed:
            title = f"{self.source_id}: plane probabilities (causal smoothing over {c.smooth_window} frames)"
            planes.plot_timeline(np.stack(self.smoothed), np.asarray(self.frame_index), names, found, c.threshold,
                                 self.out / "timeline.png", title, np.asarray(self.known))  # fmt: skip
        settings = {
            "source_id": self.source_id, "stream": True, "stopped": stopped, "frames_decoded": self.decoded,
            "frames_kept": self.kept, "frames": len(self.smoothed), "frames_skipped": self.skipped,
            "frame_skip": c.frame_skip, "smooth_window": c.smooth_window, "smoothing": "causal",
            "threshold": c.threshold, "top_k": 1, "seconds": round(seconds, 3),
            "decoded_per_second": round(self.decoded / max(seconds, 1e-9), 2),
            "latency_ms": latency_summary(np.asarray(self.latency).reshape(-1, len(STAGES))),
        }  # fmt: skip
        if self.has_rule:
            settings["frames_not_known"] = len(self.known) - sum(self.known)
        summary = planes.summarise(names, found, files, settings)
        write_json(self.out / "summary.json", summary)
        return summary


def latency_summary(latency_ms: np.ndarray) -> dict[str, dict[str, float] | None]:
    """{stage: {'mean', 'p95'}} (ms) of per-frame latencies [N, len(STAGES)]; None per stage without frames."""
    return {stage: {"mean": round(float(np.mean(latency_ms[:, i])), 3),
                    "p95": round(float(np.percentile(latency_ms[:, i], 95)), 3)} if len(latency_ms) else None
            for i, stage in enumerate(STAGES)}  # fmt: skip


def stream_planes(
    classifier: PlaneClassifier | OnnxClassifier, frames: Iterator[Frame], out: pathlib.Path,
    config: ml_collections.ConfigDict, source_id: str,
) -> dict[str, Any]:  # fmt: skip
    """Runs `classifier` over `frames` as they come (see the module docstring); the summary. `config` holds
    frame_skip, smooth_window, threshold and fit. Stops at the end, at Ctrl-C, or at a decoding error after the
    first frame (the summary says which)."""
    run = StreamRun(classifier, config, out, source_id)
    stopped = "end of the video"
    try:
        for frame in frames:
            run.step(frame)
    except KeyboardInterrupt:
        stopped = "interrupted (Ctrl-C)"
    except readers.DataError as error:
        if not run.decoded:
            run.finish("no frame decoded")
            raise
        stopped = f"decoding error: {error}"
        log.warning("%s; stopped after %d frames", error, run.decoded)
    return run.finish(stopped)


def run_stream(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
    """predict with stream=True (a validated config): `config.classifier` on the live video `config.input` (see the
    module docstring)."""
    source_id, name, frames = open_stream(config.input)
    classifier = load_classifier(config.classifier)
    workdir = pathlib.Path(workdir)
    if (workdir / "stream.csv").exists():
        raise FileExistsError(f"{workdir} already holds a stream's results (stream.csv); a live stream cannot be "
                              "run again: give another --workdir")  # fmt: skip
    enable_compilation_cache(config.compilation_cache_dir)
    size = classifier.image_size
    planes.outputs_fn(classifier, 1)(np.zeros((1, size, size, 1), np.uint8))  # compiled before the first frame
    first = next(frames, None)  # a source that cannot be read stops here, before anything is written
    if first is None:
        raise readers.DataError(f"{name}: the video has zero frames")
    make_workdir(workdir)
    public = ml_collections.ConfigDict(config.to_dict())
    public.input = f"salted-sha256:{source_id}"  # the path names the patient's folder: only sources.csv keeps it
    (workdir / "config.json").write_text(config_json(public, COSMETIC_KEYS))
    write_csv(workdir / "sources.csv", ("source_id", "path"), [(source_id, name)])
    s = stream_planes(classifier, itertools.chain([first], frames), workdir, config, source_id)
    skipped = ", ".join(f"{v} {k}" for k, v in s["frames_skipped"].items())
    total = s["latency_ms"]["total"] or {"mean": float("nan"), "p95": float("nan")}
    unknown = f" ({s['frames_not_known']} frames not a known plane)" if s.get("frames_not_known") else ""
    return (f"{s['frames']} of {s['frames_decoded']} frames classified ({skipped} skipped; {s['stopped']}); "
            f"{total['mean']:.1f} ms per frame (p95 {total['p95']:.1f}); planes found: "
            f"{sorted(s['planes_found']) or 'none'}{unknown}; reports in {workdir}")  # fmt: skip
