"""The experiment grid: pretrain -> classify every cell -> results.csv, Markdown table, plot; resumable."""

import csv
import json

import numpy as np
import pytest

from fetalssl_jax.config_lib import load_config
from fetalssl_jax.downstream.classify import Schedule, cycled_batch, run_classification
from fetalssl_jax.downstream.grid import markdown_table, parse_inits, run_grid, summarise
from fetalssl_jax.downstream.labels import choose_labels, per_class_subset

CLASSES = ("a", "b", "c", "d", "e")


def test_summary_and_table_match_numpy():
    rows = [
        {"init": i, "mode": "finetune", "label_fraction": f, "seed": s, "macro_f1": v}
        for (i, f, s, v) in [("bt", 1.0, 0, 0.5), ("bt", 1.0, 1, 0.7), ("bt", 0.1, 0, 0.2), ("bt", 0.1, 1, 0.3),
                             ("random", 1.0, 0, 0.4), ("random", 1.0, 1, 0.4), ("random", 0.1, 0, 0.35),
                             ("random", 0.1, 1, 0.45)]
    ]  # fmt: skip
    summary = summarise(rows)
    mean, std, n = summary[("bt", "finetune", 1.0)]
    assert (mean, n) == (pytest.approx(0.6), 2) and std == pytest.approx(np.std([0.5, 0.7], ddof=1))
    table = markdown_table(rows)
    assert "| bt | **0.600 ± 0.141** | 0.250 ± 0.071 |" in table
    assert "| random | 0.400 ± 0.000 | **0.400 ± 0.071** |" in table
    assert "best: 100 %: bt; 10 %: random" in table


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
    with pytest.raises(ValueError, match="both set"):
        choose_labels(labels, 0.5, 5, 0, CLASSES)


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
    schedule = Schedule.from_config(config, n, batch)
    assert schedule.ends == (3, 6, 7) and [schedule.should_checkpoint(config, r) for r in range(3)] == [
        False, True, False,  # 4 is crossed by the round ending at 6; the last round never checkpoints
    ]  # fmt: skip


@pytest.fixture(scope="module")
def step_run(repo, tmp_path_factory):
    arg = "num_steps=6,eval_every_steps=2,checkpoint_every_steps=2,labels_per_class=3"
    config = load_config(f"{repo / 'configs' / 'classify.py'}:tiny,{arg}")
    workdir = tmp_path_factory.mktemp("steps")
    return config, workdir, run_classification(config, workdir)


def test_step_run_trains_num_steps_and_selects_on_validation(step_run):
    _, workdir, results = step_run
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 4, 6] and results["num_steps"] == 6
    valid = [line["valid_balanced_accuracy"] for line in lines]
    assert results["best_step"] == lines[int(np.argmax(valid))]["step"] and results["best_epoch"] is None
    chosen = json.loads((workdir / "label_indices.json").read_text())
    assert chosen["class_counts"] == [3] * 5 and results["num_train_images"] == 15
    assert chosen["labels_per_class"] == 3


def test_interrupted_step_run_resumes_with_the_same_losses(step_run, tmp_path):
    config, workdir, results = step_run
    assert run_classification(config, tmp_path, stop_after_epochs=1) == {}  # after the first validation
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    resumed = run_classification(config, tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text() == (workdir / "metrics.jsonl").read_text()
    assert resumed["test"] == results["test"] and not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_tiny_grid_runs_end_to_end_and_resumes(repo, tmp_path):
    config = load_config(f"{repo / 'configs' / 'paper_grid.py'}:tiny")
    with config.ignore_type():
        config.inits = (f"bt={repo / 'configs' / 'barlow.py'}:tiny,num_steps=2,progress_bar=False", "random")
    rows = run_grid(config, tmp_path)
    assert len(rows) == 2 * 2 * 2 * 2  # inits x modes x fractions x seeds
    with open(tmp_path / "results.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 16 and {r["init"] for r in table} == {"bt", "random"}
    # the Markdown table's means are the means of the CSV rows
    key = ("bt", "linear", "1.0")
    cell = [float(r["macro_f1"]) for r in table if (r["init"], r["mode"], r["label_fraction"]) == key]
    assert f"{np.mean(cell):.3f} ± {np.std(cell, ddof=1):.3f}" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "macro_f1_vs_label_fraction.png").stat().st_size > 10_000
    assert (tmp_path / "pretrain" / "bt" / "backbone" / "backbone.json").is_file()
    for r in table:  # 25 % of 120 training images, stratified
        assert int(r["num_train_images"]) == (120 if r["label_fraction"] == "1.0" else 30)

    # Running again: every cell and the pretraining are already done, nothing is retrained.
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("metrics.jsonl")}
    assert len(stamps) == 17
    again = run_grid(config, tmp_path)
    assert again == rows
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
