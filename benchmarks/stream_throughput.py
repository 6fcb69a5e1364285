"""Frames/s of predict's stream mode (apply/stream.py) end to end from an mp4, for a plane classifier run by JAX and
by onnxruntime (its ONNX export), and of the backbone alone at batch 1 (JAX against onnxruntime), in one run.

  python benchmarks/stream_throughput.py                               # a random ResNet-18 w16 at 64 px, 256 px video
  python benchmarks/stream_throughput.py --classifier runs/classify --video scan.mp4
  python benchmarks/stream_throughput.py --arch resnet50 --width 64 --image_size 224 --frame_size 480 --frames 500

End to end is what the scanner would see: decoding, the frame checks, preprocessing, the model on one frame, the
causal smoothing and the stream's writes (frames.csv, stream.csv, best-frame PNGs); compilation is excluded (the
stream compiles before its first frame). Without --classifier the weights are random (they do not change the
speed); without --video a synthetic sweep is rendered and written as an mp4 (MPEG-4 part 2, as the tests do).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import tempfile
import time

import numpy as np


def random_classifier_run(directory: pathlib.Path, arch: str, width: int, image_size: int) -> pathlib.Path:
    """A classification run (classifier/) of a torchvision-init backbone and a random linear head."""
    from fetalssl_jax.data.synthetic import PLANES
    from fetalssl_jax.downstream.classification import StepSpec, save_classifier
    from fetalssl_jax.models.resnet import create_resnet, random_backbone_variables

    variables = random_backbone_variables(arch, width, 0)
    features = create_resnet(arch, width=width).num_features
    head = np.random.default_rng(0).standard_normal((features, len(PLANES))).astype(np.float32) / np.sqrt(features)
    spec = StepSpec(arch, width, "float32", len(PLANES), 0.5, False, "finetune", image_size, 5, 5.0, 0.5, 0.5, 1e-3,
                    1e-6)  # fmt: skip
    save_classifier(directory / "classifier", {"params": {"backbone": variables["params"], "head": {"kernel": head}},
                                               "batch_stats": {"backbone": variables["batch_stats"]}},
                    {"spec": dataclasses.asdict(spec), "classes": list(PLANES)})  # fmt: skip
    return directory


def synthetic_mp4(path: pathlib.Path, num_frames: int, size: int) -> pathlib.Path:
    """A rendered sweep (non-heart -> 4CH -> LVOT -> RVOT) of `num_frames` gray frames at `size` px as an mp4."""
    import av

    from fetalssl_jax.data.synthetic import render_video

    frames, _ = render_video(np.random.default_rng(0), num_frames, size, frame_skip=1, plane_sequence=(4, 1, 2, 3))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=25)
        stream.width = stream.height = size
        stream.pix_fmt, stream.bit_rate = "yuv420p", 4_000_000
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.repeat(f[..., None], 3, -1), format="rgb24")))
        container.mux(stream.encode())
    return path


def stream_row(classifier: str, video: pathlib.Path, workdir: pathlib.Path, frame_skip: int) -> dict:
    """predict stream=True on `video` with `classifier`; frames/s and the latency of its summary."""
    from fetalssl_jax.apply.tasks import run_predict
    from fetalssl_jax.config_lib import load_config

    config = load_config(str(pathlib.Path(__file__).parents[1] / "configs" / "predict.py"))
    config.update({"classifier": classifier, "input": str(video), "stream": True, "frame_skip": frame_skip,
                   "smooth_window": 5, "progress_bar": False, "compilation_cache_dir": ""})  # fmt: skip
    run_predict(config, workdir)
    s = json.loads((workdir / "summary.json").read_text())
    return {"decoded_per_s": s["decoded_per_second"], "classified_per_s": round(s["frames"] / s["seconds"], 1),
            **{f"{k}_ms": f"{v['mean']:.2f} / {v['p95']:.2f}" for k, v in s["latency_ms"].items()}}  # fmt: skip


def backbone_rows(run: str, onnx_file: pathlib.Path, repeats: int) -> dict[str, float]:
    """Frames/s of the backbone alone on one frame at a time: JAX (jitted, as predict runs it) and onnxruntime."""
    import jax
    import onnxruntime as ort

    from fetalssl_jax.apply import load_backbone
    from fetalssl_jax.eval.frozen import eval_features

    backbone = load_backbone(run)
    size = backbone.image_size
    frame = np.random.default_rng(0).integers(0, 256, (1, size, size, 1), dtype=np.uint8)
    features = jax.jit(eval_features, static_argnums=(0, 1))
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    paths = {"jax": lambda: jax.block_until_ready(features(backbone.module, size, backbone.variables, frame)),
             "onnxruntime": lambda: session.run(None, {"frames": frame})}  # fmt: skip
    rows = {}
    for name, fn in paths.items():
        fn()  # compile / warm up
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        rows[name] = round(repeats / (time.perf_counter() - start), 1)
    return rows


def benchmark(a: argparse.Namespace) -> dict:
    from fetalssl_jax.downstream import onnx_export

    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        run = a.classifier or str(random_classifier_run(tmp / "run", a.arch, a.width, a.image_size))
        video = pathlib.Path(a.video) if a.video else synthetic_mp4(tmp / "scan.mp4", a.frames, a.frame_size)
        classifier_onnx = onnx_export.export_classifier(run, tmp / "classifier.onnx")
        backbone_onnx = onnx_export.export_backbone(run, tmp / "backbone.onnx")
        results = {"classifier": run if a.classifier else f"random {a.arch} w{a.width} at {a.image_size} px",
                   "video": str(video) if a.video else f"synthetic {a.frames} frames at {a.frame_size} px",
                   "frame_skip": a.frame_skip,
                   "stream": {"jax": stream_row(run, video, tmp / "jax", a.frame_skip),
                              "onnxruntime": stream_row(str(classifier_onnx), video, tmp / "onnx", a.frame_skip)},
                   "backbone_batch1_frames_per_s": backbone_rows(run, backbone_onnx, a.repeats)}  # fmt: skip
    return results


def table(results: dict) -> str:
    """The results as a markdown table."""
    lines = [f"classifier: {results['classifier']}; video: {results['video']}; frame_skip {results['frame_skip']}",
             "", "| stream end to end | decoded frames/s | classified frames/s | decode ms (mean / p95) | "
             "preprocess ms | model ms | total ms |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, r in results["stream"].items():
        lines.append(f"| {name} | {r['decoded_per_s']} | {r['classified_per_s']} | {r['decode_ms']} | "
                     f"{r['preprocess_ms']} | {r['model_ms']} | {r['total_ms']} |")  # fmt: skip
    b = results["backbone_batch1_frames_per_s"]
    lines += ["", "| backbone alone, batch 1 | frames/s |", "|---|---|", *(f"| {k} | {v} |" for k, v in b.items()),
              f"| onnxruntime / jax | {b['onnxruntime'] / b['jax']:.2f} |"]  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classifier", default="", help="a classification run (default: a random one)")
    parser.add_argument("--video", default="", help="an mp4 (default: a rendered sweep)")
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--frames", type=int, default=200, help="frames of the rendered video")
    parser.add_argument("--frame_size", type=int, default=256, help="side of the rendered video's frames")
    parser.add_argument("--frame_skip", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=200, help="backbone calls timed per path")
    parser.add_argument("--json", default="", help="also write the results here")
    a = parser.parse_args()
    results = benchmark(a)
    print(table(results))
    if a.json:
        pathlib.Path(a.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    from fetalssl_jax.runtime.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as `python -m fetalssl_jax.main` does
    main()
