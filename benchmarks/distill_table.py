"""A teacher and its distilled student side by side (docs/results.md, "At the scanner"), in one run.

  python benchmarks/distill_table.py --teacher workdirs/barlow_twins --student workdirs/distill \
      --classifier workdirs/classify_student

Rows: the teacher, the student, and the student architecture's two baselines: torchvision's random init and the
untrained start of the distillation run (its seed's initialisation). Columns: the logistic-regression probe with 10
labelled images per class (the pretraining evaluation's: 20 label draws, test patients unseen in training, 95 %
bootstrap intervals, every row on the same draws and patients) and its paired difference to the student's random
init, parameters, FLOPs per frame (XLA's cost analysis of the backbone's forward at batch 1 with the native
convolutions the ONNX graph has), and frames/s of the backbone alone at batch 1 through onnxruntime (the ONNX file
of configs/export.py format=onnx) and through JAX (`stream_throughput.backbone_rows`). Then predict stream=True end
to end from an mp4 with the student's plane classifier, by JAX and by its ONNX export (`stream_throughput.stream_row`;
without --video a rendered sweep). The bars: the student keeps >= 90 % of the teacher's probe, beats its random init
(interval above 0), at <= 1/4 of its FLOPs; the ONNX classifier streams >= 30 frames/s.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import tempfile

import jax
import ml_collections
import numpy as np
from stream_throughput import backbone_rows, stream_row, synthetic_mp4

REPO = pathlib.Path(__file__).resolve().parents[1]
SHOTS = 10
TEACHER, STUDENT = "teacher", "student (distilled)"


def run_config(workdir: pathlib.Path) -> ml_collections.ConfigDict:
    """The resolved config a run wrote into its config.json."""
    from fetalssl_jax.train.fingerprint import DIGEST_KEY

    tree = json.loads((workdir / "config.json").read_text())
    tree.pop(DIGEST_KEY, None)
    return ml_collections.ConfigDict(tree)


def untrained_start(config: ml_collections.ConfigDict) -> dict:
    """The backbone variables a distillation run of `config` starts from (its seed's init, as the loop makes it)."""
    from fetalssl_jax.apply.loading import load_backbone
    from fetalssl_jax.apply.outputs import model_identity
    from fetalssl_jax.methods import distill, get_method
    from fetalssl_jax.models.backbone import backbone_variables
    from fetalssl_jax.runtime.sharding import batch_sharding, make_mesh
    from fetalssl_jax.train.optim import make_optimizer
    from fetalssl_jax.train.step import init_state

    distill.set_teacher_loader(load_backbone, model_identity)
    method = get_method(config.method)(config)
    mesh = make_mesh()
    size = config.data.stored_size
    frames = np.zeros((config.batch_size, method.frames_per_example, size, size, 1), np.uint8)  # only shapes count
    state = init_state(method, make_optimizer(config.optim, config.batch_size, 1, 1), config.seed,
                       jax.device_put(frames, batch_sharding(mesh)), mesh)  # fmt: skip
    return jax.device_get(backbone_variables({"params": state.params, **state.model_state}))


def probe(teacher, student, config: ml_collections.ConfigDict):
    """The frozen evaluation (kNN, probe 10/class) of the four rows on the same draws, with paired differences."""
    from fetalssl_jax.data import sources
    from fetalssl_jax.eval.evaluator import RANDOM_INIT, SSL_START
    from fetalssl_jax.eval.frozen import evaluate_inits, extract_features
    from fetalssl_jax.models.backbone import random_variables

    e, size = config.eval, config.data.image_size
    splits = sources.labelled_splits(config)
    teacher_features = tuple(extract_features(teacher.module, teacher.variables, splits[s].images,
                                              teacher.image_size, e.batch_size) for s in ("train", "test"))  # fmt: skip
    inits = {TEACHER: {}, STUDENT: student.variables, RANDOM_INIT: random_variables(config.model, size, config.seed),
             SSL_START: untrained_start(config)}  # fmt: skip
    return evaluate_inits(student.module, inits, splits, size, len(sources.class_names(config)),
                          baselines=(RANDOM_INIT, SSL_START, TEACHER), knn_k=e.knn_k, batch_size=e.batch_size,
                          shots=(SHOTS,), draws=e.draws, seed=config.seed, probe_max_iter=e.probe_max_iter,
                          features={TEACHER: teacher_features})  # fmt: skip


def size_and_cost(backbone) -> dict[str, float]:
    """Parameters and FLOPs per frame (XLA's cost analysis of the forward at batch 1, native convolutions)."""
    module = backbone.module.clone(conv_impl="native") if hasattr(backbone.module, "conv_impl") else backbone.module
    forward = jax.jit(lambda v, x: module.apply(v, x, train=False))
    example = np.zeros((1, backbone.image_size, backbone.image_size, 3), np.float32)
    cost = forward.lower(backbone.variables, example).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    params = sum(int(np.size(x)) for x in jax.tree.leaves(backbone.variables["params"]))
    return {"params": params, "flops": float(cost["flops"])}


def export_onnx(kind: str, path: str, out: pathlib.Path) -> pathlib.Path:
    """`path` (a run) exported by the export task of configs/export.py with format=onnx into `out`."""
    from fetalssl_jax.config_lib import load_config
    from fetalssl_jax.downstream import export

    config = load_config(str(REPO / "configs" / "export.py"))
    config.update({kind: path, "format": "onnx"})
    export.run(config, out)
    return out / f"{kind}.onnx"


def benchmark(a: argparse.Namespace) -> dict:
    from fetalssl_jax.apply.loading import load_backbone

    teacher, student = load_backbone(a.teacher), load_backbone(a.student)
    evaluation = probe(teacher, student, run_config(pathlib.Path(a.student)))
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        for name, backbone, run in ((TEACHER, teacher, a.teacher), (STUDENT, student, a.student)):
            onnx_file = export_onnx("backbone", run, tmp / name.split()[0])
            rows[name] = {**size_and_cost(backbone), **backbone_rows(run, onnx_file, a.repeats)}
        video = pathlib.Path(a.video) if a.video else synthetic_mp4(tmp / "scan.mp4", a.frames, a.frame_size)
        classifier_onnx = export_onnx("classifier", a.classifier, tmp / "classifier")
        stream = {"jax": stream_row(a.classifier, video, tmp / "jax", a.frame_skip),
                  "onnxruntime": stream_row(str(classifier_onnx), video, tmp / "onnx", a.frame_skip)}  # fmt: skip
    scores = evaluation.few_label.scores
    return {"teacher": a.teacher, "student": a.student, "classifier": a.classifier,
            "video": a.video or f"synthetic {a.frames} frames at {a.frame_size} px", "frame_skip": a.frame_skip,
            "probe": {n: vars(s[SHOTS]) for n, s in scores.items()},
            "knn": {n: vars(k) for n, k in evaluation.knn.items()},
            "differences": {base: {n: vars(d[SHOTS]) for n, d in rows_.items()}
                            for base, rows_ in evaluation.few_label.differences.items()},
            "backbones": rows, "stream": stream}  # fmt: skip


def _interval(d: dict) -> str:
    star = "*" if d["low"] > 0 or d["high"] < 0 else ""
    return f"{d['mean']:+.3f} [{d['low']:+.3f}, {d['high']:+.3f}]{star}"


def table(r: dict) -> str:
    """The results as markdown: the four rows, the bars, the stream."""
    from fetalssl_jax.eval.evaluator import RANDOM_INIT

    probe, diffs, b = r["probe"], r["differences"], r["backbones"]
    lines = [f"teacher: {r['teacher']}; student: {r['student']}; video: {r['video']}, frame_skip {r['frame_skip']}",
             "", f"| backbone | probe {SHOTS}/class | - student's random init | params | MFLOPs/frame | "
             "frames/s onnxruntime (batch 1) | frames/s JAX (batch 1) |", "|---|" + "---:|" * 6]  # fmt: skip
    for name, p in probe.items():
        cells = [f"{p['mean']:.3f} [{p['low']:.3f}, {p['high']:.3f}]",
                 _interval(diffs[RANDOM_INIT][name]) if name != RANDOM_INIT else ""]  # fmt: skip
        if name in b:
            cells += [f"{b[name]['params']:,}", f"{b[name]['flops'] / 1e6:.1f}", f"{b[name]['onnxruntime']:.0f}",
                      f"{b[name]['jax']:.0f}"]  # fmt: skip
        else:
            cells += ["", "", "", ""]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    keep = probe[STUDENT]["mean"] / probe[TEACHER]["mean"]
    flops = b[STUDENT]["flops"] / b[TEACHER]["flops"]
    lines += ["", f"student / teacher: probe {100 * keep:.1f} %, FLOPs {100 * flops:.1f} %, parameters "
              f"{100 * b[STUDENT]['params'] / b[TEACHER]['params']:.1f} %; student - teacher: "
              f"{_interval(diffs[TEACHER][STUDENT])}", "",
              "| predict stream=True, student classifier | decoded frames/s | classified frames/s | decode ms "
              "(mean / p95) | preprocess ms | model ms | total ms |", "|---|" + "---:|" * 6]  # fmt: skip
    for name, s in r["stream"].items():
        lines.append(f"| {name} | {s['decoded_per_s']} | {s['classified_per_s']} | {s['decode_ms']} | "
                     f"{s['preprocess_ms']} | {s['model_ms']} | {s['total_ms']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", required=True, help="the teacher (a pretraining workdir or any backbone form)")
    parser.add_argument("--student", required=True, help="the distillation run's workdir")
    parser.add_argument("--classifier", required=True, help="the student's classification run")
    parser.add_argument("--video", default="", help="an mp4 (default: a rendered sweep)")
    parser.add_argument("--frames", type=int, default=300, help="frames of the rendered video")
    parser.add_argument("--frame_size", type=int, default=256, help="side of the rendered video's frames")
    parser.add_argument("--frame_skip", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=300, help="backbone calls timed per path")
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
