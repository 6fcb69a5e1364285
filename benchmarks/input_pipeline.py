"""Records/s from a built TFDS dataset to device batches, to set beside benchmarks/train_step.py's images/s.

  tfds build data_builders/fetal_us_video --config synthetic --data_dir /tmp/tfds
  python benchmarks/input_pipeline.py --config configs/barlow.py --data_dir /tmp/tfds \\
      --name fetal_us_video/synthetic --config.data.max_gap=2
  python benchmarks/train_step.py --config configs/barlow.py

Measures exactly what training runs: RecordSampler (epoch-shuffled random record indices), ArrayRecord reads and
PNG decoding on a thread pool, and `device_batches` (prefetch thread + make_array_from_process_local_data), with
no train step consuming the batches. One record = one example (a pair: two frames) = one image of train_step.py.
The pipeline keeps up when records/s >= the train step's images/s.
"""

from __future__ import annotations

import json
import time

import jax
from absl import app, flags
from ml_collections import config_flags

from fetalssl_jax.config_lib import set_by_path
from fetalssl_jax.data import sources
from fetalssl_jax.data.pipeline import device_batches
from fetalssl_jax.methods import get_method
from fetalssl_jax.runtime.sharding import batch_sharding, make_mesh
from fetalssl_jax.train.loop import make_sampler

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file: path.py[:preset].")
_NAME = flags.DEFINE_string("name", "fetal_us_video/synthetic", "Built TFDS dataset.")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Where it was built ('': TFDS's default).")
_STEPS = flags.DEFINE_integer("steps", 30, "Timed batches (after 2 warm-up batches).")


def benchmark(config, steps: int) -> dict:
    """Records/s and batches/s of the TFDS input pipeline of `config`, on all local devices."""
    method = get_method(config.method)(config)
    dataset = sources.pretraining_frames(config, method.example_mode(config))
    sampler = make_sampler(config, method, dataset, jax.process_index(), jax.process_count())
    sharding = batch_sharding(make_mesh())
    batches = device_batches(sampler, 0, sharding, config.data.prefetch)
    for _ in range(2):
        jax.block_until_ready(next(batches))
    start = time.perf_counter()
    for _ in range(steps):
        batch = next(batches)
    jax.block_until_ready(batch)
    seconds = time.perf_counter() - start
    batches.close()
    shape = batch["frames"].shape
    return {
        "dataset": config.data.name,
        "records": len(dataset),
        "example_mode": method.example_mode(config),
        "batch_shape": list(shape),
        "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}",
        "records_per_s": round(steps * shape[0] / seconds, 1),
        "frames_per_s": round(steps * shape[0] * shape[1] / seconds, 1),
        "batch_ms": round(1000 * seconds / steps, 2),
    }


def main(argv: list[str]) -> None:
    del argv  # parsed by app.run
    config = _CONFIG.value
    for key, value in (("data.source", "tfds"), ("data.name", _NAME.value), ("data.data_dir", _DATA_DIR.value)):
        set_by_path(config, key, value)
    print(json.dumps(benchmark(config, _STEPS.value), indent=2))


if __name__ == "__main__":
    app.run(main)
