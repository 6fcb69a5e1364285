"""The same Barlow Twins train step in plain PyTorch and in fetalssl_jax, alternated in one run, on CPU.

  pip install -e ".[bench]"            # torch==2.13.0 (CPU wheel), only for this benchmark
  python benchmarks/compare_torch.py                       # both cases, 2 alternations each
  python benchmarks/compare_torch.py --cases rn18 --alternations 3
  python -m venv /tmp/torch213 && /tmp/torch213/bin/pip install torch==2.13.0 numpy   # the pinned torch beside
  python benchmarks/compare_torch.py --torch-python /tmp/torch213/bin/python,$(which python)  # ... a newer one

Cases (float32, equal in both frameworks): ResNet-18 / 64 px / batch 64 / projector 2048x3 and ResNet-50 / 224 px /
batch 16 / projector 8192x3 (`rn18`, `rn50`). One step = two pre-made views [B, 3, S, S] -> shared ResNet + projector
(Linear-BN-ReLU x2, Linear, no biases) -> Barlow Twins loss -> backward -> LARS update (the reference recipe: weight
decay and trust ratio on weights, momentum). `vits16`: ViT-S/16 / 224 px / batch 16 / projector 2048x3, the torch side
timm's `vit_small_patch16_224` (class token) and torch's AdamW with weight decay 0.05 on ndim > 1 parameters only, the
JAX side `configs/barlow.py:vit` at that size (the same AdamW; its torch interpreter needs timm). The augmentations
are left out of both: the reference makes them in its data loader, fetalssl_jax in its jitted step;
benchmarks/train_step.py measures the fetalssl_jax step with them.

Every measurement runs in its own subprocess (torch, torch with huge pages, JAX, torch, ...) so that peak resident
memory is attributable and neither framework's thread pool competes with the other's. torch runs twice per
alternation: with glibc's default malloc and with `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, the setting that
`python -m fetalssl_jax.main` gives itself (runtime/hugepages.py); the faster of the two is the reference, so
the setting cannot flatter the ratio (`--no-hugepages` runs the JAX side without it). Both use all cores
(torch.set_num_threads(os.cpu_count()); XLA's CPU client uses every core by default). The JAX subprocesses share a
fresh persistent compilation cache: the first one compiles, the later ones load, which gives the first-run and
second-run time to first step. views/s = 2 * batch / median step time; the printed ratio is JAX / torch of the
medians over the alternations, for each torch given by `--torch-python` (its interpreter runs its workers, which
import only torch and numpy), all interleaved in every alternation. The CPU model is printed first.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

from hostinfo import cpu_model

_START = time.perf_counter()  # time to first step counts from process start (imports included)

REPO = pathlib.Path(__file__).resolve().parents[1]

CASES = {
    "rn18": dict(arch="resnet18", image_size=64, batch=64, projector=2048, steps=5),
    "rn50": dict(arch="resnet50", image_size=224, batch=16, projector=8192, steps=2),
    "vits16": dict(arch="vit_small", patch_size=16, image_size=224, batch=16, projector=2048, steps=2),
}
VIT_LR, VIT_WEIGHT_DECAY = 2e-3, 0.05  # configs/barlow.py:vit's AdamW (its lr x batch/256)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is KiB on Linux


def _random_views(batch: int, size: int, channels_last: bool):
    import numpy as np

    rng = np.random.default_rng(0)
    shape = (batch, size, size, 3) if channels_last else (batch, 3, size, size)
    return tuple(rng.standard_normal(shape, dtype=np.float32) for _ in range(2))


# ---------------------------------------------------------------- PyTorch -------------------------------------------


def run_torch(case: dict) -> dict:
    """One subprocess' worth: build, one warm-up step, `steps` timed steps."""
    import torch
    from torch_barlow import LARS, BarlowTwins

    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(0)
    model = BarlowTwins(case["arch"], (case["projector"],) * 3, case.get("patch_size", 16), case["image_size"])
    if "patch_size" in case:  # ViT: AdamW, no decay of biases and norms (as the JAX config's decay_biases=False)
        decay = [p for p in model.parameters() if p.ndim > 1]
        rest = [p for p in model.parameters() if p.ndim <= 1]
        groups = [{"params": decay, "weight_decay": VIT_WEIGHT_DECAY}, {"params": rest, "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=VIT_LR * case["batch"] / 256)
    else:
        opt = LARS(model.parameters(), lr=0.2 * case["batch"] / 256)
    y1, y2 = (torch.from_numpy(v) for v in _random_views(case["batch"], case["image_size"], channels_last=False))

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        loss = model(y1, y2)
        loss.backward()
        opt.step()
        return float(loss)

    step()
    first_step_s = time.perf_counter() - _START
    times = []
    for _ in range(case["steps"]):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {
        "framework": "torch",
        "torch": torch.__version__,
        "python": sys.executable,
        "threads": torch.get_num_threads(),
        "step_s": statistics.median(times),
        "time_to_first_step_s": first_step_s,
        "compile_s": 0.0,
        "peak_rss_gb": _peak_rss_gb(),
    }


# ---------------------------------------------------------------- fetalssl_jax --------------------------------------


def run_jax(case: dict, cache_dir: str) -> dict:
    """One subprocess' worth with fetalssl_jax's own step (make_train_step: jit, donated state, LARS)."""
    import jax

    from fetalssl_jax import config_lib
    from fetalssl_jax.methods import get_method
    from fetalssl_jax.runtime.sharding import batch_sharding, enable_compilation_cache, make_mesh
    from fetalssl_jax.train.optim import make_optimizer
    from fetalssl_jax.train.step import init_state, make_train_step

    enable_compilation_cache(cache_dir)
    proj, size = case["projector"], case["image_size"]
    model = (f"vit,model.patch_size={case['patch_size']},data.stored_size={size}" if "patch_size" in case
             else "default,model.width=64")  # fmt: skip
    config = config_lib.load_config(
        f"{REPO / 'configs' / 'barlow.py'}:{model},model.arch={case['arch']},model.dtype=float32,"
        f"data.image_size={size},batch_size={case['batch']}"
    )
    with config.unlocked():
        config.method_kwargs.projector = (proj, proj, proj)
    base = get_method(config.method)

    class PremadeViews(base):
        """The library's Barlow Twins with the views given (as the torch side gets them) instead of augmented."""

        def make_inputs(self, rng, frames):
            del rng
            return frames

    method = PremadeViews(config)
    optimizer = make_optimizer(config.optim, config.batch_size, steps_per_epoch=100, total_steps=100_000)
    mesh = make_mesh()
    views = _random_views(case["batch"], case["image_size"], channels_last=True)
    sharding = batch_sharding(mesh)
    batch = {"frames": tuple(jax.make_array_from_process_local_data(sharding, v) for v in views)}

    start = time.perf_counter()
    state = init_state(method, optimizer, config.seed, batch["frames"], mesh)
    step_fn = make_train_step(method, optimizer, mesh)
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - start  # init + step compilation (or cache loads)
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    first_step_s = time.perf_counter() - _START
    times = []
    for _ in range(case["steps"]):
        t = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready(metrics)
        times.append(time.perf_counter() - t)
    return {
        "framework": "jax",
        "jax": jax.__version__,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "conv_impl": config.model.get("conv_impl", "-"),
        "step_s": statistics.median(times),
        "time_to_first_step_s": first_step_s,
        "compile_s": compile_s,
        "peak_rss_gb": _peak_rss_gb(),
        "loss": float(metrics["loss"]),
    }


# ---------------------------------------------------------------- driver --------------------------------------------


def _worker(framework: str, case_name: str, cache_dir: str, steps: int | None, hugepages: bool, python: str) -> dict:
    cmd = [python, __file__, "--worker", framework, "--cases", case_name, "--cache-dir", cache_dir]
    if steps:
        cmd += ["--steps", str(steps)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    from fetalssl_jax.runtime.hugepages import HUGETLB_TUNABLE  # no jax import: only the driver process runs this

    env.pop("GLIBC_TUNABLES", None)
    env["FETALSSL_HUGEPAGES"] = "0"  # the worker runs in exactly the environment given here, never re-executed
    if hugepages:
        env["GLIBC_TUNABLES"] = HUGETLB_TUNABLE
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(out.strip().splitlines()[-1])


def _torch_summary(default_malloc: list[dict] | None, hugepages: list[dict] | None, jax_runs: list[dict]) -> dict:
    """One torch's views/s (the faster of the memory settings it ran with: the reference) and JAX / torch."""
    median = {key: statistics.median(r["views_per_s"] for r in runs)
              for key, runs in (("default_malloc", default_malloc), ("hugepages", hugepages)) if runs}  # fmt: skip
    reference = max(median, key=median.get)
    runs = default_malloc if reference == "default_malloc" else hugepages
    jax_vps = statistics.median(r["views_per_s"] for r in jax_runs)
    return {
        "torch": runs[0]["torch"], "python": runs[0]["python"], "threads": runs[0]["threads"],
        "views_per_s": round(median[reference], 2), **{f"views_per_s_{k}": round(v, 2) for k, v in median.items()},
        "reference": reference,
        "ratio_jax_over_torch": round(jax_vps / median[reference], 3),
        "per_alternation_ratios": [round(j["views_per_s"] / t["views_per_s"], 3)
                                   for t, j in zip(runs, jax_runs, strict=True)],
        "time_to_first_step_s": round(statistics.median(r["time_to_first_step_s"] for r in runs), 1),
        "peak_rss_gb": round(max(r["peak_rss_gb"] for r in runs), 2),
    }  # fmt: skip


def compare(case_name: str, alternations: int, steps: int | None, jax_hugepages: bool, torch_pythons: list[str],
            torch_malloc: tuple[bool, ...] = (False, True)):  # fmt: skip
    """Alternates, in every alternation, each torch (its own interpreter, in both memory settings) and JAX
    subprocesses; the JAX ones share one fresh compilation cache. Each torch's reference is its faster setting, so
    fetalssl_jax's huge pages cannot flatter a ratio."""
    case = CASES[case_name]
    plan = [(f"torch{i}_{'hugepages' if hp else 'default_malloc'}", "torch", hp, py)
            for i, py in enumerate(torch_pythons) for hp in torch_malloc]  # fmt: skip
    plan.append(("jax", "jax", jax_hugepages, sys.executable))
    runs = {key: [] for key, *_ in plan}
    with tempfile.TemporaryDirectory(prefix="fetalssl_xla_cache_") as cache_dir:
        for i in range(alternations):
            for key, framework, hugepages, python in plan:
                result = _worker(framework, case_name, cache_dir, steps, hugepages, python)
                result["views_per_s"] = 2 * case["batch"] / result["step_s"]
                runs[key].append(result)
                print(f"  [{case_name} {i + 1}/{alternations}] {key} {json.dumps(result)}", file=sys.stderr, flush=True)
    jax_runs = runs["jax"]
    torches = [_torch_summary(runs.get(f"torch{i}_default_malloc"), runs.get(f"torch{i}_hugepages"), jax_runs)
               for i in range(len(torch_pythons))]  # fmt: skip
    return {
        "case": f"{case['arch']}{case.get('patch_size', '')} / {case['image_size']} px / batch {case['batch']} / "
        f"projector {case['projector']}",
        "cpu": cpu_model(), "jax": jax_runs[0]["jax"], "jax_devices": jax_runs[0]["devices"],
        "conv_impl": jax_runs[0]["conv_impl"], "jax_hugepages": jax_hugepages,
        "jax_views_per_s": round(statistics.median(r["views_per_s"] for r in jax_runs), 2),
        "jax_per_alternation_views_per_s": [round(r["views_per_s"], 2) for r in jax_runs],
        "torch": torches,
        "jax_compile_s_first_run": round(jax_runs[0]["compile_s"], 1),
        "jax_compile_s_second_run": round(jax_runs[1]["compile_s"], 1) if len(jax_runs) > 1 else None,
        "jax_time_to_first_step_s_first_run": round(jax_runs[0]["time_to_first_step_s"], 1),
        "jax_time_to_first_step_s_second_run": (
            round(jax_runs[1]["time_to_first_step_s"], 1) if len(jax_runs) > 1 else None
        ),
        "jax_peak_rss_gb": round(max(r["peak_rss_gb"] for r in jax_runs), 2),
    }  # fmt: skip


def summary_line(result: dict) -> str:
    """One line per case: JAX views/s and its ratio to each torch."""
    ratios = ", ".join(
        f"torch {t['torch']} {t['views_per_s']:.1f} views/s ({t['reference']}): JAX/torch "
        f"{t['ratio_jax_over_torch']:.2f} {t['per_alternation_ratios']}"
        for t in result["torch"]
    )
    return f"{result['case']}: JAX {result['jax_views_per_s']:.1f} views/s; {ratios}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="rn18,rn50", help=f"comma-separated, of {sorted(CASES)}")
    parser.add_argument("--alternations", type=int, default=2, help="torch/JAX subprocess pairs per case (>= 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per subprocess (default: per case)")
    parser.add_argument(
        "--torch-python",
        default=sys.executable,
        help="comma-separated Python interpreters whose torch to compare with, each in its own subprocesses, e.g. "
        "/tmp/torch213/bin/python,.venv/bin/python (default: this interpreter's torch)",
    )
    parser.add_argument(
        "--torch-malloc",
        choices=("both", "hugepages", "default"),
        default="both",
        help="torch's memory settings: both (the faster is the reference), or one of them (half the torch runs)",
    )
    parser.add_argument("--worker", choices=("torch", "jax"), help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default="", help=argparse.SUPPRESS)
    parser.add_argument(
        "--no-hugepages",
        action="store_true",
        help="run the JAX side without glibc.malloc.hugetlb=1 (which `python -m fetalssl_jax.main` sets itself)",
    )
    args = parser.parse_args()
    if args.worker:
        case = dict(CASES[args.cases], **({"steps": args.steps} if args.steps else {}))
        result = run_torch(case) if args.worker == "torch" else run_jax(case, args.cache_dir)
        print(json.dumps(result))
        return
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores", flush=True)
    pythons = [p.strip() for p in args.torch_python.split(",") if p.strip()]
    lines = []
    for name in args.cases.split(","):
        malloc = {"both": (False, True), "hugepages": (True,), "default": (False,)}[args.torch_malloc]
        result = compare(name.strip(), max(2, args.alternations), args.steps, not args.no_hugepages, pythons, malloc)
        print(json.dumps(result, indent=2), flush=True)
        lines.append(summary_line(result))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
