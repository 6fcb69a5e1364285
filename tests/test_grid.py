"""The experiment grid: pretrain -> classify every cell -> results.csv, Markdown table, plot; resumable."""

import csv

import numpy as np
import pytest

from fetalssl_jax.config_lib import load_config
from fetalssl_jax.downstream.grid import markdown_table, parse_inits, run_grid, summarise


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
    inits = parse_inits(["bt=configs/barlow.py:tiny,num_steps=2", "random", "/runs/x", "imagenet=/w/r18.safetensors"])
    assert [(i.name, i.is_pretraining_config) for i in inits] == [
        ("bt", True), ("random", False), ("x", False), ("imagenet", False)
    ]  # fmt: skip
    assert inits[0].spec == "configs/barlow.py:tiny,num_steps=2"
    with pytest.raises(ValueError, match=r"\['random'\] more than once"):
        parse_inits(["random", "random=random"])


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
