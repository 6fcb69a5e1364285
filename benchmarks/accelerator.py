"""Training speed where users train: one call on a GPU (or TPU) machine, one JSON file and a table.

  python benchmarks/accelerator.py                      # on the accelerator machine: one call, under 8 minutes
  python benchmarks/accelerator.py --smoke              # tiny models at 32 px on any CPU, well under a minute
  python benchmarks/accelerator.py --records-dir DIR    # TFDS records built beforehand (else built in a temp dir)
  python benchmarks/accelerator.py --records-dir DIR --only-build-records   # build them (needs TensorFlow)

Every section runs in its own subprocess, one after the other, so that an out-of-memory, a crash or a time-out
is recorded as that section's error and the next one still runs, and each reports its own peak device memory:

  environment   jax/jaxlib versions, the devices and their kind, XLA_FLAGS, host cores and CPU model
  step cases    one per `STEP_CASES` entry: compile time, steady-state views/s (the median of timed windows after
                warm-up steps, each window ended by block_until_ready on the outputs), peak device memory
                (device.memory_stats(); XLA's memory plan of the step where the backend keeps none), the step's
                FLOPs from XLA's cost analysis of the compiled step, and MFU = FLOPs / step time / the device's
                peak bf16 FLOP/s (`PEAK_TFLOPS`, or --peak-tflops). A method missing from the registry (or its
                config file) is reported "not available".
  pipeline      TFDS records at the step's image size through the training input pipeline (RecordSampler:
                ArrayRecord reads and PNG decoding on a thread pool; device_batches: prefetch onto the device), no
                step consuming them: records/s on all host cores, and on one core (a process pinned to one CPU),
                hence the cores that feed the measured Barlow Twins step rate
  end_to_end    the Barlow Twins step fed by that pipeline: its step time, and the fraction of it the device
                waits for input, 1 - (step time on a device-resident batch) / (step time fed by the pipeline)

The JSON goes to --out (default: $OUT/accelerator.json where $OUT is set, else ./accelerator.json).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

from hostinfo import cpu_model, pin_to_one_core, usable_cores

REPO = pathlib.Path(__file__).resolve().parents[1]
RESULT_MARK = "ACCELERATOR_RESULT "

# Dense bfloat16 peak FLOP/s of one chip, matched as a substring of jax's `device_kind`, first match wins.
PEAK_TFLOPS = (
    ("H100 PCIe", 756.0),  # NVIDIA H100 Tensor Core GPU datasheet: BF16 1,513 TFLOPS with sparsity, half dense
    ("H100 NVL", 835.0),  # the same datasheet: 1,671 with sparsity
    ("H100", 989.0),  # the same datasheet, H100 SXM: 1,979 with sparsity
    ("H200 NVL", 835.0),  # NVIDIA H200 Tensor Core GPU datasheet: 1,671 with sparsity
    ("H200", 989.0),  # the same datasheet, H200 SXM: 1,979 with sparsity
    ("A100", 312.0),  # NVIDIA A100 Tensor Core GPU datasheet: BF16 312 TFLOPS dense (624 with sparsity)
    ("TPU v5 lite", 197.0),  # Google Cloud TPU v5e documentation: 197 TFLOP/s bf16 per chip
    ("TPU v5e", 197.0),
    ("TPU v5p", 459.0),  # Google Cloud TPU v5p documentation: 459 TFLOP/s bf16 per chip
    ("TPU v5", 459.0),  # jax names the v5p chip "TPU v5"
    ("TPU v4", 275.0),  # Google Cloud TPU v4 documentation: 275 TFLOP/s bf16 per chip
)

# XLA flags set on GPU machines, each only where it is known to help:
MULTI_GPU_XLA_FLAGS = (
    # lets XLA overlap the gradient all-reduce with the backward pass (JAX's GPU performance tips); one GPU has none
    "--xla_gpu_enable_latency_hiding_scheduler=true",
)

_FULL = {"data.image_size": 224, "data.stored_size": 224, "batch_size": 256, "model.dtype": "bfloat16"}


@dataclasses.dataclass(frozen=True)
class StepCase:
    """A compiled train step to time: `method` from the registry ('classify': the plane classifier's step in
    downstream/classification.py), its config (found in configs/ by its `method` key) at `preset` with `overrides`
    on the accelerator, at the `tiny` preset with --smoke. `views`: images through the network per example."""

    method: str
    overrides: dict
    views: int = 2
    preset: str = "paper"


STEP_CASES = {
    "barlow_twins_resnet50": StepCase("barlow_twins", _FULL),
    "dino_vit_s16": StepCase("dino", _FULL),
    "classifier_resnet50_finetune": StepCase("classify", {**_FULL, "mode": "finetune"}, views=1),
}
PIPELINE_CASE = "barlow_twins_resnet50"  # the step whose rate the pipeline must feed, and the end-to-end step


def peak_tflops(device_kind: str) -> float | None:
    """The dense bf16 peak of `device_kind` from `PEAK_TFLOPS`, None where it is not in the table (CPUs)."""
    return next((tflops for key, tflops in PEAK_TFLOPS if key.lower() in device_kind.lower()), None)


def config_file(case: StepCase) -> pathlib.Path | None:
    """The config file of `case`'s method in configs/ (configs/classify.py for the classifier), or None."""
    from fetalssl_jax.config_lib import method_config_files

    if case.method == "classify":
        return REPO / "configs" / "classify.py"
    return method_config_files(REPO / "configs").get(case.method)


def case_config(case: StepCase, smoke: bool):
    """The config of `case` (see `StepCase`)."""
    from fetalssl_jax.config_lib import load_config, set_by_path

    path = config_file(case)
    config = load_config(f"{path}:{'tiny' if smoke else case.preset}")
    for key, value in ({"progress_bar": False} if smoke else case.overrides).items():
        set_by_path(config, key, value)
    return config


def unavailable(case: StepCase) -> str | None:
    """Why `case` cannot run with this checkout (its method not registered, its config missing), or None."""
    from fetalssl_jax.methods import registered_methods

    if case.method != "classify" and case.method not in registered_methods():
        return f"method {case.method!r} is not in the registry ({', '.join(registered_methods())})"
    if config_file(case) is None:
        return f"no config in {REPO / 'configs'} trains {case.method!r}"
    return None


# ---------------------------------------------------------------- workers (one subprocess each) ------------------
def worker_environment(args) -> dict:
    import jax
    import jaxlib

    devices = jax.devices()
    return {
        "jax": jax.__version__, "jaxlib": jaxlib.__version__, "backend": jax.default_backend(),
        "device_kind": devices[0].device_kind, "device_count": len(devices), "process_count": jax.process_count(),
        "peak_bf16_tflops": args.peak_tflops or peak_tflops(devices[0].device_kind),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "host_cores": usable_cores(), "cpu_model": cpu_model(),
        "python": platform.python_version(),
    }  # fmt: skip


def peak_device_bytes() -> int | None:
    """The first local device's peak allocated bytes (device.memory_stats()), None where the backend keeps none."""
    import jax

    stats = jax.local_devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def prepare_classifier_step(config) -> tuple:
    """(jitted step, state, batch) of the plane classifier (downstream/classification.py's compiled step) at
    `config`, from a random init, with random uint8 images and labels on the devices."""
    import jax
    import numpy as np

    from fetalssl_jax.data.augment import preprocess_eval
    from fetalssl_jax.data.synthetic.scene import NUM_PLANES
    from fetalssl_jax.downstream.classification import StepSpec, compiled_functions
    from fetalssl_jax.runtime.sharding import batch_sharding

    spec = StepSpec.from_config(config, NUM_PLANES)
    model, init_state, train_step, _, mesh = compiled_functions(spec)
    size, batch_size = spec.image_size, int(config.batch_size)
    example = preprocess_eval(np.zeros((1, size, size, 1), np.uint8), size)  # what the network sees (3 channels)
    variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(config.seed), example)
    state = init_state(variables["params"], variables["batch_stats"], np.ones(NUM_PLANES, np.float32), config.seed)
    rng = np.random.default_rng(0)
    sharding = batch_sharding(mesh)
    batch = {
        "images": rng.integers(0, 256, (batch_size, size, size, 1), dtype=np.uint8),
        "labels": rng.integers(0, NUM_PLANES, batch_size).astype(np.int32),
    }
    return train_step, state, {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def worker_step(args, name: str) -> dict:
    """Compile time, views/s, memory, FLOPs and MFU of the step case `name`."""
    import jax
    from benchlib import prepare_step, time_step

    case = STEP_CASES[name]
    config = case_config(case, args.smoke)
    prepare = prepare_classifier_step if case.method == "classify" else prepare_step
    step_fn, state, batch = prepare(config)
    timed = time_step(step_fn, state, batch, args.steps, args.repeats, args.warmup)
    step_s, batch_size = timed["step_s"], int(config.batch_size)
    peak = args.peak_tflops or peak_tflops(jax.devices()[0].device_kind)
    achieved = timed["flops"] / step_s
    return {
        "method": case.method, "arch": config.model.arch, "image_size": int(config.data.image_size),
        "dtype": config.model.dtype, "batch_size": batch_size, "views_per_step": batch_size * case.views,
        "compile_s": timed["compile_s"], "step_s": step_s, "window_step_s": timed["window_step_s"],
        "images_per_s": batch_size / step_s, "views_per_s": batch_size * case.views / step_s,
        "peak_device_bytes": peak_device_bytes(), "compiled_memory_bytes": timed["compiled_memory_bytes"],
        "step_tflop": timed["flops"] / 1e12, "achieved_tflops": achieved / 1e12, "peak_bf16_tflops": peak,
        "mfu": achieved / (peak * 1e12) if peak else None, "loss": float(timed["metrics"]["loss"]),
        "timed_steps": args.steps * args.repeats, "warmup_steps": args.warmup,
    }  # fmt: skip


def records_name(image_size: int) -> str:
    """The TFDS name of the records the pipeline sections read: single frames at `image_size`."""
    return f"fetal_us_video/accelerator{image_size}"


def pipeline_config(args):
    """The end-to-end case's config reading the records in `args.records_dir`."""
    from fetalssl_jax.config_lib import set_by_path

    config = case_config(STEP_CASES[PIPELINE_CASE], args.smoke)
    name = records_name(int(config.data.image_size))
    for key, value in (("data.source", "tfds"), ("data.name", name), ("data.data_dir", args.records_dir)):
        set_by_path(config, key, value)
    return config


def worker_pipeline(args) -> dict:
    """Records/s of the training input pipeline with `args.threads` reader threads (0: one per usable core)."""
    from benchlib import build_records, pipeline_rate

    from fetalssl_jax.data import sources

    config = pipeline_config(args)
    records = build_records(args.records_dir, config.data.name, int(config.data.image_size), args.records)
    dataset = sources.pretraining_frames(config, "frames")
    cores = usable_cores()
    threads = args.threads or cores
    rate = pipeline_rate(config, dataset, args.pipeline_batches, threads, prefetch=0)
    return {"records": records, "image_size": int(config.data.image_size), "usable_cores": cores,
            "reader_threads": threads, **rate}  # fmt: skip


def worker_end_to_end(args) -> dict:
    """The end-to-end case's step on a device-resident batch and fed by the input pipeline, timed alike."""
    from benchlib import build_records, fed_step_time, prepare_step, time_step

    from fetalssl_jax.data import sources

    config = pipeline_config(args)
    build_records(args.records_dir, config.data.name, int(config.data.image_size), args.records)
    step_fn, state, batch = prepare_step(config)
    fixed = time_step(step_fn, state, batch, args.steps, args.repeats, args.warmup)
    dataset = sources.pretraining_frames(config, "frames")
    fed = fed_step_time(config, dataset, fixed["compiled"], fixed["state"], args.steps * args.repeats, args.warmup)
    return {
        "batch_size": int(config.batch_size), "reader_threads": dataset.num_threads, "prefetch": config.data.prefetch,
        "step_s_resident_batch": fixed["step_s"], "step_s_fed": fed["step_s"],
        "input_wait_fraction": max(0.0, 1.0 - fixed["step_s"] / fed["step_s"]),
        "host_blocked_fraction": fed["host_blocked_fraction"], "timed_steps": args.steps * args.repeats,
    }  # fmt: skip


def run_worker(args) -> None:
    if args.worker == "environment":
        result = worker_environment(args)
    elif args.worker == "pipeline":
        result = worker_pipeline(args)
    elif args.worker == "end_to_end":
        result = worker_end_to_end(args)
    else:
        result = worker_step(args, args.worker)
    print(RESULT_MARK + json.dumps(result), flush=True)


# ---------------------------------------------------------------- driver -----------------------------------------
def gpu_count() -> int:
    """NVIDIA GPUs on this machine (`nvidia-smi -L`), 0 without the tool; asked without starting JAX."""
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith("GPU ") for line in out.splitlines())


def worker_env(cache_dir: str, smoke: bool = False) -> dict:
    """The workers' environment: the package importable, the flags of `MULTI_GPU_XLA_FLAGS` where they help, a
    compilation cache shared by the workers (the end-to-end step loads what the step case compiled)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["FETALSSL_ACCELERATOR_CACHE"] = cache_dir
    flags = [env.get("XLA_FLAGS", "")]
    if gpu_count() > 1:
        flags += MULTI_GPU_XLA_FLAGS
    if smoke and "--xla_backend_optimization_level" not in flags[0]:
        flags.append("--xla_backend_optimization_level=0")  # smoke numbers mean nothing: compile the tiny steps fast
    env["XLA_FLAGS"] = " ".join(flags).strip()
    return env


def run_section(section: str, args, env: dict, timeout_s: float, one_core: bool = False, **extra) -> dict:
    """One worker subprocess; its result, or {'error': ...} with the end of its output."""
    cmd = [sys.executable, __file__, "--worker", section, "--records-dir", args.records_dir,
           *sum(([f"--{k.replace('_', '-')}", str(v)] for k, v in extra.items()), []),
           *(["--smoke"] if args.smoke else []), *worker_flags(args)]  # fmt: skip
    pin = pin_to_one_core if one_core else None
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout_s, preexec_fn=pin)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-1500:]
        return {"error": f"timed out after {timeout_s:.0f} s", "log_tail": _text(tail)}
    wall = time.perf_counter() - start
    lines = [line for line in proc.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if not lines:
        return {"error": f"exit status {proc.returncode}", "log_tail": (proc.stderr or proc.stdout)[-1500:]}
    result = {**json.loads(lines[-1][len(RESULT_MARK) :]), "section_wall_s": wall}
    if proc.returncode:  # measured and printed, then failed at exit (a thread torn down at interpreter exit)
        result["exit_status_after_result"] = proc.returncode
    return result


def _text(data) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data


def worker_flags(args) -> list[str]:
    flags = ["--steps", str(args.steps), "--repeats", str(args.repeats), "--warmup", str(args.warmup),
             "--records", str(args.records), "--pipeline-batches", str(args.pipeline_batches)]  # fmt: skip
    return flags + (["--peak-tflops", str(args.peak_tflops)] if args.peak_tflops else [])


SECTION_CAPS_S = {"environment": 90, "step": 210, "pipeline": 120, "end_to_end": 180}


def run_all(args) -> dict:
    """Every section in order within `args.budget_s`; a section that fails or runs out of time is recorded."""
    deadline = time.perf_counter() + args.budget_s
    results: dict = {"smoke": args.smoke, "command": " ".join(sys.argv), "sections": {}}
    sections = results["sections"]

    def run(section: str, key: str, cap: float, **kwargs) -> dict:
        left = deadline - time.perf_counter()
        if left < 15:
            sections[key] = {"error": "skipped: the time budget (--budget-s) ran out"}
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {key} ...", file=sys.stderr, flush=True)
            sections[key] = run_section(section, args, env, min(cap, left), **kwargs)
        return sections[key]

    with tempfile.TemporaryDirectory(prefix="fetalssl_accelerator_") as tmp:
        args.records_dir = args.records_dir or str(pathlib.Path(tmp, "records"))
        env = worker_env(str(pathlib.Path(tmp, "xla_cache")), args.smoke)
        results["environment"] = run("environment", "environment", SECTION_CAPS_S["environment"])
        for name, case in STEP_CASES.items():
            reason = unavailable(case)
            if reason:
                sections[name] = {"status": "not available", "reason": reason}
            else:
                run(name, name, SECTION_CAPS_S["step"])
        run("pipeline", "pipeline_all_cores", SECTION_CAPS_S["pipeline"], threads=0)
        run("pipeline", "pipeline_one_core", SECTION_CAPS_S["pipeline"], one_core=True, threads=1)
        run("end_to_end", "end_to_end", SECTION_CAPS_S["end_to_end"])
    results["feeding"] = feeding(sections)
    return results


def feeding(sections: dict) -> dict | None:
    """How many host cores feed the end-to-end case's measured step rate, from the one-core pipeline rate."""
    step, one = sections.get(PIPELINE_CASE, {}), sections.get("pipeline_one_core", {})
    if "images_per_s" not in step or "records_per_s" not in one:
        return None
    per_core = one["records_per_s"]
    return {"step_images_per_s": step["images_per_s"], "records_per_s_per_core": per_core,
            "cores_needed": math.ceil(step["images_per_s"] / per_core)}  # fmt: skip


def _fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def table(results: dict) -> str:
    """The results as a Markdown table, environment first."""
    env = results.get("environment", {})
    lines = [
        f"jax {env.get('jax')} / jaxlib {env.get('jaxlib')}, {env.get('device_count')} x {env.get('device_kind')} "
        f"({env.get('backend')}), peak bf16 {_fmt(env.get('peak_bf16_tflops'))} TFLOP/s, host: "
        f"{env.get('host_cores')} cores, {env.get('cpu_model')}, XLA_FLAGS={env.get('xla_flags')!r}",
        "",
        "| section | views/s | step s | compile s | device GB (peak; CPU: plan) | TFLOP/step | MFU | note |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, r in results["sections"].items():
        if name in ("environment",):
            continue
        note = r.get("error") or (f"{r['status']}: {r['reason']}" if "reason" in r else "")
        if "records_per_s" in r:
            note = note or f"{r['records_per_s']:.0f} records/s with {r['reader_threads']} reader threads"
        if "input_wait_fraction" in r:
            note = note or (f"device waits for input {100 * r['input_wait_fraction']:.1f} % of the step "
                            f"(resident batch {r['step_s_resident_batch']:.4f} s)")  # fmt: skip
        memory = r.get("peak_device_bytes") or r.get("compiled_memory_bytes")
        note = (note.splitlines() or [""])[0][:120]
        lines.append(
            f"| {name} | {_fmt(r.get('views_per_s'), '.1f')} | {_fmt(r.get('step_s') or r.get('step_s_fed'), '.4f')} "
            f"| {_fmt(r.get('compile_s'), '.1f')} | {_fmt(memory and memory / 1e9, '.2f')} "
            f"| {_fmt(r.get('step_tflop'), '.3f')} | {_fmt(r.get('mfu'), '.1%')} | {note} |"
        )
    if results.get("feeding"):
        f = results["feeding"]
        lines += ["", f"One core reads {f['records_per_s_per_core']:.0f} records/s: {f['cores_needed']} cores feed "
                      f"{f['step_images_per_s']:.0f} images/s of {PIPELINE_CASE}."]  # fmt: skip
    return "\n".join(lines)


def default_out() -> str:
    return str(pathlib.Path(os.environ["OUT"], "accelerator.json")) if os.environ.get("OUT") else "accelerator.json"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="the JSON file (default: $OUT/accelerator.json or ./)")
    parser.add_argument("--smoke", action="store_true", help="tiny models at 32 px, few steps: any CPU, seconds")
    parser.add_argument("--records-dir", default="", help="TFDS data_dir with (or for) the records; '': a temp dir")
    parser.add_argument("--steps", type=int, default=None, help="steps per timed window (default 10; smoke 2)")
    parser.add_argument("--repeats", type=int, default=None, help="timed windows (default 3; smoke 2)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps after compiling (default 3; smoke 1)")
    parser.add_argument("--records", type=int, default=None, help="records to build (default 1024; smoke 64)")
    parser.add_argument("--pipeline-batches", type=int, default=None, help="timed batches (default 12; smoke 3)")
    parser.add_argument("--budget-s", type=float, default=None, help="for all sections (default 450; smoke 900)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, overriding the table")
    parser.add_argument(
        "--only-build-records",
        action="store_true",
        help="build the records in --records-dir and stop (needs TensorFlow to encode them; reading them does not)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    defaults = {"steps": (10, 2), "repeats": (3, 2), "warmup": (3, 1), "records": (1024, 64),
                "pipeline_batches": (12, 3), "budget_s": (450.0, 900.0)}  # fmt: skip
    for key, (full, smoke) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, smoke if args.smoke else full)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        if os.environ.get("FETALSSL_ACCELERATOR_CACHE"):
            from fetalssl_jax.runtime.sharding import enable_compilation_cache

            enable_compilation_cache(os.environ["FETALSSL_ACCELERATOR_CACHE"])
        run_worker(args)
        return 0
    if args.only_build_records:
        from benchlib import build_records

        if not args.records_dir:
            raise SystemExit("--only-build-records needs --records-dir")
        config = pipeline_config(args)
        built = build_records(args.records_dir, config.data.name, int(config.data.image_size), args.records)
        print(f"{built} records of {config.data.name} in {args.records_dir}")
        return 0
    results = run_all(args)
    out = pathlib.Path(args.out or default_out())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))
    print(f"\nwritten: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
