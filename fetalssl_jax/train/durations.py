"""How long a run trains and how often it logs, checkpoints and evaluates, in optimiser steps.

Every duration of a config is converted to steps once, by one rule (big_vision's `steps("total" / "log" / "ckpt")`):
a run that trains `num_steps` counts every duration in steps (`*_every_steps`); a run of `num_epochs` counts them
in epochs where its config has an `*_every_epochs` key, in steps otherwise.
"""

from __future__ import annotations

import dataclasses

import ml_collections

# name -> (the key in steps, the key in epochs); "eval" is `eval.every_steps` in a pretraining config
_KEYS = {
    "total": ("num_steps", "num_epochs"),
    "log": ("log_every_steps", "log_every_epochs"),
    "checkpoint": ("checkpoint_every_steps", "checkpoint_every_epochs"),
    "eval": ("eval_every_steps", "eval_every_epochs"),
}


def _get(config: ml_collections.ConfigDict, key: str):
    node = config
    for part in key.split("."):
        if part not in node:
            return None
        node = node[part]
    return node


@dataclasses.dataclass(frozen=True)
class Durations:
    """Steps of a run: `total`, and the periods of logging, checkpoints and evaluations (0: never, but see
    `evaluations`)."""

    total: int
    log: int
    checkpoint: int
    eval: int
    steps_per_epoch: int

    def evaluations(self) -> tuple[int, ...]:
        """The steps after which a run evaluates: every `eval` steps, and always after the last one."""
        every = self.eval if self.eval > 0 else self.total
        return (*range(every, self.total, every), self.total)

    @staticmethod
    def crossed(previous: int, done: int, every: int) -> bool:
        """Whether a multiple of `every` (> 0) lies in (previous, done]."""
        return every > 0 and done // every > previous // every


def durations(config: ml_collections.ConfigDict, steps_per_epoch: int) -> Durations:
    """The durations of `config` in steps, for data of `steps_per_epoch` steps per epoch."""
    by_steps = (_get(config, "num_steps") or 0) > 0

    def steps(name: str) -> int:
        steps_key, epochs_key = _KEYS[name]
        if name == "eval" and _get(config, steps_key) is None:
            steps_key = "eval.every_steps"
        epochs = _get(config, epochs_key)
        if not by_steps and epochs is not None:
            return max(0, int(epochs * steps_per_epoch))
        return max(0, int(_get(config, steps_key) or 0))

    return Durations(steps("total"), steps("log"), steps("checkpoint"), steps("eval"), steps_per_epoch)
