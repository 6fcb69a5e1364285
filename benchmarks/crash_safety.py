"""Kill -9 trials: `python benchmarks/crash_safety.py --trials 10 [--seed 0]`.

Each trial runs the CLI on the tiny Barlow Twins preset (12 steps, a checkpoint every 2), kills it with SIGKILL at a
random point of a step or while orbax writes a checkpoint (alternately), checks that the newest complete checkpoint
is the one loaded, restarts the run to the end and compares its losses with an uninterrupted run's (exactly).
Prints one line per trial and exits 1 if any trial fails. tests/train/test_crash_safety.py runs two such trials.
"""

from __future__ import annotations

import argparse
import pathlib
import random
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "tests"))

from conftest import tiny_config  # noqa: E402
from crash_check import CHECKPOINT_EVERY, OVERRIDES, checkpoint_entries, kill_trial  # noqa: E402

from fetalssl_jax.train.checkpoint import Checkpointer  # noqa: E402
from fetalssl_jax.train.loop import train  # noqa: E402
from fetalssl_jax.train.monitor import read_metrics  # noqa: E402

TOTAL_STEPS = 12


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = pathlib.Path(tempfile.mkdtemp(prefix="crash_safety_"))
    cache = root / "xla"
    config = tiny_config(**OVERRIDES, compilation_cache_dir=str(cache))
    train(config, root / "reference", stop_at_step=TOTAL_STEPS)
    expected = [r["loss"] for r in read_metrics(root / "reference")]
    failures = 0
    for i in range(args.trials):
        mode = ("step", "checkpoint")[i % 2]
        workdir = root / f"trial{i}"
        start = time.perf_counter()
        trial = kill_trial(workdir, cache, mode, rng, TOTAL_STEPS)
        complete = sorted(int(n) for n in checkpoint_entries(workdir) if n.isdigit())
        newest = Checkpointer(workdir, {}).latest_step()
        ok = newest == (complete[-1] if complete else None)
        if trial["mid_write"]:
            writing = next(int(n.split(".")[0]) for n in trial["entries"] if "tmp" in n)
            ok &= newest == (writing - CHECKPOINT_EVERY or None)  # the previous one, if any, is intact
        train(config, workdir, stop_at_step=TOTAL_STEPS)
        same = [r["loss"] for r in read_metrics(workdir)] == expected
        failures += not (ok and same)
        print(
            f"trial {i}: kill during a {mode:10s} after {trial['logged_steps']:2d} logged steps, "
            f"{'inside a checkpoint write' if trial['mid_write'] else 'no write in progress':26s} "
            f"newest complete checkpoint {newest} ({'ok' if ok else 'WRONG'}), losses after restart "
            f"{'equal' if same else 'DIFFER'} ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    print(f"{args.trials - failures}/{args.trials} trials passed; workdirs in {root}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
