"""Losses of every method's tiny preset and of tiny classification runs, for restructurings that must not change
numerics.

  python benchmarks/bit_identical.py record benchmarks/bit_identical_before.json   # on the tree before
  python benchmarks/bit_identical.py check benchmarks/bit_identical_before.json    # after: exit 1 on any change
  python benchmarks/bit_identical.py check benchmarks/bit_identical_before.json byol moco finetune   # only these

Every `configs/*.py` whose tiny preset pretrains is run for a few steps (keyed by `config.method`, so renaming a
config file does not change the record); classification runs fine-tune and linear-probe `configs/classify.py:tiny`
from a random init for two epochs. Recorded: each step's loss (and gradient norm) as the exact float, each
validation round of classification, the test metrics and a hash of the selected classifier's weights. A preset
change (not a restructuring) changes the record too: re-record on the tree that has only that change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = pathlib.Path(__file__).resolve().parents[1]
NUM_STEPS = 3


def _tree_hash(tree) -> str:
    import jax
    import numpy as np

    digest = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return digest.hexdigest()


def pretraining_records(only: set[str]) -> dict[str, dict]:
    """{method: {"loss": [...], "grad_norm": [...]}} of NUM_STEPS steps of every tiny pretraining preset (those
    named in `only`, if any)."""
    from fetalssl_jax.config_lib import load_config, set_by_path
    from fetalssl_jax.methods import get_method
    from fetalssl_jax.train.loop import train
    from fetalssl_jax.train.monitor import read_metrics

    out = {}
    for path in sorted((REPO / "configs").glob("*.py")):
        if load_config(str(path)).get("task", "pretrain") != "pretrain":
            continue  # a tool, classifier or grid config (some tools have no tiny preset)
        config = load_config(f"{path}:tiny")
        if (only and config.method not in only) or not get_method(config.method).from_scratch:
            continue  # not asked for, or it needs a trained model first (distillation: tests/methods/test_distill.py)
        set_by_path(config, "num_steps", NUM_STEPS)
        set_by_path(config, "eval.compare_random_init", False)
        set_by_path(config, "eval.every_steps", 0)
        set_by_path(config, "compilation_cache_dir", "")
        with tempfile.TemporaryDirectory() as workdir:
            train(config, workdir)
            records = read_metrics(workdir)
            evaluation = json.loads((pathlib.Path(workdir) / "eval.json").read_text())
        out[config.method] = {
            "loss": [r["loss"] for r in records],
            "grad_norm": [r["grad_norm"] for r in records],
            "knn_macro_f1": evaluation["knn_macro_f1"],
        }
        print(config.method, out[config.method]["loss"], flush=True)
    return out


def validation_rounds(records: list[dict]) -> list[dict]:
    """The validation records of a classifier's metrics.jsonl, as {step, train_loss, valid_*}: the same for the
    records of every release (an `epoch` key and the records of kind 'train' left out)."""
    rounds = [r for r in records if r.get("kind", "eval") == "eval" and "train_loss" in r]
    return [{k: v for k, v in r.items() if k not in ("epoch", "kind")} for r in rounds]


def classification_records(only: set[str]) -> dict[str, dict]:
    """{mode: validation rounds, test metrics and a weight hash} of tiny fine-tune and linear-probe runs (those
    named in `only`, if any)."""
    import orbax.checkpoint as ocp

    from fetalssl_jax.config_lib import load_config, set_by_path
    from fetalssl_jax.downstream.classification import run_classification

    out = {}
    for mode in [m for m in ("finetune", "linear") if not only or m in only]:
        config = load_config(f"{REPO / 'configs' / 'classify.py'}:tiny")
        set_by_path(config, "mode", mode)
        set_by_path(config, "compilation_cache_dir", "")
        with tempfile.TemporaryDirectory() as workdir:
            results = run_classification(config, workdir)
            lines = (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines()
            rounds = validation_rounds([json.loads(line) for line in lines])
            variables = ocp.StandardCheckpointer().restore(pathlib.Path(workdir, "classifier", "variables").absolute())
        out[mode] = {
            "rounds": rounds,
            "test": {k: results["test"][k] for k in ("macro_f1", "balanced_accuracy", "accuracy")},
            "weights_sha256": _tree_hash(variables),
        }
        print(mode, [r["train_loss"] for r in rounds], flush=True)
    return out


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("record", "check"))
    parser.add_argument("path", help="the record: written by `record`, compared with by `check`")
    parser.add_argument("only", nargs="*", help="check only these methods / classifier modes")
    args = parser.parse_args(argv[1:])
    if args.action == "record" and args.only:
        parser.error("record writes every entry; name none")
    only = set(args.only)
    now = {"pretraining": pretraining_records(only), "classification": classification_records(only)}
    path = pathlib.Path(args.path)
    if args.action == "record":
        path.write_text(json.dumps(now, indent=1) + "\n")
        print(f"recorded {path}")
        return 0
    before = json.loads(path.read_text())
    for mode in before.get("classification", {}).values():
        mode["rounds"] = validation_rounds(mode["rounds"])
    differences = [
        f"{part}/{name}: {before[part].get(name)} -> {now[part].get(name)}"
        for part in before
        for name in sorted(set(before[part]) | set(now[part]))
        if (not only or name in only) and before[part].get(name) != now[part].get(name)
    ]
    print("\n".join(differences) if differences else f"bit-identical to {path}")
    return 1 if differences else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
