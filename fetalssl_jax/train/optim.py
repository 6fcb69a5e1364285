"""Optimisers and learning-rate schedules, built from optax parts.

LARS follows the Barlow Twins reference exactly: g + wd * p, scaled by the trust ratio eta * |p| / |g + wd * p|,
then momentum, then the learning rate. Parameters with ndim <= 1 (biases, BatchNorm scales and offsets) form a
second group with their own learning rate and no weight decay and no trust-ratio adaptation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import ml_collections
import optax

from fetalssl_jax.validation import Checks

Schedule = Callable[[jax.Array], jax.Array]
OPTIMIZERS = ("lars", "sgd", "adamw")
SCHEDULES = ("warmup_cosine", "step")


def check_config(c: Checks) -> None:
    """Adds the problems of `optim.*` to `c`: names, learning rates, decay, momentum and schedule."""
    c.one_of("optim.name", OPTIMIZERS)
    c.one_of("optim.schedule", SCHEDULES)
    c.positive_number("optim.lr_weights")
    c.non_negative_number("optim.lr_biases")
    c.non_negative_number("optim.weight_decay")
    c.below_one("optim.momentum")
    c.positive_number("optim.trust_coefficient")
    c.non_negative_number("optim.warmup_epochs")
    c.probability("optim.end_lr_factor")
    c.boolean("optim.lr_batch_scaling")
    c.below_one("optim.adam_b2")
    if c.get("optim.schedule") == "step":
        c.positive_number("optim.step_decay_epochs")
        c.positive_number("optim.step_decay_factor")


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """The optax transformation and its learning-rate schedules, by parameter group, for logging."""

    tx: optax.GradientTransformation
    schedules: dict[str, Schedule]


def param_groups(params) -> dict:
    """'biases' for parameters with ndim <= 1 (biases and norm parameters), 'weights' for the rest."""
    return jax.tree.map(lambda p: "biases" if p.ndim <= 1 else "weights", params)


def warmup_cosine(peak: float, total_steps: int, warmup_steps: int, end_factor: float) -> Schedule:
    """Linear warm-up from 0 to `peak`, then cosine down to `peak * end_factor` at `total_steps`."""
    total_steps = max(int(total_steps), 1)
    warmup_steps = min(max(int(warmup_steps), 0), total_steps - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=peak,
        warmup_steps=warmup_steps,
        decay_steps=total_steps,
        end_value=peak * end_factor,
    )


def step_decay(peak: float, steps_per_epoch: int, every_epochs: float, factor: float) -> Schedule:
    """`peak`, multiplied by `factor` every `every_epochs` epochs (the reference autoencoders' StepLR)."""
    every = max(1, round(every_epochs * steps_per_epoch))
    return optax.exponential_decay(peak, transition_steps=every, decay_rate=factor, staircase=True)


def make_schedule(optim: ml_collections.ConfigDict, peak: float, steps_per_epoch: int, total_steps: int) -> Schedule:
    """The learning-rate schedule named by `optim.schedule`, peaking at `peak`."""
    if optim.schedule == "warmup_cosine":
        warmup = round(optim.warmup_epochs * steps_per_epoch)
        return warmup_cosine(peak, total_steps, warmup, optim.end_lr_factor)
    if optim.schedule == "step":
        return step_decay(peak, steps_per_epoch, optim.step_decay_epochs, optim.step_decay_factor)
    raise ValueError(f"unknown schedule {optim.schedule!r}; choose one of {SCHEDULES}")


def lars_group(schedule: Schedule, weight_decay: float, momentum: float, trust_coefficient: float, adapt: bool):
    """One LARS parameter group (reference order: decay, trust ratio, momentum, learning rate)."""
    parts = []
    if adapt:
        parts += [
            optax.add_decayed_weights(weight_decay),
            optax.scale_by_trust_ratio(trust_coefficient=trust_coefficient),
        ]
    parts += [optax.trace(decay=momentum), optax.scale_by_learning_rate(schedule)]
    return optax.chain(*parts)


def make_optimizer(
    optim: ml_collections.ConfigDict, batch_size: int, steps_per_epoch: int, total_steps: int
) -> Optimizer:
    """The optimiser named by `optim.name` ('lars', 'sgd' or 'adamw').

    With `optim.lr_batch_scaling` the learning rates are base rates multiplied by batch/256 (the LARS methods'
    convention); without, they are used as given (the references' AdamW and SGD settings)."""
    scale = batch_size / 256.0 if optim.lr_batch_scaling else 1.0
    if optim.name == "lars":
        weights = make_schedule(optim, optim.lr_weights * scale, steps_per_epoch, total_steps)
        biases = make_schedule(optim, optim.lr_biases * scale, steps_per_epoch, total_steps)
        tx = optax.multi_transform(
            {
                "weights": lars_group(weights, optim.weight_decay, optim.momentum, optim.trust_coefficient, True),
                "biases": lars_group(biases, optim.weight_decay, optim.momentum, optim.trust_coefficient, False),
            },
            param_groups,
        )
        return Optimizer(tx, {"lr": weights, "lr_biases": biases})
    schedule = make_schedule(optim, optim.lr_weights * scale, steps_per_epoch, total_steps)
    if optim.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(optim.weight_decay),
            optax.sgd(schedule, momentum=optim.momentum),
        )
    elif optim.name == "adamw":
        # adam_b2: a config may set Adam's second-moment decay (MAE: 0.95); optax's 0.999 otherwise
        tx = optax.adamw(schedule, b2=optim.get("adam_b2", 0.999), weight_decay=optim.weight_decay)
    else:
        raise ValueError(f"unknown optimiser {optim.name!r}; choose one of {OPTIMIZERS}")
    return Optimizer(tx, {"lr": schedule})
