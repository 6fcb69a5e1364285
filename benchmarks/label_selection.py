"""Does choosing which frames to label pay? Typical frames of k-means clusters and k-center greedy vs random choice,
same classifier, same test patients.

  python benchmarks/label_selection.py --inits /work/exp/line1,random [--pools labelled,videos] [--budgets 10,25,50]
      [--seeds 20] [--min_gap 4] [--config configs/barlow.py:default] [--set KEY=VALUE] [--out DIR]

Two pools of frames to choose from, their labels hidden from the selection and shown only for the chosen frames:

- `labelled`: the labelled training split of the planes set named by the config (`eval.*`; the embedded set by
  default: 180 patients x 20 frames, 4 of each plane per patient, frames drawn from two sweeps). Groups: patients.
  The frames have no positions, so `min_gap` does not apply.
- `videos`: every frame of the unlabelled pretraining videos the config generates (`data.*`, embedded source only:
  48 sweeps of 24 patients x 64 frames by default), labelled with each frame's dominant plane, as an annotator
  would. Neighbouring frames are near-duplicates; groups: videos, positions: frame index, `--min_gap` for all arms.

The test split's patients are in neither pool. For each init (a pretraining workdir, an exported backbone, a weights
file, or `random`): frozen pooled features (eval/frozen.extract_features, the evaluator's features); for each budget
N (labelled frames in total, not per class) and seed s, N frames chosen by each strategy of
`apply.selection.STRATEGIES` (`typical_clusters`, `k_center_greedy`, `random_rows`: random_selection) with the same
groups, positions, min_gap and seed s; the same classifier on all, a logistic regression on the chosen frames'
features standardised with the whole pool's statistics (as eval/few_label.py's probe); macro-F1 on the test
patients. Intervals: 95 % percentile bootstrap over the seeds and the test patients (eval/few_label.Resamples), all
arms on the same replicates, so the differences (to random choice; typical - k-center in the .json) are paired.
Also reported: how many of the classes the chosen frames cover (mean, and the share of seeds that cover all) and
the covering radius.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time

import numpy as np
from sklearn.linear_model import LogisticRegression

from fetalssl_jax.apply.selection import STRATEGIES, covering_radius
from fetalssl_jax.config_lib import load_config, parse_value, set_by_path
from fetalssl_jax.data import sources, synthetic
from fetalssl_jax.downstream.backbones import resolve_backbone
from fetalssl_jax.eval.few_label import (
    Resamples,
    bootstrap_scores,
    interval,
    macro_f1_from_confusion,
    patient_confusions,
    standardise,
)
from fetalssl_jax.eval.frozen import extract_features
from fetalssl_jax.models.backbone import create_backbone

REPO = pathlib.Path(__file__).resolve().parents[1]
ARMS = ("typical", "k-center", "random")  # names in STRATEGIES; the differences are to the last
COMPARED = [(a, ARMS[-1]) for a in ARMS[:-1]] + [("typical", "k-center")]
POOLS = ("labelled", "videos")


@dataclasses.dataclass(frozen=True)
class Pool:
    """Frames to choose from: images, their labels (shown only for chosen frames), groups, positions, min_gap."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    positions: np.ndarray | None
    min_gap: int
    description: str


def make_pool(name: str, config, splits, min_gap: int) -> Pool:
    """The `labelled` or `videos` pool (see the module docstring)."""
    if name == "labelled":
        train = splits["train"]
        patients = np.asarray(train.patient_ids).astype(str)
        about = f"{len(train.labels)} labelled frames of {len(np.unique(patients))} training patients"
        return Pool(name, train.images, train.labels, patients, None, 0, about)
    if name != "videos":
        raise ValueError(f"unknown pool {name!r} (--pools); choose from {POOLS}")
    data = config.data
    if data.source != "synthetic":
        raise ValueError(f"--pools videos needs config.data.source 'synthetic' (frame labels), got {data.source!r}")
    videos = synthetic.generate_videos(
        num_videos=data.num_videos, num_frames=data.frames_per_video, image_size=data.stored_size, seed=data.seed,
        frame_skip=data.frame_skip,
    )  # fmt: skip
    ids = np.concatenate([[v.video_id] * len(v.frames) for v in videos])
    about = (
        f"{len(ids)} frames of {len(videos)} unlabelled videos of {len({v.patient_id for v in videos})} patients, "
        f"min_gap {min_gap}"
    )
    return Pool(
        name,
        np.concatenate([v.frames for v in videos]),
        np.concatenate([v.planes for v in videos]),
        ids,
        np.concatenate([np.arange(len(v.frames)) for v in videos]),
        min_gap,
        about,
    )


def _confusion(train_z, train_y, chosen, test_z, test_y, test_groups, num_classes, max_iter) -> np.ndarray:
    """Per-test-patient confusions [G, C, C] of the probe fitted on the chosen frames (one class: predicts it)."""
    y = train_y[chosen]
    if len(np.unique(y)) == 1:
        predictions = np.full(len(test_y), y[0])
    else:
        predictions = LogisticRegression(max_iter=max_iter).fit(train_z[chosen], y).predict(test_z)
    return patient_confusions(test_y, predictions, test_groups, num_classes)


def evaluate(pool: Pool, features, test, budgets, seeds, num_classes, replicates, max_iter) -> list[dict]:
    """One row per budget: each arm's macro-F1 and the paired differences, with coverage of the chosen frames."""
    train_x, test_x = features
    train_z, test_z = standardise(train_x, test_x)
    test_groups = np.asarray(test.patient_ids).astype(str)
    rules = dict(groups=pool.groups, positions=pool.positions, min_gap=pool.min_gap)
    rows = []
    for budget in budgets:
        resamples = Resamples.make(seeds, len(np.unique(test_groups)), replicates, seed=budget)
        boot, point, about = {}, {}, {}
        for arm in ARMS:
            picks = [STRATEGIES[arm](train_x, budget, seed=s, **rules) for s in range(seeds)]
            conf = np.stack(
                [_confusion(train_z, pool.labels, c, test_z, test.labels, test_groups, num_classes, max_iter)
                 for c in picks]
            )  # fmt: skip
            point[arm] = float(macro_f1_from_confusion(conf.sum(1)).mean())
            boot[arm] = bootstrap_scores(conf, resamples)
            classes = np.array([len(np.unique(pool.labels[c])) for c in picks])
            about[arm] = {
                "macro_f1": vars(interval(point[arm], boot[arm])),
                "classes_mean": float(classes.mean()),
                "all_classes": float(np.mean(classes == num_classes)),
                "groups_mean": float(np.mean([len(np.unique(pool.groups[c])) for c in picks])),
                "covering_radius_mean": float(np.mean([covering_radius(train_x, c) for c in picks])),
            }
        differences = {f"{a} - {b}": vars(interval(point[a] - point[b], boot[a] - boot[b])) for a, b in COMPARED}
        rows.append({"pool": pool.name, "budget": budget, "seeds": seeds, **about, "differences": differences})
    return rows


def _cell(i: dict, signed: bool = False) -> str:
    f = "+.3f" if signed else ".3f"
    return f"{i['mean']:{f}} [{i['low']:{f}}, {i['high']:{f}}]"


def format_table(rows: list[dict], num_classes: int) -> str:
    """Markdown: macro-F1 of every arm, the paired differences to random choice (no difference where the interval
    contains 0), and per arm (in ARMS order) the classes covered and the covering radius."""
    arms = " / ".join(ARMS)
    compared = COMPARED[: len(ARMS) - 1]
    columns = [
        "backbone", "pool", "labelled frames", *(f"{a} macro-F1" for a in ARMS), *(f"{a} - {b}" for a, b in compared),
        f"classes covered (of {num_classes}): {arms}", f"seeds covering all: {arms}", f"covering radius: {arms}",
    ]  # fmt: skip
    lines = ["| " + " | ".join(columns) + " |", "|---|---|" + "---:|" * (len(columns) - 2)]
    for r in rows:
        cells = [r["init"], r["pool"], str(r["budget"]), *(_cell(r[a]["macro_f1"]) for a in ARMS)]
        for a, b in compared:
            d = r["differences"][f"{a} - {b}"]
            cells.append(_cell(d, True) + ("" if d["low"] > 0 or d["high"] < 0 else " (no difference)"))
        cells += [
            " / ".join(f"{r[a]['classes_mean']:.2f}" for a in ARMS),
            " / ".join(f"{100 * r[a]['all_classes']:.0f} %" for a in ARMS),
            " / ".join(f"{r[a]['covering_radius_mean']:.3f}" for a in ARMS),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inits", default="random", help="comma-separated: pretraining workdirs, backbones, random")
    parser.add_argument("--pools", default=",".join(POOLS), help=f"comma-separated, of {POOLS}")
    parser.add_argument("--min_gap", type=int, default=4, help="frames; the videos pool only")
    parser.add_argument("--budgets", default="10,25,50", help="labelled frames in total")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--config", default=f"{REPO / 'configs' / 'barlow.py'}:default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override, repeatable")
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--out", default="workdirs/label_selection")
    args = parser.parse_args()
    config = load_config(args.config)
    for key, _, value in (item.partition("=") for item in args.set):
        set_by_path(config, key, parse_value(value))
    budgets = [int(b) for b in args.budgets.split(",")]

    start = time.perf_counter()
    splits = sources.labelled_splits(config)
    test = splits["test"]
    pools = [make_pool(name, config, splits, args.min_gap) for name in args.pools.split(",")]
    num_classes = len(sources.class_names(config))
    backbone = create_backbone(config.model, config.data.image_size)
    rows = []
    for spec in args.inits.split(","):
        init = resolve_backbone(spec, config.model, config.data.image_size, config.seed)
        name = "random init"
        if init.kind != "random":
            name = f"{init.description.get('identity', {}).get('method')} ({pathlib.Path(spec).name})"

        def embed(images, variables=init.variables):
            return extract_features(backbone, variables, images, config.data.image_size, config.eval.batch_size)

        test_x = embed(test.images)
        for pool in pools:
            features = (embed(pool.images), test_x)
            max_iter = config.eval.probe_max_iter
            rows += [
                {"init": name, **r}
                for r in evaluate(pool, features, test, budgets, args.seeds, num_classes, args.replicates, max_iter)
            ]
    header = (
        "Pools: " + "; ".join(f"{p.name}: {p.description}" for p in pools) + f". Test: {len(test.labels)} frames of "
        f"{len(np.unique(test.patient_ids))} other patients. {args.seeds} seeds; macro-F1 of a logistic regression "
        "on the chosen frames' frozen features [95 % bootstrap interval over seeds and test patients; the differences "
        "are paired]."
    )
    table = format_table(rows, num_classes)
    print(f"\n{header}\n\n{table}")
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "label_selection.md").write_text(f"{header}\n\n{table}\n")
    meta = {**vars(args), "wall_s": time.perf_counter() - start}
    (out / "label_selection.json").write_text(json.dumps({**meta, "rows": rows}, indent=1))
    print(f"\nwrote {out / 'label_selection.md'} and .json ({meta['wall_s']:.0f} s)")


if __name__ == "__main__":
    from fetalssl_jax.runtime.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as `python -m fetalssl_jax.main` does
    main()
