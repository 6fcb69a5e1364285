"""Images/s of the compiled train step of a config, compile time printed apart.

  python benchmarks/train_step.py --config configs/barlow.py --config.model.arch=resnet50 \
      --config.data.image_size=224 --config.batch_size=16 --config.method_kwargs.projector='(8192,8192,8192)'

Frames are random uint8 of the config's image size (the input pipeline is measured by its own benchmark); the
step includes the on-device augmentations, forward, backward and the optimiser update. One image = two views.
"""

from __future__ import annotations

import json
import resource
import time

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from fetalssl_jax.methods import get_method
from fetalssl_jax.runtime.sharding import batch_sharding, enable_compilation_cache, make_mesh
from fetalssl_jax.train.optim import make_optimizer
from fetalssl_jax.train.step import init_state, make_train_step

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file: path.py[:preset].")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one warm-up step).")
_CACHE = flags.DEFINE_bool("cache", False, "Use the persistent compilation cache (off: measure a cold compile).")


def benchmark(config, steps: int) -> dict:
    """Compile time, seconds per step and images/s of `config`'s train step on all local devices."""
    method = get_method(config.method)(config)
    optimizer = make_optimizer(config.optim, config.batch_size, steps_per_epoch=100, total_steps=100_000)
    mesh = make_mesh()
    sharding = batch_sharding(mesh)
    size = config.data.image_size
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (config.batch_size, method.frames_per_example, size, size, 1), dtype=np.uint8)
    batch = {"frames": jax.make_array_from_process_local_data(sharding, frames)}
    state = init_state(method, optimizer, config.seed, batch["frames"], mesh)
    step_fn = make_train_step(method, optimizer, mesh)

    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - start

    state, metrics = compiled(state, batch)  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    step_s = (time.perf_counter() - start) / steps
    flops = compiled.cost_analysis()
    flops = flops[0] if isinstance(flops, list) else flops
    return {
        "arch": config.model.arch,
        "width": config.model.width,
        "image_size": size,
        "batch_size": config.batch_size,
        "projector": list(config.method_kwargs.get("projector", [])),
        "dtype": config.model.dtype,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "compile_s": round(compile_s, 2),
        "step_s": round(step_s, 4),
        "images_per_s": round(config.batch_size / step_s, 2),
        "views_per_s": round(2 * config.batch_size / step_s, 2),
        "step_gflops": round(float((flops or {}).get("flops", 0.0)) / 1e9, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "loss": float(metrics["loss"]),
    }


def main(argv: list[str]) -> None:
    del argv  # parsed by app.run
    if _CACHE.value:
        enable_compilation_cache(_CONFIG.value.compilation_cache_dir)
    print(json.dumps(benchmark(_CONFIG.value, _STEPS.value), indent=2))


if __name__ == "__main__":
    from fetalssl_jax.runtime.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as `python -m fetalssl_jax.main` does
    app.run(main)
