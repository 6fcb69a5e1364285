"""Optimisers and learning-rate schedules, built from optax parts.

LARS follows the Barlow Twins reference exactly: g + wd * p, scaled by the trust ratio eta * |p| / |g + wd * p|,
then momentum, then the learning rate. Parameters with ndim <= 1 (biases, BatchNorm scales and offsets) form a
second group with their own learning rate and no weight decay and no trust-ratio adaptation.

AdamW is optax's. The ViT recipes (DINO) add keys that only a config that has them reads, so every other optimiser
is built exactly as before: `optim.weight_decay_end` (the decay follows a cosine from `weight_decay` at step 0 to
`weight_decay_end` at the last step), `optim.decay_biases` (False: parameters with ndim <= 1 -- biases, LayerNorm
and LayerScale -- without decay) and `optim.frozen_params` / `optim.freeze_epochs` (parameters whose path contains
one of these names keep their values for the first epochs: their learning rate is 0 then, as DINOv2 freezes the
head's last layer; their Adam moments run on) and `optim.clip_grad` (> 0: each parameter's gradient scaled down to
at most this L2 norm, as DINO's `clip_gradients`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from fetalssl_jax.validation import MISSING, Checks

Schedule = Callable[[jax.Array], jax.Array]
OPTIMIZERS = ("lars", "sgd", "adamw")
SCHEDULES = ("warmup_cosine", "step")
VIT_ADAMW_KEYS = (
    "weight_decay_end",
    "decay_biases",
    "frozen_params",
    "freeze_epochs",
    "clip_grad",
)  # read only where present


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
    c.non_negative_number("optim.weight_decay_end")
    c.boolean("optim.decay_biases")
    c.non_negative_number("optim.freeze_epochs")
    c.non_negative_number("optim.clip_grad")
    frozen = c.get("optim.frozen_params")
    if frozen is not MISSING and not (
        isinstance(frozen, Sequence) and not isinstance(frozen, str) and all(isinstance(n, str) and n for n in frozen)
    ):
        c.fail("optim.frozen_params", frozen, "must be a sequence of parameter names, e.g. ('head/last_layer',)")
    present = [k for k in VIT_ADAMW_KEYS if c.get(f"optim.{k}") is not MISSING]
    if present and c.get("optim.name") not in (MISSING, "adamw"):
        c.fail("optim.name", c.get("optim.name"), f"must be 'adamw' with optim.{present[0]} (an AdamW setting)")


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


def cosine_between(start: float, end: float, total_steps: int) -> Schedule:
    """`start` at step 0 along a half cosine to `end` at `total_steps` (and after): DINO's weight-decay schedule."""
    total = float(max(int(total_steps), 1))

    def schedule(step):
        progress = jnp.minimum(jnp.asarray(step, jnp.float32), total) / total
        return end + 0.5 * (start - end) * (1.0 + jnp.cos(jnp.pi * progress))

    return schedule


def clip_each(max_norm: float) -> optax.GradientTransformation:
    """Each gradient leaf scaled by min(1, max_norm / (||g|| + 1e-6)): DINO's per-parameter `clip_gradients`."""

    def clip(updates, params=None):
        del params
        return jax.tree.map(lambda g: g * jnp.minimum(1.0, max_norm / (jnp.linalg.norm(g) + 1e-6)), updates)

    return optax.stateless(clip)


def path_mask(names: Sequence[str]) -> Callable:
    """A mask function over a parameter tree: True where the leaf's path ('head/last_layer/kernel') contains one of
    `names`."""

    def mask(params):
        def matches(path, _):
            joined = "/".join(str(getattr(k, "key", k)) for k in path)
            return any(name in joined for name in names)

        return jax.tree_util.tree_map_with_path(matches, params)

    return mask


def adamw(optim: ml_collections.ConfigDict, schedule: Schedule, steps_per_epoch: int, total_steps: int) -> Optimizer:
    """optax's AdamW with `schedule`; with the `VIT_ADAMW_KEYS` a cosine weight decay, no decay of ndim <= 1
    parameters and frozen parameters for the first epochs (see the module docstring)."""
    b2 = optim.get("adam_b2", 0.999)  # Adam's second-moment decay: MAE's 0.95, optax's 0.999 by default
    if not any(key in optim for key in VIT_ADAMW_KEYS):
        return Optimizer(optax.adamw(schedule, b2=b2, weight_decay=optim.weight_decay), {"lr": schedule})
    decay = cosine_between(optim.weight_decay, optim.get("weight_decay_end", optim.weight_decay), total_steps)
    no_bias_decay = (
        (lambda params: jax.tree.map(lambda p: p.ndim > 1, params)) if not optim.get("decay_biases", True) else None
    )
    parts = [clip_each(optim.clip_grad)] if optim.get("clip_grad", 0.0) > 0 else []
    parts.append(optax.adamw(schedule, b2=b2, weight_decay=decay, mask=no_bias_decay))
    freeze_steps = round(optim.get("freeze_epochs", 0.0) * steps_per_epoch)
    if optim.get("frozen_params", ()) and freeze_steps > 0:
        thawed = lambda step: (jnp.asarray(step) >= freeze_steps).astype(jnp.float32)  # noqa: E731
        parts.append(optax.masked(optax.scale_by_schedule(thawed), path_mask(tuple(optim.frozen_params))))
    return Optimizer(optax.chain(*parts), {"lr": schedule, "weight_decay": decay})


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
        return adamw(optim, schedule, steps_per_epoch, total_steps)
    else:
        raise ValueError(f"unknown optimiser {optim.name!r}; choose one of {OPTIMIZERS}")
    return Optimizer(tx, {"lr": schedule})
