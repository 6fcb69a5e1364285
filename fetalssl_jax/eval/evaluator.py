"""The frozen-backbone evaluation of a pretraining run, always beside its two baselines.

kNN and few-label probes on the labelled splits, beside the random init of the backbone's family (torchvision's
default init of a ResNet, timm's of a ViT: the row says which) and the method's own untrained start (a ResNet's with
zero-initialised residual BatchNorm), so that an effect of the initialisation is never mistaken for learning. The
baselines' features are extracted once per run.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import ml_collections
import numpy as np

from fetalssl_jax.data import sources
from fetalssl_jax.eval.frozen import FrozenEval, evaluate_inits
from fetalssl_jax.models.backbone import is_vit, random_variables
from fetalssl_jax.validation import Checks

RANDOM_INIT = "random init (torchvision)"  # the random-init row of a ResNet ...
RANDOM_INIT_VIT = "random init (timm)"  # ... and of a ViT: `random_init_name`
SSL_START = "untrained SSL start"


def random_init_name(model: Mapping[str, Any]) -> str:
    """The name of the random-init row for the backbone `model` (a config's `model` keys): whose init it is."""
    return RANDOM_INIT_VIT if is_vit(model["arch"]) else RANDOM_INIT


def check_config(c: Checks) -> None:
    """Adds the problems of the evaluation keys (`eval.*`) to `c`."""
    for key in ("eval.knn_k", "eval.draws", "eval.batch_size", "eval.probe_max_iter"):
        c.integer(key)
    c.integer("eval.every_steps", -1, "<= 0: only at the end")
    c.integers("eval.shots", 0, why="0: all labels")
    c.integers("eval.monitor_shots", 0, why="0: all labels")
    c.boolean("eval.compare_random_init")


class Evaluator:
    """Evaluates backbone variables of `backbone` on `config`'s labelled splits (`config.eval`), beside the baselines
    (without `eval.compare_random_init`: none). `start_variables` are the run's untrained start."""

    def __init__(self, config: ml_collections.ConfigDict, backbone: nn.Module, start_variables: dict[str, Any]):
        self.config = config
        self.backbone = backbone
        self.start_variables = start_variables
        self._baseline_features: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @functools.cached_property
    def splits(self):
        return sources.labelled_splits(self.config)

    @functools.cached_property
    def baselines(self) -> dict[str, dict[str, Any]]:
        """The baselines' variables, made once per run."""
        if not self.config.eval.compare_random_init:
            return {}
        random = random_variables(self.config.model, self.config.data.image_size, self.config.seed)
        return {self.random_init: random, SSL_START: self.start_variables}

    @property
    def random_init(self) -> str:
        """The name of the random-init row (`random_init_name`)."""
        return random_init_name(self.config.model)

    def __call__(self, variables: dict[str, Any], name: str, shots: tuple[int, ...] | None = None) -> FrozenEval:
        """The evaluation of `variables` (host arrays), its row named `name`, and of the baselines."""
        e = self.config.eval
        inits = {name: variables, **self.baselines}
        result = evaluate_inits(
            self.backbone, inits, self.splits, self.config.data.image_size, len(sources.class_names(self.config)),
            baselines=tuple(n for n in (self.random_init, SSL_START) if n in inits), knn_k=e.knn_k,
            batch_size=e.batch_size, shots=tuple(shots or e.shots), draws=e.draws, seed=self.config.seed,
            probe_max_iter=e.probe_max_iter, features=self._baseline_features,
        )  # fmt: skip
        if not self._baseline_features and len(inits) > 1:
            self._baseline_features = {n: f for n, f in result.features.items() if n in self.baselines}
        return result
