"""The paper's experiment grid: initialisations x label budgets x {fine-tune, linear probe} x seeds.

One command pretrains every initialisation that is given as a pretraining config (once, resumable), then trains
one classifier per cell, skipping cells that already have results, and writes ``results.csv`` (one row per cell),
``results.md`` and ``macro_f1_vs_label_fraction.png`` (the paper's main figure) into the workdir.

A label budget is `labels_per_class` images of every class or a fraction of the training split
(`label_fractions`). The seed picks the label subset (and the head init and augmentations), the same for every
init, so two inits are compared per seed: results.md reports each cell as the mean with a 95 % t-interval over
seeds, and the paired difference of every init to the baseline (random init) with its t-interval.

An entry of ``config.inits`` is ``"name=spec"`` (or a bare spec, named after it), where spec is

- ``random``;
- a pretraining config ``path.py[:preset[,key=value...]]``: pretrained into ``<workdir>/pretrain/<name>``, with the
  classification config's backbone (its identity keys: a ResNet's arch and width, a ViT's arch, patch size,
  registers and LayerScale; `pretraining_config`), so that every cell fine-tunes what was pretrained;
- a pretraining workdir, an exported backbone directory, a classification run, or a ``.safetensors``/``.npz``
  weights file (a ResNet's or a ViT's, `downstream/backbones.py`).
"""

from __future__ import annotations

import csv
import dataclasses
import logging
import math
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any

import ml_collections
import numpy as np
from scipy import stats

from fetalssl_jax import presets
from fetalssl_jax.config_lib import load_config
from fetalssl_jax.data import sources
from fetalssl_jax.downstream import classification
from fetalssl_jax.downstream.classification import resolve_class_names, run_classification
from fetalssl_jax.downstream.labels import budget_dirname, budget_name, choose_labels
from fetalssl_jax.downstream.report import save_figure
from fetalssl_jax.errors import RunStopped
from fetalssl_jax.eval.few_label import Interval
from fetalssl_jax.models.backbone import description
from fetalssl_jax.runtime.workdir import make_workdir
from fetalssl_jax.runtime.workdir_lock import exclusive_workdir
from fetalssl_jax.train import loop
from fetalssl_jax.train.fingerprint import ensure_resumable, fingerprint, stored_fingerprint
from fetalssl_jax.validation import MISSING, Checks, is_number, raise_if

log = logging.getLogger("fetalssl_jax")

METRICS = ("macro_f1", "balanced_accuracy", "accuracy")
METRIC_NAMES = {"macro_f1": "macro-F1", "balanced_accuracy": "balanced accuracy", "accuracy": "accuracy"}


# `name=` is a name only when it looks like one: "barlow.py:tiny,num_steps=4" is a bare spec, not a name
_INIT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]*")


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
        if not sep or not _INIT_NAME.fullmatch(name) or name.endswith(".py"):
            spec = entry
            name = "random" if spec == "random" else pathlib.Path(spec.partition(":")[0]).stem
        inits.append(InitSpec(name, spec.strip()))
    names = [i.name for i in inits]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"names {duplicates} more than once; give each entry a unique name=")
    return inits


def pretraining_config(init: InitSpec, model: ml_collections.ConfigDict | None) -> ml_collections.ConfigDict:
    """The pretraining config of a config init, with the backbone of `model` (the classification config's `model`;
    None: the init's own)."""
    config = load_config(init.spec)
    if model is not None:
        with config.unlocked():
            presets.set_backbone(config, description(model))
    return config


def problems(config: ml_collections.ConfigDict, prefix: str = "config") -> list[str]:
    """Every problem of a grid config (configs/paper_grid.py): its own keys, its `classify` config and the
    pretraining configs among its inits (with the classification config's backbone)."""
    c = Checks(config, prefix)
    classify = c.get("classify")
    model = None
    if isinstance(classify, ml_collections.ConfigDict) and len(classify):
        classify_problems = classification.problems(classify, f"{prefix}.classify")
        c.problems += classify_problems
        model = None if classify_problems else classify.model
    else:
        c.fail("classify", classify, "must be a configs/classify.py config")
    inits = c.get("inits")
    if not (isinstance(inits, Sequence) and not isinstance(inits, str) and len(inits)):
        c.fail("inits", inits, "must be a non-empty sequence of 'name=spec' entries")
    else:
        try:
            for i, init in enumerate(parse_inits(inits)):
                if init.is_pretraining_config:
                    where = f"{prefix}.inits[{i}] ({init.name}): config"
                    c.problems += loop.problems(pretraining_config(init, model), where)
        except ValueError as error:  # a duplicate name, a config file that does not load
            c.fail("inits", inits, str(error))
    c.integers("labels_per_class", 1, distinct=True, why="labelled images of every class")
    fractions = c.get("label_fractions")
    if fractions is not MISSING:
        ok = isinstance(fractions, Sequence) and not isinstance(fractions, str)
        if not (ok and all(is_number(f) and 0 < f <= 1 for f in fractions) and len(set(fractions)) == len(fractions)):
            c.fail("label_fractions", fractions, "must be a sequence of distinct fractions in (0, 1]")
    budgets = [c.get(k) for k in ("labels_per_class", "label_fractions")]
    if all(isinstance(b, Sequence) and not len(b) for b in budgets):
        c.fail("label_fractions", c.get("label_fractions"), "must give at least one budget (or labels_per_class)")
    c.integers("seeds", 0, non_empty=True, distinct=True)
    modes = c.get("modes")
    if not (isinstance(modes, Sequence) and not isinstance(modes, str) and len(modes)
            and all(m in classification.MODES for m in modes) and len(set(modes)) == len(modes)):  # fmt: skip
        allowed = ", ".join(map(repr, classification.MODES))
        c.fail("modes", modes, f"must be a non-empty sequence of distinct modes from {allowed}")
    return c.problems


def validate(config: ml_collections.ConfigDict) -> None:
    """Raises ConfigError listing every problem of a grid config."""
    raise_if(problems(config))


def pretrain_if_needed(init: InitSpec, workdir: pathlib.Path, model: ml_collections.ConfigDict | None = None) -> str:
    """Runs (or resumes) the pretraining of a config init, with the backbone of `model` (`pretraining_config`);
    returns the backbone spec for the classifiers. A finished pretraining is reused only if the same config made it
    (or extended, with `allow_extend`, if only its length changed)."""
    if not init.is_pretraining_config:
        return init.spec
    run_dir = workdir / "pretrain" / init.name
    config = pretraining_config(init, model)
    if (run_dir / "backbone" / "backbone.json").is_file():
        stored = stored_fingerprint(run_dir / "config.json", loop.COSMETIC_KEYS)
        wanted = fingerprint(config, loop.COSMETIC_KEYS)
        ensure_resumable(stored, wanted, bool(config.allow_extend), what=f"the finished pretraining of init "
                         f"{init.name!r} in {run_dir}", old_name="finished run", hint="use a new workdir")  # fmt: skip
        if stored == wanted:
            return str(run_dir)
    log.info("pretraining %s with %s in %s", init.name, init.spec, run_dir)
    result = loop.train(config, run_dir)
    if result.status != "finished":
        raise RunStopped(f"the grid stopped in the pretraining of {init.name} at step {result.step} ({result.status}: "
                         "SIGTERM or Ctrl-C), checkpoint saved; run the same command again to resume")  # fmt: skip
    return str(run_dir)


@dataclasses.dataclass(frozen=True)
class Budget:
    """One column of the grid: `labels_per_class` images of every class when > 0, else a fraction of the labels."""

    fraction: float = 1.0
    labels_per_class: int = 0

    @property
    def name(self) -> str:
        """'5/class' or '10 %' (table columns, results.csv)."""
        return budget_name(self.fraction, self.labels_per_class)

    @property
    def dirname(self) -> str:
        """'5perclass' or '10pct' (cell directories)."""
        return budget_dirname(self.fraction, self.labels_per_class)


def grid_budgets(config: ml_collections.ConfigDict) -> list[Budget]:
    """The budgets of `config`: every `labels_per_class`, then every `label_fractions`."""
    per_class = [Budget(1.0, int(k)) for k in config.labels_per_class]
    return per_class + [Budget(float(f), 0) for f in config.label_fractions]


def cell_dir(workdir: pathlib.Path, init: str, mode: str, budget: Budget, seed: int) -> pathlib.Path:
    """Where one cell's classifier run lives: cells/<init>/<mode>/<5perclass|10pct>/seed<k>."""
    return workdir / "cells" / init / mode / budget.dirname / f"seed{seed}"


def _check_budgets(config: ml_collections.ConfigDict, budgets: Sequence[Budget], splits: dict[str, Any]) -> None:
    """Fails before any training if a budget is impossible for some seed: more images per class than a class has,
    or a fraction that leaves a class without a sample."""
    names = resolve_class_names(config.classify, splits)
    for budget in budgets:
        for seed in config.seeds:
            choose_labels(splits["train"].labels, budget.fraction, budget.labels_per_class, seed, names)


@exclusive_workdir
def run_grid(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    """Runs every cell that is not finished yet and writes the results tables and plot; returns the rows.

    The config, its `classify` config and every pretraining config among its inits are validated first
    (ConfigError). A finished cell or pretraining run is reused only if the same config (up to cosmetic keys, see
    `train.fingerprint`) made it; otherwise WorkdirMismatchError names the differing keys."""
    validate(config)
    workdir = make_workdir(workdir)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2))
    inits = parse_inits(config.inits)
    budgets = grid_budgets(config)
    splits = sources.labelled_splits(config.classify)  # every cell classifies the same labelled data
    _check_budgets(config, budgets, splits)
    backbones = {init.name: pretrain_if_needed(init, workdir, config.classify.model) for init in inits}

    rows = []
    cells = [
        (init.name, mode, budget, seed)
        for init in inits
        for mode in config.modes
        for budget in budgets
        for seed in config.seeds
    ]
    for k, (name, mode, budget, seed) in enumerate(cells):
        cell_config = ml_collections.ConfigDict(config.classify.to_dict())
        cell_config.update({
            "init": backbones[name], "mode": mode, "label_fraction": budget.fraction,
            "labels_per_class": budget.labels_per_class, "seed": seed, "progress_bar": False,
        })  # fmt: skip
        directory = cell_dir(workdir, name, mode, budget, seed)
        finished = (directory / "results.json").is_file()
        # `init` is the backbone's path, which moves with the grid's workdir; the row's name identifies the init
        results = run_classification(cell_config, directory, splits=splits, ignore=("init",))
        if not results:
            raise RunStopped(f"the grid stopped in cell {directory.relative_to(workdir)} (SIGTERM or Ctrl-C), "
                             "checkpoint saved; run the same command again to resume")  # fmt: skip
        rows.append({
            "init": name, "mode": mode, "budget": budget.name, "label_fraction": budget.fraction,
            "labels_per_class": budget.labels_per_class, "seed": seed, **{m: results["test"][m] for m in METRICS},
            "num_train_images": results["num_train_images"], "num_steps": results["num_steps"],
            "best_step": results["best_step"], "seconds": results["seconds"],
        })  # fmt: skip
        log.info(
            "[%d/%d] %s %s %s seed %d: test macro-F1 %.3f%s", k + 1, len(cells), name, mode, budget.name, seed,
            results["test"]["macro_f1"], " (done before)" if finished else "",
        )  # fmt: skip
    write_results(rows, workdir, baseline=config.baseline)
    return rows


# ---- statistics over seeds ---------------------------------------------------------------------------------------
def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean with the t-interval mean ± t_{(1+confidence)/2, n-1} · sd / √n (sd with ddof=1); nan ends if n < 2."""
    values = np.asarray(values, np.float64)
    mean = float(np.mean(values))
    if len(values) < 2:
        return Interval(mean, math.nan, math.nan)
    half = float(stats.t.ppf((1 + confidence) / 2, len(values) - 1) * np.std(values, ddof=1) / np.sqrt(len(values)))
    return Interval(mean, mean - half, mean + half)


CellKey = tuple[str, str, str]  # (init, mode, budget name)


def scores_by_seed(rows: Sequence[dict[str, Any]], metric: str = "macro_f1") -> dict[CellKey, dict[int, float]]:
    """(init, mode, budget) -> seed -> `metric`."""
    out: dict[CellKey, dict[int, float]] = {}
    for row in rows:
        out.setdefault((row["init"], row["mode"], row["budget"]), {})[int(row["seed"])] = float(row[metric])
    return out


def summarise(rows: Sequence[dict[str, Any]], metric: str = "macro_f1") -> dict[CellKey, tuple[Interval, int]]:
    """(init, mode, budget) -> (mean with its 95 % t-interval over seeds, number of seeds)."""
    return {key: (t_interval(list(v.values())), len(v)) for key, v in scores_by_seed(rows, metric).items()}


def paired_difference(a: dict[int, float], b: dict[int, float]) -> tuple[Interval, int]:
    """Mean of a[seed] - b[seed] over the seeds both have, with its 95 % t-interval; and how many seeds."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return Interval(math.nan, math.nan, math.nan), 0
    return t_interval([a[s] - b[s] for s in seeds]), len(seeds)


def paired_differences(
    rows: Sequence[dict[str, Any]], baseline: str = "random", metric: str = "macro_f1"
) -> dict[CellKey, tuple[Interval, int]]:
    """(init, mode, budget) -> paired difference of `metric` to the `baseline` init in the same mode and budget
    (same seed = same label subset), for every init but the baseline."""
    scores = scores_by_seed(rows, metric)
    return {
        (init, mode, budget): paired_difference(v, scores[(baseline, mode, budget)])
        for (init, mode, budget), v in scores.items()
        if init != baseline and (baseline, mode, budget) in scores
    }


@dataclasses.dataclass(frozen=True)
class Winner:
    """The init with the best mean in one (mode, budget) column, paired-compared with the baseline and the
    runner-up (the second-best mean)."""

    init: str
    score: Interval
    vs_baseline: tuple[Interval, int] | None  # None: the winner is the baseline, or there is none
    runner_up: str | None
    vs_runner_up: tuple[Interval, int] | None


def column_winner(
    rows: Sequence[dict[str, Any]], mode: str, budget: str, baseline: str = "random", metric: str = "macro_f1"
) -> Winner:
    """The best mean of a column (the first init in row order on a tie) and its paired comparisons."""
    scores = scores_by_seed(rows, metric)
    inits = [i for i in dict.fromkeys(r["init"] for r in rows) if (i, mode, budget) in scores]
    means = {i: float(np.mean(list(scores[(i, mode, budget)].values()))) for i in inits}
    ranked = sorted(inits, key=lambda i: -means[i])  # stable: row order breaks ties
    best = ranked[0]
    mine = scores[(best, mode, budget)]
    vs_baseline = None
    if best != baseline and (baseline, mode, budget) in scores:
        vs_baseline = paired_difference(mine, scores[(baseline, mode, budget)])
    runner_up = ranked[1] if len(ranked) > 1 else None
    vs_runner_up = paired_difference(mine, scores[(runner_up, mode, budget)]) if runner_up else None
    return Winner(best, t_interval(list(mine.values())), vs_baseline, runner_up, vs_runner_up)


# ---- results.md, results.csv and the plot -------------------------------------------------------------------------
def _budgets_in_order(rows: Sequence[dict[str, Any]]) -> list[str]:
    """Budget names from the fewest labelled images to the most (row order on ties)."""
    sizes: dict[str, list[float]] = {}
    for row in rows:
        sizes.setdefault(row["budget"], []).append(float(row.get("num_train_images", 0)))
    return sorted(sizes, key=lambda b: float(np.mean(sizes[b])))


def _cell_text(interval: Interval, n: int, spec: str = ".3f") -> str:
    if n < 2:
        return f"{interval.mean:{spec}} (1 seed)" if n == 1 else "-"
    return f"{interval:{spec}}"


def _verdict(difference: tuple[Interval, int]) -> str:
    interval, n = difference
    if n < 2:
        return f"{interval.mean:+.3f} ({n} paired seed{'s' if n != 1 else ''}: no interval)"
    if interval.excludes_zero:
        word = "significantly better" if interval.low > 0 else "significantly worse"
    else:
        word = "not significantly different"
    return f"{interval:+.3f} ({word}, {n} paired seeds)"


def _seed_range(counts: Sequence[int]) -> str:
    low, high = min(counts), max(counts)
    return f"{low} seeds" if low == high else f"{low}-{high} seeds"


def markdown_table(rows: Sequence[dict[str, Any]], metric: str = "macro_f1", baseline: str = "random") -> str:
    """Per mode: inits x budgets as mean [95 % t-interval] over seeds (best mean in bold); the paired difference
    of every init to `baseline` with its t-interval (* where it excludes zero); and the winner of each column."""
    summary = summarise(rows, metric)
    differences = paired_differences(rows, baseline, metric)
    inits = list(dict.fromkeys(r["init"] for r in rows))
    budgets = _budgets_in_order(rows)
    label = METRIC_NAMES.get(metric, metric)
    out = []
    for mode in dict.fromkeys(r["mode"] for r in rows):
        present = {(i, b): summary[(i, mode, b)] for i in inits for b in budgets if (i, mode, b) in summary}
        best = {b: max(s.mean for (i, bb), (s, _) in present.items() if bb == b) for b in budgets
                if any(bb == b for _, bb in present)}  # fmt: skip
        out += _means_table(mode, label, inits, budgets, present, best)
        out += _differences_table(mode, label, inits, budgets, differences, baseline)
        out += _column_winners(rows, mode, [b for b in budgets if b in best], baseline, metric)
    return "\n".join(out)


def _means_table(mode, label, inits, budgets, present, best) -> list[str]:
    """The lines of one mode's table of means [t-interval], the best mean of a column in bold."""
    seeds = _seed_range([n for _, n in present.values()])
    out = [
        f"**{mode}**: test {label}, mean [95 % t-interval] over {seeds} (mean ± t_0.975,n-1 · sd / √n, "
        "scipy.stats.t); best mean of a column in bold\n",
    ]

    def cell(init: str, b: str) -> str | None:
        if (init, b) not in present:
            return None
        interval, n = present[(init, b)]
        text = _cell_text(interval, n)
        return f"**{text}**" if interval.mean == best[b] else text

    return [*out, *_table_lines(inits, budgets, cell), ""]


def _differences_table(mode, label, inits, budgets, differences, baseline) -> list[str]:
    """The lines of one mode's table of paired differences to `baseline` (* where the interval excludes zero)."""
    others = [i for i in inits if i != baseline and any((i, mode, b) in differences for b in budgets)]
    if not others:
        return [f"(no init named {baseline!r} to compare with, or no other init: no paired differences)\n"]
    counts = [differences[(i, mode, b)][1] for i in others for b in budgets if (i, mode, b) in differences]
    out = [
        f"**{mode}**: paired difference of test {label} to {baseline} (init - {baseline}, per seed: the "
        f"same seed draws the same label subset), mean [95 % t-interval] over {_seed_range(counts)}; "
        "* the interval excludes zero (not corrected for the number of comparisons)\n",
    ]

    def cell(init: str, b: str) -> str | None:
        if (init, mode, b) not in differences:
            return None
        interval, n = differences[(init, mode, b)]
        return _cell_text(interval, n, "+.3f") + ("*" if n >= 2 and interval.excludes_zero else "")

    return [*out, *_table_lines(others, budgets, cell), ""]


def _table_lines(inits: Sequence[str], budgets: Sequence[str], cell: Callable[[str, str], str | None]) -> list[str]:
    """A markdown table of inits x budgets: header, separator and one row per init ('-' where `cell` is None)."""
    rows = [f"| {init} | " + " | ".join(cell(init, b) or "-" for b in budgets) + " |" for init in inits]
    return ["| init | " + " | ".join(budgets) + " |", "|---|" + "---:|" * len(budgets), *rows]


def _column_winners(rows, mode, budgets, baseline, metric) -> list[str]:
    """The lines naming the winner of each of one mode's columns, against the baseline and the runner-up."""
    out = [f"**{mode}**: winner per column (best mean; differences paired by seed):\n"]
    for b in budgets:
        w = column_winner(rows, mode, b, baseline, metric)
        text = f"- {b}: **{w.init}** ({w.score.mean:.3f})"
        if w.init == baseline:
            text += f"; the winner is {baseline} itself"
        elif w.vs_baseline is not None:
            text += f"; vs {baseline}: {_verdict(w.vs_baseline)}"
        if w.runner_up is not None and w.runner_up == baseline:
            text += f" ({baseline} is the runner-up)"
        elif w.runner_up is not None and w.vs_runner_up is not None:
            text += f"; vs runner-up {w.runner_up}: {_verdict(w.vs_runner_up)}"
        else:
            text += "; no runner-up"
        out.append(text)
    return [*out, ""]


def plot_results(rows: Sequence[dict[str, Any]], path: pathlib.Path, metric: str = "macro_f1") -> None:
    """Macro-F1 against the label budget (log axis), one line per init with its 95 % t-interval band, one panel per
    mode. With per-class budgets the x axis is labelled images per class (a fraction at its mean per class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarise(rows, metric)
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    inits = list(dict.fromkeys(r["init"] for r in rows))
    budgets = _budgets_in_order(rows)
    per_class = [r for r in rows if int(r.get("labels_per_class", 0)) > 0]
    x_of: dict[str, float] = {}
    if per_class:
        # The number of classes from a per-class cell: its training images / its images per class.
        num_classes = round(per_class[0]["num_train_images"] / per_class[0]["labels_per_class"])
        for b in budgets:
            sizes = [r["num_train_images"] for r in rows if r["budget"] == b]
            x_of[b] = float(np.mean(sizes)) / num_classes
        xlabel = "labelled training images per class"
    else:
        x_of = {r["budget"]: 100 * float(r["label_fraction"]) for r in rows}
        xlabel = "labelled training images (%)"
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False, sharey=True)
    for ax, mode in zip(axes[0], modes, strict=True):
        for init in inits:
            keys = [b for b in budgets if (init, mode, b) in summary]
            if not keys:
                continue
            x = np.array([x_of[b] for b in keys])
            intervals = [summary[(init, mode, b)][0] for b in keys]
            style = "--" if init == "random" else "-"
            (line,) = ax.plot(x, [i.mean for i in intervals], style, marker="o", label=init)
            low, high = np.array([i.low for i in intervals]), np.array([i.high for i in intervals])
            ax.fill_between(x, low, high, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ticks = [b if b.endswith("/class") or not per_class else f"{b}\n({x_of[b]:.0f}/class)" for b in budgets]
        ax.set_xticks([x_of[b] for b in budgets], ticks, fontsize=8)
        ax.minorticks_off()
        ax.set_xlabel(xlabel)
        ax.set_title("fine-tuned" if mode == "finetune" else "linear probe (frozen backbone)")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel(f"test {METRIC_NAMES.get(metric, metric)} (band: 95 % t-interval over seeds)")
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    save_figure(fig, path)


def write_results(rows: Sequence[dict[str, Any]], workdir: pathlib.Path, baseline: str = "random") -> None:
    """results.csv (one row per cell), results.md and the plot."""
    tmp = workdir / "results.csv.tmp"
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(workdir / "results.csv")
    table = markdown_table(rows, baseline=baseline)
    (workdir / "results.md.tmp").write_text(table)
    (workdir / "results.md.tmp").replace(workdir / "results.md")
    plot_results(rows, workdir / "macro_f1_vs_label_fraction.png")  # the old name: notebooks open it
    print(f"\n{table}")


def run(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> str:
    """The `grid` task of the command line: `run_grid`, and the line to print."""
    run_grid(config, workdir)
    return f"grid finished; results.csv, results.md and the plot in {pathlib.Path(workdir).absolute()}"
