"""The paper's experiment grid: initialisations x label fractions x {fine-tune, linear probe} x seeds.

One command pretrains every initialisation that is given as a pretraining config (once, resumable), then trains
one classifier per cell, skipping cells that already have results, and writes ``results.csv``, ``results.md``
(mean +/- std over seeds) and ``macro_f1_vs_label_fraction.png`` (the paper's main figure) into the workdir.

An entry of ``config.inits`` is ``"name=spec"`` (or a bare spec, named after it), where spec is

- ``random``;
- a pretraining config ``path.py[:preset[,key=value...]]``: pretrained into ``<workdir>/pretrain/<name>``;
- a pretraining workdir, an exported backbone directory, or a ``.safetensors``/``.npz`` weights file.
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import pathlib
import re
from collections.abc import Sequence
from typing import Any

import ml_collections
import numpy as np

from fetalssl_jax.config_lib import load_config
from fetalssl_jax.data import sources
from fetalssl_jax.downstream.classify import resolve_class_names, run_classification
from fetalssl_jax.downstream.labels import label_subset

log = logging.getLogger("fetalssl_jax")

METRICS = ("macro_f1", "balanced_accuracy", "accuracy")
# `name=` is a name only when it looks like one: "barlow.py:tiny,num_steps=4" is a bare spec, not name "barlow.py:..."
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]*")


@dataclasses.dataclass(frozen=True)
class InitSpec:
    """One row of the grid: its name, and either a pretraining config or a backbone spec."""

    name: str
    spec: str

    @property
    def is_pretraining_config(self) -> bool:
        return self.spec.partition(":")[0].endswith(".py")


def parse_inits(entries: Sequence[str]) -> list[InitSpec]:
    """`name=spec` strings (or bare specs) -> InitSpecs; names must be unique.

    An entry is `name=spec` only when the part before the first '=' is a plain name (letters, digits, `_.+-`, not
    ending in .py); otherwise the whole entry is a spec (e.g. `barlow.py:tiny,num_steps=4`, `/runs/a=b`), named
    after its file or directory.
    """
    inits = []
    for entry in entries:
        entry = str(entry).strip()
        name, sep, spec = entry.partition("=")
        name = name.strip()
        if not sep or not _NAME.fullmatch(name) or name.endswith(".py"):
            spec = entry
            name = "random" if spec == "random" else pathlib.Path(spec.partition(":")[0]).stem
        inits.append(InitSpec(name, spec.strip()))
    names = [i.name for i in inits]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"config.inits names {duplicates} more than once; give each entry a unique name=")
    if not inits:
        raise ValueError("config.inits is empty")
    return inits


def pretrain_if_needed(init: InitSpec, workdir: pathlib.Path) -> str:
    """Runs (or resumes) the pretraining of a config init; returns the backbone spec for the classifiers."""
    if not init.is_pretraining_config:
        return init.spec
    run_dir = workdir / "pretrain" / init.name
    if (run_dir / "backbone" / "backbone.json").is_file():
        return str(run_dir)
    from fetalssl_jax.train.loop import train  # the pretraining stack is only needed here

    log.info("pretraining %s with %s in %s", init.name, init.spec, run_dir)
    result = train(load_config(init.spec), run_dir)
    if result.status != "finished":
        raise RuntimeError(f"pretraining {init.name} stopped at step {result.step} ({result.status}); run again")
    return str(run_dir)


def cell_dir(workdir: pathlib.Path, init: str, mode: str, fraction: float, seed: int) -> pathlib.Path:
    """Where one cell's classifier run lives."""
    return workdir / "cells" / init / mode / f"{100 * fraction:g}pct" / f"seed{seed}"


def _check_fractions(config: ml_collections.ConfigDict, splits: dict[str, Any]) -> None:
    """Fails before any training if a label fraction leaves a class without a sample for some seed."""
    names = resolve_class_names(config.classify, splits)
    for fraction in config.label_fractions:
        for seed in config.seeds:
            label_subset(splits["train"].labels, fraction, seed, names)


def run_grid(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    """Runs every cell that is not finished yet and writes the results table and plot; returns the rows."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    for mode in config.modes:
        if mode not in ("finetune", "linear"):
            raise ValueError(f"config.modes has {mode!r}; choose from 'finetune' and 'linear'")
    inits = parse_inits(config.inits)
    splits = sources.labelled_splits(config.classify)  # every cell classifies the same labelled data
    _check_fractions(config, splits)
    backbones = {init.name: pretrain_if_needed(init, workdir) for init in inits}

    rows = []
    cells = [
        (init.name, mode, fraction, seed)
        for init in inits
        for mode in config.modes
        for fraction in config.label_fractions
        for seed in config.seeds
    ]
    for k, (name, mode, fraction, seed) in enumerate(cells):
        cell_config = ml_collections.ConfigDict(config.classify.to_dict())
        cell_config.update({"init": backbones[name], "mode": mode, "label_fraction": float(fraction), "seed": seed})
        cell_config.progress_bar = False
        directory = cell_dir(workdir, name, mode, fraction, seed)
        finished = (directory / "results.json").is_file()
        results = run_classification(cell_config, directory, splits=splits)
        rows.append({
            "init": name, "mode": mode, "label_fraction": float(fraction), "seed": seed,
            **{m: results["test"][m] for m in METRICS}, "best_epoch": results["best_epoch"],
            "num_train_images": results["num_train_images"], "seconds": results["seconds"],
        })  # fmt: skip
        log.info(
            "[%d/%d] %s %s %g%% seed %d: test macro-F1 %.3f%s", k + 1, len(cells), name, mode, 100 * fraction,
            seed, results["test"]["macro_f1"], " (done before)" if finished else "",
        )  # fmt: skip
    write_results(rows, workdir)
    return rows


def summarise(rows: Sequence[dict[str, Any]], metric: str = "macro_f1") -> dict[tuple[str, str, float], tuple]:
    """(init, mode, fraction) -> (mean, std, n) of `metric` over seeds (std with ddof=1 when n > 1, else 0)."""
    groups: dict[tuple[str, str, float], list[float]] = {}
    for row in rows:
        groups.setdefault((row["init"], row["mode"], row["label_fraction"]), []).append(row[metric])
    return {
        key: (float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, len(v)) for key, v in groups.items()
    }


def markdown_table(rows: Sequence[dict[str, Any]], metric: str = "macro_f1") -> str:
    """One table per mode: inits x label fractions, mean +/- std over seeds, the best mean of a column in bold."""
    summary = summarise(rows, metric)
    inits = list(dict.fromkeys(r["init"] for r in rows))
    fractions = sorted({r["label_fraction"] for r in rows}, reverse=True)
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        seeds = max(n for (_, m, _), (_, _, n) in summary.items() if m == mode)
        out.append(f"**{mode}**: test {metric.replace('_', '-')} (mean ± std over {seeds} seeds)\n")
        out.append("| init | " + " | ".join(f"{100 * f:g} % labels" for f in fractions) + " |")
        out.append("|---|" + "---:|" * len(fractions))
        best = {f: max(summary[(i, mode, f)][0] for i in inits if (i, mode, f) in summary) for f in fractions}
        for init in inits:
            cells = []
            for f in fractions:
                if (init, mode, f) not in summary:
                    cells.append("-")
                    continue
                mean, std, _ = summary[(init, mode, f)]
                text = f"{mean:.3f} ± {std:.3f}"
                cells.append(f"**{text}**" if mean == best[f] else text)
            out.append(f"| {init} | " + " | ".join(cells) + " |")
        winners = {f: [i for i in inits if summary.get((i, mode, f), (None,))[0] == best[f]] for f in fractions}
        out.append("")
        out.append("best: " + "; ".join(f"{100 * f:g} %: {', '.join(w)}" for f, w in winners.items()))
        out.append("")
    return "\n".join(out)


def plot_results(rows: Sequence[dict[str, Any]], path: pathlib.Path, metric: str = "macro_f1") -> None:
    """Macro-F1 against label fraction (log axis), one line per init with a +/- std band, one panel per mode."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows, metric)
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    inits = list(dict.fromkeys(r["init"] for r in rows))
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes, strict=True):
        for init in inits:
            keys = sorted(k for k in summary if k[0] == init and k[1] == mode)
            if not keys:
                continue
            x = np.array([100 * k[2] for k in keys])
            mean = np.array([summary[k][0] for k in keys])
            std = np.array([summary[k][1] for k in keys])
            style = "--" if init == "random" else "-"
            (line,) = ax.plot(x, mean, style, marker="o", label=init)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ax.set_xlabel("labelled training images (%)")
        ax.set_title("fine-tuned" if mode == "finetune" else "linear probe (frozen backbone)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {metric.replace('_', '-')}")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)


def write_results(rows: Sequence[dict[str, Any]], workdir: pathlib.Path) -> None:
    """results.csv (one row per cell), results.md and the plot."""
    tmp = workdir / "results.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(workdir / "results.csv")
    table = markdown_table(rows)
    (workdir / "results.md.tmp").write_text(table)
    (workdir / "results.md.tmp").replace(workdir / "results.md")
    plot_results(rows, workdir / "macro_f1_vs_label_fraction.png")
    print(f"\n{table}")
