"""What the benchmarks share: a config's train step made ready to time, and its honest timing on an
asynchronous device. Imported by the scripts beside it (`python benchmarks/<script>.py` puts this folder on the
path)."""

from __future__ import annotations

import dataclasses
import math
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

from fetalssl_jax.data.pipeline import device_batches
from fetalssl_jax.data.tfds_source import RecordDataset
from fetalssl_jax.methods import get_method
from fetalssl_jax.runtime.sharding import batch_sharding, make_mesh
from fetalssl_jax.train.optim import make_optimizer
from fetalssl_jax.train.step import init_state, make_train_step


def prepare_step(config) -> tuple:
    """(jitted step, state, batch) of `config`'s pretraining train step on all local devices, with random uint8
    frames of the config's image size (two views of each made by the step's own augmentations)."""
    method = get_method(config.method)(config)
    optimizer = make_optimizer(config.optim, config.batch_size, steps_per_epoch=100, total_steps=100_000)
    mesh = make_mesh()
    size = config.data.image_size
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (config.batch_size, method.frames_per_example, size, size, 1), dtype=np.uint8)
    batch = {"frames": jax.make_array_from_process_local_data(batch_sharding(mesh), frames)}
    state = init_state(method, optimizer, config.seed, batch["frames"], mesh)
    return make_train_step(method, optimizer, mesh), state, batch


def time_step(step_fn, state, batch, steps: int, repeats: int = 1, warmup: int = 1) -> dict:
    """Compiles `step_fn` (timed), runs `warmup` steps, then `repeats` windows of `steps` steps, each ended by
    block_until_ready on the state and metrics (the device runs asynchronously). Returns compile_s, the median
    window's step_s, every window's, XLA's FLOPs of one step (`cost_analysis`), its memory plan and the last
    metrics and state."""
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    for _ in range(warmup):
        state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    windows = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        windows.append((time.perf_counter() - start) / steps)
    cost = compiled.cost_analysis()
    cost = (cost[0] if isinstance(cost, list) else cost) or {}
    memory = compiled.memory_analysis()
    plan = None if memory is None else (memory.argument_size_in_bytes + memory.output_size_in_bytes
                                        + memory.temp_size_in_bytes - memory.alias_size_in_bytes)  # fmt: skip
    return {
        "compile_s": compile_s, "step_s": statistics.median(windows), "window_step_s": windows,
        "flops": float(cost.get("flops", 0.0)), "compiled_memory_bytes": plan, "metrics": metrics, "state": state,
        "compiled": compiled,
    }  # fmt: skip


def _batches(config, dataset, prefetch: int, threads: int | None = None):
    """The training loop's device batches of `config` over `dataset` (`threads` reader threads for records)."""
    from fetalssl_jax.train.loop import make_sampler  # here: the step benchmarks do without the loop's imports

    if threads is not None and isinstance(dataset, RecordDataset):
        dataset = dataclasses.replace(dataset, num_threads=threads)
    sampler = make_sampler(config, get_method(config.method)(config), dataset)
    return device_batches(sampler, 0, batch_sharding(make_mesh()), prefetch)


def build_records(data_dir: str, name: str, image_size: int, records: int) -> int:
    """Builds the TFDS dataset `name` ('fetal_us_video/<config>': about `records` single generated frames at
    `image_size`, all in 'train') with the project's builder in `data_dir`, unless it is there; returns the number
    of records."""
    repo = pathlib.Path(__file__).resolve().parents[1]
    if str(repo / "data_builders") not in sys.path:
        sys.path.insert(0, str(repo / "data_builders"))
    from fetal_us_video.fetal_us_video_dataset_builder import FetalUsVideo, FetalUsVideoConfig

    config = FetalUsVideoConfig(name=name.split("/")[1], synthetic=True, image_size=image_size, record="frames",
                                synthetic_videos=max(2, math.ceil(records / 32)), synthetic_frames=32,
                                validation_fraction=0.0)  # fmt: skip
    builder = FetalUsVideo(config=config, data_dir=data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare()
    return int(builder.info.splits["train"].num_examples)


def pipeline_rate(config, dataset, batches: int, threads: int | None = None, prefetch: int | None = None) -> dict:
    """Records/s of the training input pipeline over `dataset`: `config`'s sampler, `threads` reader threads for
    records, `device_batches` with `prefetch` (default: the config's), timed from the pipeline's start to the last
    batch on the devices, so that no batch made before the clock started counts."""
    start = time.perf_counter()
    stream = _batches(config, dataset, config.data.prefetch if prefetch is None else prefetch, threads)
    try:
        for _ in range(batches):
            batch = next(stream)
        jax.block_until_ready(batch)
        seconds = time.perf_counter() - start
    finally:
        stream.close()
    shape = batch["frames"].shape
    return {
        "batch_shape": list(shape), "records_per_s": batches * shape[0] / seconds,
        "frames_per_s": batches * shape[0] * shape[1] / seconds, "batch_ms": 1000 * seconds / batches,
    }  # fmt: skip


def fed_step_time(config, dataset, compiled, state, steps: int, warmup: int) -> dict:
    """Seconds per step of `compiled` fed by the training input pipeline (prefetch thread as configured), and the
    fraction of that time the host spent waiting for the next batch."""
    stream = _batches(config, dataset, config.data.prefetch)
    try:
        for _ in range(warmup):
            state, metrics = compiled(state, next(stream))
        jax.block_until_ready((state, metrics))
        blocked, start = 0.0, time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            batch = next(stream)
            blocked += time.perf_counter() - t
            state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        total = time.perf_counter() - start
    finally:
        stream.close()
    return {"step_s": total / steps, "host_blocked_fraction": blocked / total}
