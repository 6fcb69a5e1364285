"""The experiment grid: label budgets, fixed-step training, pretrain -> classify every cell -> results.csv, tables
with t-intervals and paired differences, plot; resumable."""

import csv
import json

import numpy as np
import pytest
from scipy import stats

from fetalssl_jax.config_lib import load_config
from fetalssl_jax.downstream.classification import cycled_batch, run_classification
from fetalssl_jax.downstream.grid import (
    column_winner,
    markdown_table,
    paired_differences,
    parse_inits,
    run_grid,
    summarise,
    t_interval,
)
from fetalssl_jax.downstream.labels import choose_labels, per_class_subset
from fetalssl_jax.train.durations import Durations, durations
from fetalssl_jax.train.fingerprint import WorkdirMismatchError
from fetalssl_jax.train.monitor import read_metrics

CLASSES = ("a", "b", "c", "d", "e")


# ---- statistics and the Markdown tables --------------------------------------------------------------------------
def _scipy_interval(values):
    """The reference: scipy's own t-interval around the mean (not the code under test's formula)."""
    values = np.asarray(values, np.float64)
    if np.ptp(values) == 0:  # scipy gives nan for a zero scale; the interval of equal values is that value
        return values.mean(), values.mean(), values.mean()
    low, high = stats.t.interval(0.95, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
    return values.mean(), low, high


def records(workdir):
    """metrics.jsonl without the wall-clock speed: what two runs of one config must write alike."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def _hand_made_rows():
    """3 inits x 2 budgets x 5 seeds: bt beats random by ~0.1 at 5/class (clearly), ae is the runner-up there;
    at 100 % bt has the best mean but is within noise of random."""
    rng = np.random.default_rng(0)
    random5 = 0.30 + 0.05 * rng.standard_normal(5)
    random_all = 0.70 + 0.05 * rng.standard_normal(5)
    values = {
        ("random", "5/class"): random5,
        ("bt", "5/class"): random5 + 0.10 + 0.01 * rng.standard_normal(5),
        ("ae", "5/class"): random5 + 0.08 + 0.05 * rng.standard_normal(5),
        ("random", "100 %"): random_all,
        ("bt", "100 %"): random_all + 0.005 + 0.05 * rng.standard_normal(5),
        ("ae", "100 %"): random_all - 0.02 + 0.01 * rng.standard_normal(5),
    }
    rows = []
    for (init, budget), v in values.items():
        for seed in range(5):
            rows.append({"init": init, "mode": "finetune", "budget": budget, "seed": seed, "macro_f1": float(v[seed]),
                         "num_train_images": 25 if budget == "5/class" else 720})  # fmt: skip
    return rows, values


def test_t_interval_is_scipys():
    values = [0.2, 0.35, 0.3, 0.41, 0.28]
    got = t_interval(values)
    mean, low, high = _scipy_interval(values)
    assert (got.mean, got.low, got.high) == (pytest.approx(mean), pytest.approx(low), pytest.approx(high))
    one = t_interval([0.5])
    assert one.mean == 0.5 and np.isnan(one.low) and not one.excludes_zero


def test_tables_match_an_independent_scipy_computation():
    rows, values = _hand_made_rows()
    summary = summarise(rows)
    differences = paired_differences(rows, "random")
    table = markdown_table(rows)
    for (init, budget), v in values.items():
        mean, low, high = _scipy_interval(v)
        interval, n = summary[(init, "finetune", budget)]
        assert n == 5 and (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))
        assert f"{mean:.3f} [{low:.3f}, {high:.3f}]" in table
        if init == "random":
            continue
        d = v - values[("random", budget)]  # paired by seed
        mean, low, high = _scipy_interval(d)
        interval, n = differences[(init, "finetune", budget)]
        assert n == 5 and (interval.low, interval.high) == (pytest.approx(low), pytest.approx(high))
        star = "*" if low > 0 or high < 0 else ""
        assert f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]{star} " in table
    # the hand-made data were built so that exactly these differences exclude zero
    assert _scipy_interval(values[("bt", "5/class")] - values[("random", "5/class")])[1] > 0
    assert _scipy_interval(values[("bt", "100 %")] - values[("random", "100 %")])[1] < 0
    # columns from the fewest labelled images to the most; the best mean of a column in bold
    assert "| init | 5/class | 100 % |" in table
    means = {k: np.mean(v) for k, v in values.items()}
    best5 = max(("random", "bt", "ae"), key=lambda i: means[(i, "5/class")])
    assert best5 == "bt"
    m, lo, hi = _scipy_interval(values[("bt", "5/class")])
    assert f"| bt | **{m:.3f} [{lo:.3f}, {hi:.3f}]** |" in table
    assert "t-interval] over 5 seeds" in table and "scipy.stats.t" in table


def test_winner_is_the_best_mean_with_paired_comparisons():
    rows, values = _hand_made_rows()
    means = {k: np.mean(v) for k, v in values.items()}
    table = markdown_table(rows)
    for budget in ("5/class", "100 %"):
        ranked = sorted(("random", "bt", "ae"), key=lambda i: -means[(i, budget)])
        winner = column_winner(rows, "finetune", budget)
        assert (winner.init, winner.runner_up) == (ranked[0], ranked[1])
        for other, got in (("random", winner.vs_baseline), (ranked[1], winner.vs_runner_up)):
            mean, low, high = _scipy_interval(values[(ranked[0], budget)] - values[(other, budget)])
            assert got[1] == 5 and (got[0].mean, got[0].low) == (pytest.approx(mean), pytest.approx(low))
    w5 = column_winner(rows, "finetune", "5/class")
    assert w5.vs_baseline[0].excludes_zero and not w5.vs_runner_up[0].excludes_zero
    line = next(line for line in table.splitlines() if line.startswith("- 5/class:"))
    assert "**bt**" in line and "vs random:" in line and "significantly better" in line
    assert "vs runner-up ae:" in line and line.endswith("(not significantly different, 5 paired seeds)")
    line = next(line for line in table.splitlines() if line.startswith("- 100 %:"))
    assert f"**{column_winner(rows, 'finetune', '100 %').init}**" in line


def test_a_baseline_winner_and_a_missing_baseline_are_said_so():
    rows = [{"init": i, "mode": "linear", "budget": "2/class", "seed": s, "macro_f1": v}
            for i, vals in (("random", (0.5, 0.6)), ("bt", (0.2, 0.3))) for s, v in enumerate(vals)]  # fmt: skip
    table = markdown_table(rows)
    assert "- 2/class: **random** (0.550); the winner is random itself; vs runner-up bt:" in table
    assert "no paired differences" in markdown_table(rows, baseline="imagenet")


# ---- label budgets -----------------------------------------------------------------------------------------------
def test_per_class_budget_picks_exactly_k_of_every_class_deterministically():
    labels = np.repeat(np.arange(5), [100, 50, 30, 12, 8])
    subset = per_class_subset(labels, 5, seed=0, class_names=CLASSES)
    np.testing.assert_array_equal(np.bincount(labels[subset], minlength=5), [5] * 5)
    assert np.all(np.diff(subset) > 0)  # sorted, no repeats
    np.testing.assert_array_equal(subset, per_class_subset(labels, 5, seed=0, class_names=CLASSES))
    assert not np.array_equal(subset, per_class_subset(labels, 5, seed=1, class_names=CLASSES))
    np.testing.assert_array_equal(choose_labels(labels, 1.0, 5, 0, CLASSES), subset)
    assert len(choose_labels(labels, 0.25, 0, 0, CLASSES)) == 50  # labels_per_class 0: the fraction


def test_per_class_budget_larger_than_a_class_names_it():
    labels = np.repeat(np.arange(5), [100, 50, 30, 12, 8])
    with pytest.raises(ValueError, match=r"12 labelled images per class .* class 'e' \(8 images\)"):
        per_class_subset(labels, 12, seed=0, class_names=CLASSES)
    with pytest.raises(ValueError, match=r"class 'd' \(12 images\), class 'e' \(8 images\)"):
        per_class_subset(labels, 20, seed=0, class_names=CLASSES)


# ---- fixed-step training -----------------------------------------------------------------------------------------
def test_cycled_batches_use_every_image_equally_often_and_are_stateless(repo):
    n, batch = 10, 4
    stream = np.concatenate([cycled_batch(n, batch, seed=3, step=s) for s in range(25)])  # 100 = 10 passes
    np.testing.assert_array_equal(np.bincount(stream, minlength=n), [10] * n)
    assert sorted(stream[:10]) == list(range(10))  # the first pass is a permutation
    np.testing.assert_array_equal(cycled_batch(n, batch, 3, 7), stream[28:32])
    config = load_config(
        f"{repo / 'configs' / 'classify.py'}:tiny,num_steps=7,eval_every_steps=3,checkpoint_every_steps=4"
    )
    steps = durations(config, -(-n // batch))
    ends = steps.evaluations()
    checkpoints = [Durations.crossed(a, b, steps.checkpoint) for a, b in zip((0, *ends), ends[:-1], strict=False)]
    assert ends == (3, 6, 7) and checkpoints == [False, True]  # 4 is crossed by the round ending at 6


@pytest.fixture(scope="module")
def step_run(repo, tmp_path_factory):
    arg = "num_steps=6,eval_every_steps=2,checkpoint_every_steps=2,labels_per_class=3"
    config = load_config(f"{repo / 'configs' / 'classify.py'}:tiny,{arg}")
    workdir = tmp_path_factory.mktemp("steps")
    return config, workdir, run_classification(config, workdir)


def test_step_run_trains_num_steps_and_selects_on_validation(step_run):
    _, workdir, results = step_run
    lines = read_metrics(workdir, kind="eval")
    assert [line["step"] for line in lines] == [2, 4, 6] and results["num_steps"] == 6
    valid = [line["valid_balanced_accuracy"] for line in lines]
    assert results["best_step"] == lines[int(np.argmax(valid))]["step"] and results["best_epoch"] is None
    chosen = json.loads((workdir / "label_indices.json").read_text())
    assert chosen["class_counts"] == [3] * 5 and results["num_train_images"] == 15
    assert chosen["labels_per_class"] == 3


def test_interrupted_step_run_resumes_with_the_same_losses(step_run, tmp_path):
    config, workdir, results = step_run
    assert run_classification(config, tmp_path, stop_after_epochs=1) == {}  # after the first validation
    assert len(read_metrics(tmp_path, kind="eval")) == 1
    resumed = run_classification(config, tmp_path)
    assert records(tmp_path) == records(workdir)
    assert resumed["test"] == results["test"] and not (tmp_path / "checkpoints").exists()


# ---- config.inits --------------------------------------------------------------------------------------------------
def test_init_entries_are_parsed_and_checked():
    inits = parse_inits([
        "bt=configs/barlow.py:tiny,num_steps=2",  # name=path.py:preset,k=v
        "configs/vicreg.py:tiny,num_steps=4,model.width=8",  # bare path.py:preset,k=v: '=' only in the overrides
        "configs/simclr.py",  # bare path.py
        "random",
        "mine=/some/dir",
        "/w/r18.safetensors",
        "imagenet=/w/r50.safetensors",
    ])  # fmt: skip
    assert [(i.name, i.spec, i.is_pretraining_config) for i in inits] == [
        ("bt", "configs/barlow.py:tiny,num_steps=2", True),
        ("vicreg", "configs/vicreg.py:tiny,num_steps=4,model.width=8", True),
        ("simclr", "configs/simclr.py", True),
        ("random", "random", False),
        ("mine", "/some/dir", False),
        ("r18", "/w/r18.safetensors", False),
        ("imagenet", "/w/r50.safetensors", False),
    ]
    assert parse_inits(["barlow.py:tiny,num_steps=4"])[0].name == "barlow"
    with pytest.raises(ValueError, match=r"\['random'\] more than once"):
        parse_inits(["random", "random=random"])


# ---- the grid end to end -----------------------------------------------------------------------------------------
def test_a_budget_larger_than_a_class_fails_before_anything_trains(repo, tmp_path):
    config = load_config(f"{repo / 'configs' / 'paper_grid.py'}:tiny")
    config.labels_per_class = (5, 30)
    with pytest.raises(ValueError, match=r"30 labelled images per class .*class '3VV/3VT' \(24 images\)"):
        run_grid(config, tmp_path)
    assert not (tmp_path / "cells").exists() and not (tmp_path / "pretrain").exists()


@pytest.mark.slow
def test_tiny_grid_runs_end_to_end_and_resumes(repo, tmp_path):
    config = load_config(f"{repo / 'configs' / 'paper_grid.py'}:tiny")
    with config.ignore_type():
        config.inits = (f"bt={repo / 'configs' / 'barlow.py'}:tiny,num_steps=2,progress_bar=False", "random")
    rows = run_grid(config, tmp_path)
    assert len(rows) == 2 * 2 * 2 * 2  # inits x modes x budgets (5/class, 100 %) x seeds
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 16 and {r["init"] for r in table} == {"bt", "random"}
    assert {r["budget"] for r in table} == {"5/class", "100 %"} and {r["num_steps"] for r in table} == {"6"}
    for r in table:  # 5 of each of the 5 classes, or all 120 training images
        assert int(r["num_train_images"]) == (25 if r["budget"] == "5/class" else 120)
    # the Markdown table's intervals are those of the CSV rows (scipy), and so are the paired differences
    markdown = (tmp_path / "results.md").read_text()

    def cell(init, mode, budget):
        return np.array([float(r["macro_f1"]) for r in sorted(table, key=lambda r: r["seed"])
                         if (r["init"], r["mode"], r["budget"]) == (init, mode, budget)])  # fmt: skip

    for init, mode, budget in (("random", "linear", "5/class"), ("bt", "finetune", "100 %")):
        mean, low, high = _scipy_interval(cell(init, mode, budget))
        assert f"{mean:.3f} [{low:.3f}, {high:.3f}]" in markdown
    mean, low, high = _scipy_interval(cell("bt", "finetune", "100 %") - cell("random", "finetune", "100 %"))
    assert f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]" in markdown
    assert "paired difference" in markdown and "winner per column" in markdown
    chosen = json.loads((tmp_path / "cells/bt/linear/5perclass/seed1/label_indices.json").read_text())
    assert chosen["class_counts"] == [5] * 5
    assert (tmp_path / "cells/random/finetune/100pct/seed0/results.json").is_file()
    assert (tmp_path / "macro_f1_vs_label_fraction.png").stat().st_size > 10_000
    assert (tmp_path / "pretrain" / "bt" / "backbone" / "backbone.json").is_file()

    # Running again: every cell and the pretraining are already done, nothing is retrained.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.jsonl")}
    assert len(stamps) == 17
    again = run_grid(config, tmp_path)
    assert again == rows
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    # A finished cell of another classifier config is not mixed into the table.
    config.classify.num_steps = 8
    with pytest.raises(ValueError, match=r"finished classification run in .* made by another config.*\n  num_steps"):
        run_grid(config, tmp_path)
    # A finished pretraining is reused despite cosmetic keys, and refused, naming the key, for another config.
    config.classify.num_steps = 6
    barlow = f"bt={repo / 'configs' / 'barlow.py'}:tiny,num_steps=2"
    with config.ignore_type():
        config.inits = (f"{barlow},progress_bar=True,log_every_steps=5,eval.draws=1", "random")
    assert run_grid(config, tmp_path) == rows
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    with config.ignore_type():
        config.inits = (f"{barlow},progress_bar=False,optim.lr_weights=0.5", "random")
    with pytest.raises(WorkdirMismatchError, match="finished pretraining of init 'bt' .* made by another") as info:
        run_grid(config, tmp_path)
    assert "\n  optim.lr_weights: finished run has 0.2, config has 0.5" in str(info.value)
