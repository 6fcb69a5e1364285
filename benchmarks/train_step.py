"""Images/s of the compiled train step of a config, compile time printed apart.

  python benchmarks/train_step.py --config configs/barlow.py --config.model.arch=resnet50 \
      --config.data.image_size=224 --config.batch_size=16 --config.method_kwargs.projector='(8192,8192,8192)'

Frames are random uint8 of the config's image size (the input pipeline is measured by its own benchmark); the
step includes the on-device augmentations, forward, backward and the optimiser update. One image = two views.
"""

from __future__ import annotations

import json
import resource

import jax
from absl import app, flags
from benchlib import prepare_step, time_step
from ml_collections import config_flags

from fetalssl_jax.runtime.sharding import enable_compilation_cache

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file: path.py[:preset].")
_STEPS = flags.DEFINE_integer("steps", 10, "Timed steps (after one warm-up step).")
_CACHE = flags.DEFINE_bool("cache", False, "Use the persistent compilation cache (off: measure a cold compile).")


def benchmark(config, steps: int) -> dict:
    """Compile time, seconds per step and images/s of `config`'s train step on all local devices."""
    step_fn, state, batch = prepare_step(config)
    timed = time_step(step_fn, state, batch, steps)
    step_s = timed["step_s"]
    return {
        "arch": config.model.arch,
        "width": config.model.width,
        "image_size": config.data.image_size,
        "batch_size": config.batch_size,
        "projector": list(config.method_kwargs.get("projector", [])),
        "dtype": config.model.dtype,
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "compile_s": round(timed["compile_s"], 2),
        "step_s": round(step_s, 4),
        "images_per_s": round(config.batch_size / step_s, 2),
        "views_per_s": round(2 * config.batch_size / step_s, 2),
        "step_gflops": round(timed["flops"] / 1e9, 2),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "loss": float(timed["metrics"]["loss"]),
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
