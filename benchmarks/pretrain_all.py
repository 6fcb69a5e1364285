"""Pretrains every method at equal steps on the embedded data and prints one table.

  python benchmarks/pretrain_all.py --steps 240 [--preset default] [--workdir runs/all] [--methods barlow,simclr]

Columns: final loss (mean of the last 10 steps), kNN and linear-probe macro-F1 of the frozen backbone on the
labelled test patients, training images/s (median over the run, compile excluded); random init as a row.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.train.loop import train
from fetalssl_jax.train.monitor import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIGS = ["barlow", "vicreg", "simclr", "moco", "byol", "autoencoder", "inpaint", "reorder"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=240)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--workdir", default="workdirs/pretrain_all")
    parser.add_argument("--methods", default=",".join(CONFIGS))
    args = parser.parse_args()

    rows, random_row = [], None
    for name in args.methods.split(","):
        config = load_config(f"{REPO / 'configs' / name}.py:{args.preset}")
        set_by_path(config, "num_steps", args.steps)
        set_by_path(config, "progress_bar", False)
        set_by_path(config, "eval.compare_random_init", random_row is None)
        start = time.perf_counter()
        result = train(config, pathlib.Path(args.workdir) / name)
        wall = time.perf_counter() - start
        records = read_metrics(result.workdir)
        speed = float(np.median([r["images_per_s"] for r in records[1:]]))
        for row_name, r in result.evaluation.items():
            if row_name == "random init":
                random_row = ("random init", float("nan"), r.knn["macro_f1"], r.linear_probe["macro_f1"], float("nan"))
            else:
                loss = float(np.mean([r_["loss"] for r_ in records[-10:]]))
                rows.append((config.method, loss, r.knn["macro_f1"], r.linear_probe["macro_f1"], speed))
        print(json.dumps({"method": config.method, "wall_s": round(wall, 1), "images_per_s": round(speed, 1)}))

    print(f"\n{args.steps} steps, preset {args.preset!r}:\n")
    print("| init | final loss | kNN macro-F1 | linear macro-F1 | images/s |")
    print("|---|---:|---:|---:|---:|")
    for name, loss, knn, probe, speed in [*rows, random_row]:
        print(f"| {name} | {loss:.4g} | {knn:.3f} | {probe:.3f} | {speed:.0f} |")


if __name__ == "__main__":
    from fetalssl_jax.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as `python -m fetalssl_jax.main` does
    main()
