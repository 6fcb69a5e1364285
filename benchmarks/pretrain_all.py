"""Pretrains every method at equal steps on the embedded data and prints one table with intervals.

  python benchmarks/pretrain_all.py --steps 480 [--preset default] [--workdir runs/all] [--methods barlow_twins,simclr]
  python benchmarks/pretrain_all.py --methods barlow_twins,byol --set data.max_gap=2   # temporal positives
  python benchmarks/pretrain_all.py --methods dino,mae,barlow_twins:vit,barlow_twins  # ViTs beside a ResNet

Every method runs its own config's preset for `--steps` steps (the budget is equal in optimiser steps and batch;
the reorder pretext sees 4-frame clips, so its images/s differ). Columns: final loss (mean of the last 10 steps),
relative weight change of the backbone's convolutions from initialisation, kNN macro-F1 (all labels) and the
logistic-regression probe with 10 labelled images per class over 20 label draws on test patients unseen in
training, each with its 95 % bootstrap interval, the paired difference of the probe to the torchvision random
init, training images/s and wall-clock seconds. The baselines (random init, untrained SSL start) are rows, one pair
per backbone. A method named as `method:preset` runs that preset of its config instead of `--preset` (e.g.
`barlow_twins:vit`, Barlow Twins on the ViT of the DINO and MAE defaults). A fresh `--workdir` per invocation: a
rerun resumes the finished runs and only re-evaluates.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np

from fetalssl_jax.config_lib import load_config, method_config_files, parse_value, set_by_path
from fetalssl_jax.eval.evaluator import SSL_START, random_init_name
from fetalssl_jax.methods import get_method
from fetalssl_jax.models.backbone import is_vit
from fetalssl_jax.train.loop import train
from fetalssl_jax.train.monitor import read_metrics

REPO = pathlib.Path(__file__).resolve().parents[1]
SHOTS = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=480)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--workdir", default="workdirs/pretrain_all")
    # found by each config's `method` key; a method that learns from another trained model (distillation) is no row
    configs = {m: file for m, file in method_config_files(REPO / "configs").items() if get_method(m).from_scratch}
    parser.add_argument("--methods", default=",".join(configs), help=f"comma-separated, of {sorted(configs)}")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    args = parser.parse_args()
    overrides = [item.partition("=")[::2] for item in args.set]

    rows, baselines = [], {}
    for entry in args.methods.split(","):
        name, _, preset = entry.partition(":")
        if name not in configs:
            parser.error(f"--methods: no config in configs/ trains {name!r}; choose from {sorted(configs)}")
        config = load_config(f"{configs[name]}:{preset or args.preset}")
        set_by_path(config, "num_steps", args.steps)
        set_by_path(config, "progress_bar", False)
        set_by_path(config, "eval.shots", (SHOTS,))
        for key, value in overrides:
            set_by_path(config, key, parse_value(value))
        start = time.perf_counter()
        result = train(config, pathlib.Path(args.workdir) / entry.replace(":", "_"))
        wall = time.perf_counter() - start
        records = read_metrics(result.workdir)
        speed = float(np.median([r["images_per_s"] for r in records[1:]]))
        change = next(r["weight_change/all"] for r in reversed(records) if "weight_change/all" in r)
        ev = result.evaluation
        row = next(iter(ev.knn))
        random_init = random_init_name(config.model)  # torchvision's init of a ResNet, timm's of a ViT
        diff = ev.few_label.differences[random_init][row][SHOTS]
        loss = float(np.mean([r["loss"] for r in records[-10:]]))
        backbone = _backbone(config.model)
        rows.append((entry, backbone, loss, change, ev.knn[row], ev.few_label.scores[row][SHOTS], diff, speed, wall))
        for base in (random_init, SSL_START):  # per backbone: ViT methods train other backbones than ResNet ones
            baselines.setdefault((base, backbone), (ev.knn[base], ev.few_label.scores[base][SHOTS]))
        print(json.dumps({"method": config.method, "wall_s": round(wall, 1), "images_per_s": round(speed, 1)}))

    settings = " ".join([f"preset {args.preset!r}", *args.set])
    print(f"\n{args.steps} steps, {settings}; macro-F1 [95 % interval] on test patients unseen in training:\n")
    print(
        f"| init | backbone | final loss | weight change | kNN (all labels) | probe {SHOTS}/class | "
        f"probe {SHOTS}/class - random init | images/s | seconds |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, backbone, loss, change, knn, probe, diff, speed, wall in rows:
        star = "*" if diff.excludes_zero else ""
        print(
            f"| {name} | {backbone} | {loss:.4g} | {100 * change:.0f} % | {knn} | {probe} | "
            f"{diff.mean:+.3f} [{diff.low:+.3f}, {diff.high:+.3f}]{star} | {speed:.0f} | {wall:.0f} |"
        )
    for (base, backbone), (knn, probe) in baselines.items():
        print(f"| {base} | {backbone} | | | {knn} | {probe} | | | |")
    print("\n* the interval of the paired difference excludes 0")


def _backbone(model) -> str:
    """A row's backbone as the table names it: `resnet18 w16`, `vit_micro/8`."""
    if is_vit(model.arch):
        return f"{model.arch}/{model.patch_size}"
    return f"{model.arch} w{model.width}"


if __name__ == "__main__":
    from fetalssl_jax.runtime.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as `python -m fetalssl_jax.main` does
    main()
