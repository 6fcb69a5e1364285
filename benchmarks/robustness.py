"""Macro-F1 of a plane classifier when the test images are acquired differently from the training ones: an
SSL-initialised classifier (Barlow Twins pretraining, fine-tuned) against a random-init one, same test patients.

  python benchmarks/robustness.py [--pretrain workdirs/robustness/barlow_twins]
      [--pretrain_config configs/barlow.py:default] [--classify_config configs/classify.py:default]
      [--set KEY=VALUE] [--replicates 1000] [--out workdirs/robustness] [--smoke]

Both classifiers are classification runs of `--classify_config` (with `--set` overrides), one with `init=random`, one
from the pretraining workdir `--pretrain` (pretrained there with `--pretrain_config` when it holds no backbone
yet; a finished run is reused, as a finished classification run is). Every test image is shifted (`SHIFTS`) as a
different acquisition would show it, back to uint8, and classified as predict would (the classifier's evaluation
preprocessing):

- gain +-6, +-12 dB and a TGC slope of +-12 dB from the top to the bottom, and fresh speckle of strength 0.5 and 1,
  on the echo amplitude behind the log compression (`data.augment.acquisition_shift`, the pretraining views'
  nuisances at fixed strengths): a gain lifts mid-grey tissue more than near-black fluid, black stays black;
- depth x0.8 / x1.25: the displayed depth range scaled, the probe (top centre) fixed: the top 80 % magnified, or
  the image shrunk towards the probe with black below and beside it (`data.augment.crop_and_resize`);
- aspect x1.25 / x0.8: the anatomy 25 % wider (a centred crop stretched sideways) or narrower (padded sideways);
- rotation by 15 and 30 degrees about the centre (`data.augment.rotate`);
- JPEG at quality 50, 20 and 10 (PIL).

Also reported: the share of the shifted test frames that the classifier still counts as known (its known-frame
rule, `downstream/ood.py`: a shift it flags is one it says it does not know). Intervals: 95 % percentile bootstrap
over the test patients (`eval.few_label.patient_bootstrap`), every cell on the
same resamples, so the differences (SSL - random, shifted - clean) are paired. Writes robustness.md and
robustness.json to `--out`. `--smoke`: tiny configs, a few pretraining steps and 50 replicates (what the test suite
runs).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from fetalssl_jax.config_lib import load_config, parse_value, set_by_path
from fetalssl_jax.data import sources
from fetalssl_jax.data.augment import acquisition_shift, crop_and_resize, rotate, to_float
from fetalssl_jax.downstream.classification import load_classifier, run_classification
from fetalssl_jax.downstream.trust import load_trust, predict_trusted
from fetalssl_jax.eval.few_label import interval, patient_bootstrap

REPO = pathlib.Path(__file__).resolve().parents[1]
INITS = ("random init", "Barlow Twins")  # the differences are the second minus the first
CLEAN = "none"


def _per_image(fn: Callable[[jax.Array, jax.Array], jax.Array]) -> Callable[[np.ndarray, int], np.ndarray]:
    """A shift of uint8 images [N, H, W] from `fn` (float [H, W, 1] in [0, 1] and a key -> the same), back to uint8
    (rounded)."""
    batched = jax.jit(jax.vmap(fn))

    def shift(images: np.ndarray, seed: int) -> np.ndarray:
        keys = jax.random.split(jax.random.key(seed), len(images))
        out = batched(to_float(jnp.asarray(images[..., None])), keys)
        return np.asarray(jnp.round(jnp.clip(out, 0.0, 1.0) * 255.0), np.uint8)[..., 0]

    return shift


def gain(db: float, tgc_db: float = 0.0):
    return _per_image(lambda x, key: acquisition_shift(x, gain_db=db, tgc_db=tgc_db))


def speckle(strength: float):
    return _per_image(lambda x, key: acquisition_shift(x, speckle=strength, key=key))


def depth(scale: float):
    """The displayed depth times `scale`, the probe at the top centre fixed (see the module docstring)."""

    def fn(x, key):
        h, w = x.shape[0], x.shape[1]
        return crop_and_resize(x, 0.0, (w - scale * w) / 2, scale * h, scale * w, h)

    return _per_image(fn)


def aspect(factor: float):
    """The anatomy `factor` times as wide, its height kept (a centred box of width w / factor resized to w)."""

    def fn(x, key):
        h, w = x.shape[0], x.shape[1]
        return crop_and_resize(x, 0.0, (w - w / factor) / 2, h, w / factor, h)

    return _per_image(fn)


def rotation(degrees: float):
    return _per_image(lambda x, key: rotate(x, jnp.float32(degrees)))


def jpeg(quality: int) -> Callable[[np.ndarray, int], np.ndarray]:
    """Each image encoded as a JPEG of `quality` by PIL and decoded."""

    def shift(images: np.ndarray, seed: int) -> np.ndarray:
        out = []
        for image in images:
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
            out.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue()))))
        return np.stack(out)

    return shift


SHIFTS: dict[str, Callable[[np.ndarray, int], np.ndarray]] = {
    CLEAN: lambda images, seed: images,
    **{f"gain {db:+d} dB": gain(db) for db in (-12, -6, 6, 12)},
    **{f"TGC {db:+d} dB (top to bottom)": gain(0.0, db) for db in (-12, 12)},
    "speckle 0.5": speckle(0.5),
    "speckle 1.0": speckle(1.0),
    "depth x0.8 (zoom in)": depth(0.8),
    "depth x1.25 (zoom out)": depth(1.25),
    "aspect x1.25 (wider)": aspect(1.25),
    "aspect x0.8 (narrower)": aspect(0.8),
    "rotation 15 deg": rotation(15.0),
    "rotation 30 deg": rotation(30.0),
    **{f"JPEG quality {q}": jpeg(q) for q in (50, 20, 10)},
}


@dataclasses.dataclass(frozen=True)
class Setup:
    """Where the runs go and how they are configured."""

    out: pathlib.Path
    pretrain: pathlib.Path
    pretrain_config: str
    classify_config: str
    overrides: list[tuple[str, str]]
    smoke: bool


def pretrained(setup: Setup) -> pathlib.Path:
    """The Barlow Twins workdir: reused when it holds a backbone, else pretrained with `--pretrain_config`."""
    if (setup.pretrain / "backbone" / "backbone.json").is_file():
        return setup.pretrain
    from fetalssl_jax.train.loop import train

    config = load_config(setup.pretrain_config)
    # the evaluation at the end does not change the backbone: one probe, a few draws, no baseline rows
    config.eval.shots, config.eval.draws, config.eval.compare_random_init = (10,), 5, False
    if setup.smoke:
        config.num_steps, config.eval.shots = 4, (1,)
    train(config, setup.pretrain)
    return setup.pretrain


def classifiers(setup: Setup) -> dict[str, pathlib.Path]:
    """The two classification runs (reused when finished): random init and from the pretraining."""
    runs = {}
    for name, init in zip(INITS, ("random", str(pretrained(setup))), strict=True):
        config = load_config(setup.classify_config)
        config.init, config.progress_bar = init, False
        for key, value in setup.overrides:
            set_by_path(config, key, parse_value(value))
        runs[name] = setup.out / ("classify_random" if init == "random" else "classify_barlow_twins")
        run_classification(config, runs[name])
    return runs


def evaluate(runs: dict[str, pathlib.Path], test, num_classes: int, replicates: int, seed: int = 0) -> dict:
    """Macro-F1 of every classifier under every shift, and the paired differences, with their intervals."""
    predictions, known = {}, {}
    loaded = {name: (load_classifier(workdir), load_trust(workdir)) for name, workdir in runs.items()}
    for s, (shift_name, shift) in enumerate(SHIFTS.items()):
        images = shift(test.images, seed + s)
        for name, ((model, variables, _, spec), trust) in loaded.items():
            out = predict_trusted(model, spec.image_size, variables, trust, images, 256)
            predictions[(name, shift_name)] = out[:, :-1].argmax(1)
            known[(name, shift_name)] = float(np.mean(trust.rule.known(out[:, -1])))
    groups = np.asarray(test.patient_ids).astype(str)
    keyed = {f"{n}|{s}": p for (n, s), p in predictions.items()}
    boot = patient_bootstrap(test.labels, keyed, groups, num_classes, replicates, seed)
    cell = {key: boot[f"{key[0]}|{key[1]}"] for key in predictions}

    def difference(a, b):
        return vars(interval(cell[a][0].mean - cell[b][0].mean, cell[a][1] - cell[b][1]))

    rows = []
    for shift_name in SHIFTS:
        row = {"shift": shift_name, **{n: vars(cell[(n, shift_name)][0]) for n in runs},
               "known": {n: known[(n, shift_name)] for n in runs}}  # fmt: skip
        row[f"{INITS[1]} - {INITS[0]}"] = difference((INITS[1], shift_name), (INITS[0], shift_name))
        row["change from clean"] = {n: difference((n, shift_name), (n, CLEAN)) for n in runs}
        rows.append(row)
    return {"rows": rows, "num_test": len(test.labels), "num_patients": len(np.unique(groups))}


def _cell(i: dict, signed: bool = False) -> str:
    f = "+.3f" if signed else ".3f"
    star = "*" if signed and (i["low"] > 0 or i["high"] < 0) else ""
    return f"{i['mean']:{f}} [{i['low']:{f}}, {i['high']:{f}}]{star}"


def format_table(result: dict) -> str:
    """Markdown: per shift, each classifier's macro-F1, their paired difference, and each one's change from the
    clean images (* where the paired interval excludes 0)."""
    a, b = INITS
    lines = [f"| shift | {a} | {b} | {b} - {a} | {a}: change | {b}: change | known: {a} / {b} |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for r in result["rows"]:
        change, known = r["change from clean"], r["known"]
        lines.append(f"| {r['shift']} | {_cell(r[a])} | {_cell(r[b])} | {_cell(r[f'{b} - {a}'], True)} | "
                     f"{_cell(change[a], True)} | {_cell(change[b], True)} | "
                     f"{100 * known[a]:.0f} % / {100 * known[b]:.0f} % |")  # fmt: skip
    return "\n".join(lines)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pretrain", default="", help="Barlow Twins workdir (default: <out>/barlow_twins)")
    parser.add_argument("--pretrain_config", default=f"{REPO / 'configs' / 'barlow.py'}:default")
    parser.add_argument("--classify_config", default=f"{REPO / 'configs' / 'classify.py'}:default")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="classifier config override")
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--out", default="workdirs/robustness")
    parser.add_argument("--smoke", action="store_true", help="tiny configs, 4 pretraining steps, 50 replicates")
    args = parser.parse_args(argv)
    if args.smoke:
        args.pretrain_config = f"{REPO / 'configs' / 'barlow.py'}:tiny"
        args.classify_config = f"{REPO / 'configs' / 'classify.py'}:tiny"
        args.replicates = min(args.replicates, 50)
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    start, out = time.perf_counter(), pathlib.Path(args.out)
    setup = Setup(out, pathlib.Path(args.pretrain or out / "barlow_twins"), args.pretrain_config, args.classify_config,
                  [item.partition("=")[::2] for item in args.set], args.smoke)  # fmt: skip
    runs = classifiers(setup)
    config = load_config(args.classify_config)
    for key, value in setup.overrides:
        set_by_path(config, key, parse_value(value))
    splits = sources.labelled_splits(config)
    result = evaluate(runs, splits["test"], len(sources.class_names(config)), args.replicates)
    header = (f"Test macro-F1 [95 % interval over {result['num_patients']} test patients, {result['num_test']} "
              f"images] of `{pathlib.Path(args.classify_config).name}` classifiers from random init and from Barlow "
              f"Twins (`{pathlib.Path(args.pretrain_config).name}`); * marks a paired difference whose interval "
              "excludes 0.")  # fmt: skip
    table = format_table(result)
    print(f"\n{header}\n\n{table}")
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.md").write_text(f"{header}\n\n{table}\n")
    meta = {**vars(args), "runs": {k: str(v) for k, v in runs.items()}, "wall_s": time.perf_counter() - start}
    (out / "robustness.json").write_text(json.dumps({**meta, **result}, indent=1))
    print(f"\nwrote {out / 'robustness.md'} and .json ({meta['wall_s']:.0f} s)")


if __name__ == "__main__":
    from fetalssl_jax.runtime.hugepages import reexec_with_hugepages

    reexec_with_hugepages()  # as `python -m fetalssl_jax.main` does
    main()
