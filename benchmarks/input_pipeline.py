"""Images/s per host core of the training input pipeline, and the host cores an accelerator's step rate needs.

  python benchmarks/input_pipeline.py                           # 64 and 224 px, TFDS records and in memory: a table
  python benchmarks/input_pipeline.py --target_views_per_s=4000 # and the cores that feed 4,000 views/s (the default)
  python benchmarks/input_pipeline.py --config configs/barlow.py --name fetal_us_video/synthetic \\
      --data_dir ~/tensorflow_datasets --config.data.max_gap=2  # records/s of a built dataset on all cores

The table: for each size, TFDS records built in a temp dir by the project's builder (single frames, PNG) and the
embedded generated frames in memory, each measured in a subprocess pinned to one core (it and every thread it
starts), with one reader thread: what one core does. The pipeline scales over cores with its reader threads
(`RecordDataset.num_threads`), so the cores a step rate needs are that rate over the one-core rate. Stages, each the
training pipeline's own code, each timed over `--batches` batches of `--batch` (one example: one frame, which the
step makes two views of):

  decode          the batch's records read by index and decoded (`RecordDataset.read`: ArrayRecord, PNG), or its
                  frames gathered from memory
  host slice      this host's slice of the global batch as training makes it (`sampler.batch(step)`: the epoch's
                  shuffled indices, the read, the stack); per image the same for any number of hosts
  device batches  `device_batches`: the slice joined into a global array on the device by the prefetch thread,
                  timed from the pipeline's start to the last batch on the device

With `--name`, the built dataset's records/s through `device_batches` on all cores, as before.
"""

from __future__ import annotations

import json
import math
import pathlib
import subprocess
import sys
import tempfile
import time

from absl import app, flags
from ml_collections import config_flags

REPO_CONFIG = str(pathlib.Path(__file__).resolve().parents[1] / "configs" / "barlow.py")
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file: path.py[:preset].")
_NAME = flags.DEFINE_string("name", "", "A built TFDS dataset to measure on all cores ('': the one-core table).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "Where it was built ('': TFDS's default).")
_STEPS = flags.DEFINE_integer("steps", 30, "With --name: timed batches.")
_SIZES = flags.DEFINE_list("sizes", ["64", "224"], "Image sizes of the table.")
_RECORDS = flags.DEFINE_integer("records", 512, "Records (frames) to build at each size.")
_BATCH = flags.DEFINE_integer("batch", 128, "Images per batch (the host's slice).")
_BATCHES = flags.DEFINE_integer("batches", 8, "Timed batches per stage.")
_TARGET = flags.DEFINE_float("target_views_per_s", 4000.0, "Step rate to feed, in views/s (2 views per image).")
_WORKER = flags.DEFINE_string("worker", "", "Internal: one measurement, source:size:records_dir.")


def stage_config(base, source: str, size: int, records_dir: str, batch: int, records: int):
    """`base` at `size` reading `source` ('records': the temp dir's built frames; 'memory': generated frames)."""
    from fetalssl_jax.config_lib import set_by_path

    config = base.copy_and_resolve_references()
    values = {"data.image_size": size, "data.stored_size": size, "batch_size": batch, "data.max_gap": 0}
    if source == "records":
        values.update({"data.source": "tfds", "data.name": f"fetal_us_video/frames{size}"})
        values["data.data_dir"] = records_dir
    else:
        values.update({"data.num_videos": max(2, math.ceil(records / 32)), "data.frames_per_video": 32})
    for key, value in values.items():
        set_by_path(config, key, value)
    return config


def one_core_rates(config, batches: int) -> dict:
    """Images/s of each stage (module docstring) on this process's one core, one reader thread."""
    import dataclasses

    import jax
    from benchlib import pipeline_rate

    from fetalssl_jax.data import sources
    from fetalssl_jax.data.tfds_source import RecordDataset
    from fetalssl_jax.methods import get_method
    from fetalssl_jax.train.loop import make_sampler

    method = get_method(config.method)(config)
    dataset = sources.pretraining_frames(config, method.example_mode(config))
    if isinstance(dataset, RecordDataset):
        dataset = dataclasses.replace(dataset, num_threads=1)
        gather = dataset.read
    else:
        gather = lambda indices: dataset.frames[indices]  # noqa: E731
    sampler = make_sampler(config, method, dataset)

    def rate(make) -> float:
        make(0)  # opens what the first read opens
        start = time.perf_counter()
        for step in range(1, batches + 1):
            jax.block_until_ready(make(step))
        return batches * sampler.local_batch / (time.perf_counter() - start)

    return {
        "decode": rate(lambda s: gather(sampler.indices(s))),
        "host_slice": rate(sampler.batch),
        "device_batches": pipeline_rate(config, dataset, batches, threads=1)["records_per_s"],
    }


def run_pinned(source: str, size: int, records_dir: str) -> dict:
    """`one_core_rates` in a subprocess pinned to one core (hostinfo.pin_to_one_core)."""
    from hostinfo import pin_to_one_core

    cmd = [sys.executable, __file__, f"--worker={source}:{size}:{records_dir}", *_passed_flags()]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, preexec_fn=pin_to_one_core).stdout
    return json.loads(out.strip().splitlines()[-1])


def _passed_flags() -> list[str]:
    passed = [f"--{f.name}={f.serialize().split('=', 1)[1]}" for f in (_RECORDS, _BATCH, _BATCHES) if f.present]
    return passed + [a for a in sys.argv[1:] if a.startswith("--config")]


def table(args_sizes: list[int], target_views_per_s: float) -> dict:
    """The one-core table for every size and source; prints it and the cores `target_views_per_s` needs."""
    from benchlib import build_records
    from hostinfo import cpu_model

    rows = []
    with tempfile.TemporaryDirectory(prefix="fetalssl_pipeline_") as records_dir:
        for size in args_sizes:
            build_records(records_dir, f"fetal_us_video/frames{size}", size, _RECORDS.value)
            for source in ("records", "memory"):
                rows.append({"source": source, "size": size, **run_pinned(source, size, records_dir)})
    target_images = target_views_per_s / 2
    largest = max(r["size"] for r in rows)
    per_core = next(r["device_batches"] for r in rows if r["source"] == "records" and r["size"] == largest)
    print(f"one core of {cpu_model()}, batch {_BATCH.value}, {_BATCHES.value} batches per stage; images/s per core:")
    print("| source | px | decode | host slice | device batches |\n|---|---:|---:|---:|---:|")
    for r in rows:
        rates = " | ".join(f"{r[stage]:.0f}" for stage in ("decode", "host_slice", "device_batches"))
        print(f"| {r['source']} | {r['size']} | {rates} |")
    cores = math.ceil(target_images / per_core)
    print(f"\n{target_views_per_s:.0f} views/s = {target_images:.0f} images/s from {largest} px records needs {cores} "
          f"host core(s) at {per_core:.0f} images/s per core; 1/16 of it is {target_images / 16:.0f} images/s per "
          f"core: {'met' if per_core >= target_images / 16 else 'NOT met'}.")  # fmt: skip
    return {"rows": rows, "target_images_per_s": target_images, "cores_needed": cores}


def built_dataset(config, steps: int) -> dict:
    """Records/s and batches/s of a built TFDS dataset through the pipeline of `config`, on all local devices."""
    import jax
    from benchlib import pipeline_rate

    from fetalssl_jax.data import sources
    from fetalssl_jax.methods import get_method

    method = get_method(config.method)(config)
    dataset = sources.pretraining_frames(config, method.example_mode(config))
    rate = pipeline_rate(config, dataset, steps)
    return {"dataset": config.data.name, "records": len(dataset), "example_mode": method.example_mode(config),
            "devices": f"{jax.device_count()} x {jax.devices()[0].device_kind}", **rate}  # fmt: skip


def main(argv: list[str]) -> None:
    from fetalssl_jax.config_lib import load_config, set_by_path

    del argv  # parsed by app.run
    config = _CONFIG.value or load_config(REPO_CONFIG)
    if _WORKER.value:
        source, size, records_dir = _WORKER.value.split(":", 2)
        config = stage_config(config, source, int(size), records_dir, _BATCH.value, _RECORDS.value)
        print(json.dumps(one_core_rates(config, _BATCHES.value)))
    elif _NAME.value:
        for key, value in (("data.source", "tfds"), ("data.name", _NAME.value), ("data.data_dir", _DATA_DIR.value)):
            set_by_path(config, key, value)
        print(json.dumps(built_dataset(config, _STEPS.value), indent=2))
    else:
        print(json.dumps(table([int(s) for s in _SIZES.value], _TARGET.value)))


if __name__ == "__main__":
    app.run(main)
