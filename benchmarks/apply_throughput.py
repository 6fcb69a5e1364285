"""Frames/s of embed and predict on this machine, in one run: the network alone (frames in memory) and end to end
(a folder of .npy videos: decoding, frame skip, resize, fixed-shape batches, and for predict the per-video
reports: frames.csv, best-frame PNGs, timeline plot, summary.json).

  python benchmarks/apply_throughput.py                                   # the demo backbone: ResNet-18 w16, 64 px
  python benchmarks/apply_throughput.py --arch resnet50 --width 64 --image_size 224 --batch_size 32

Weights are random (they do not change the speed); compile time is excluded (one warm-up pass of every path).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile
import time

import ml_collections
import numpy as np


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def benchmark(arch: str, width: int, image_size: int, batch_size: int, videos: int, frames: int, skip: int) -> dict:
    """Frames/s of embed and predict, network only and end to end, on `videos` generated videos."""
    import jax

    from fetalssl_jax.apply import PlaneClassifier, embed, embed_input, load_backbone, open_input, predict
    from fetalssl_jax.apply.tasks import predict_input
    from fetalssl_jax.data.synthetic import PLANES, generate_videos
    from fetalssl_jax.downstream.classification import StepSpec

    backbone = load_backbone("random", arch=arch, width=width, image_size=image_size)
    spec = StepSpec(arch, width, "float32", len(PLANES), 0.5, False, "finetune", image_size, 5, 5.0, 0.5, 0.5, 1e-3,
                    1e-6)  # fmt: skip
    head = np.random.default_rng(0).standard_normal((backbone.module.num_features, len(PLANES))).astype(np.float32)
    classifier = PlaneClassifier(spec, {"params": {"backbone": backbone.variables["params"], "head": {"kernel": head}},
                                        "batch_stats": {"backbone": backbone.variables["batch_stats"]}},
                                 PLANES, "random")  # fmt: skip
    generated = generate_videos(videos, frames * skip, image_size, seed=0, frame_skip=1)
    in_memory = np.concatenate([v.frames[::skip] for v in generated])
    n = len(in_memory)
    results: dict = {"arch": arch, "width": width, "image_size": image_size, "batch_size": batch_size,
                     "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}", "frames": n,
                     "videos": videos, "frame_skip": skip}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        root = pathlib.Path(tmp) / "videos"
        root.mkdir()
        for v in generated:
            np.save(root / f"{v.video_id}.npy", v.frames)
        config = ml_collections.ConfigDict({
            "task": "predict", "classifier": "", "input": str(root), "input_type": "auto", "data_dir": "",
            "split": "train", "frame_skip": skip, "batch_size": batch_size, "progress_bar": False,
            "smooth_window": 3, "threshold": 0.5, "top_k": 1, "min_separation": 5, "compilation_cache_dir": "",
        })  # fmt: skip
        data = open_input(str(root))
        paths = {
            "embed_network": lambda: embed(backbone, in_memory, batch_size),
            "embed_end_to_end": lambda: embed_input(backbone, data, skip, batch_size, progress=False),
            "predict_network": lambda: predict(classifier, in_memory, batch_size),
            "predict_end_to_end": lambda: predict_input(classifier, data, pathlib.Path(tmp) / "predict", config),
        }
        for fn in paths.values():  # compile every program once
            fn()
        for name, fn in paths.items():
            seconds = min(_timed(fn) for _ in range(2))
            results[f"{name}_frames_per_s"] = round(n / seconds, 1)
    results["end_to_end_over_network_embed"] = round(
        results["embed_end_to_end_frames_per_s"] / results["embed_network_frames_per_s"], 3
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet18")
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--image_size", type=int, default=64)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--frames", type=int, default=64, help="kept frames per video")
    parser.add_argument("--frame_skip", type=int, default=5)
    a = parser.parse_args()
    print(
        json.dumps(benchmark(a.arch, a.width, a.image_size, a.batch_size, a.videos, a.frames, a.frame_skip), indent=2)
    )


if __name__ == "__main__":
    from fetalssl_jax.runtime.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as `python -m fetalssl_jax.main` does
    main()
