"""The interface every pretraining method implements, and the registry that finds it by name.

A method owns what differs between SSL objectives: its settings (`method_kwargs`, declared by its module's
`default_kwargs` and checked by `check_config`), its model (backbone + heads), how it makes views from the uint8
frames on the device, its loss, and any extra state (EMA target, queue). The train loop, sharding, optimiser,
checkpointing and evaluation are shared. Adding a method is one new module that subclasses `Method` and is decorated
with `@register`, plus one config in `configs/`.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from fetalssl_jax.data.augment import augment_batch
from fetalssl_jax.models.backbone import create_backbone, description
from fetalssl_jax.models.heads import TwoViewEmbedder
from fetalssl_jax.validation import Checks

PyTree = Any
Metrics = dict[str, jax.Array]

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: makes a method available as `config.method = cls.name`."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} has no `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"method name {cls.name!r} is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registered_methods() -> list[str]:
    """Names of all registered methods."""
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    """The method class registered under `name`; a clear error lists the known ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; registered methods: {registered_methods()}") from None


class Method(abc.ABC):
    """Base class of a pretraining method.

    The variables of `build_model()` must hold the backbone under the collection key `backbone`, so that
    evaluation and export find it the same way for every method.
    """

    name: ClassVar[str] = ""
    # False: the method learns from another trained model (distillation), which must exist first; it is then no row
    # of the comparisons that pretrain every method from the data alone (the paper's grid, pretrain_all)
    from_scratch: ClassVar[bool] = True

    def __init__(self, config: ml_collections.ConfigDict, total_steps: int = 1):
        self.config = config
        self.total_steps = max(1, int(total_steps))  # for schedules inside the method (EMA momentum)
        self.kwargs = config.method_kwargs
        self.dtype = jnp.dtype(config.model.dtype)

    # ---- settings ----------------------------------------------------------------------------------------------
    @classmethod  # noqa: B027 - not abstract: a method without settings has nothing to check
    def check_config(cls, c: Checks) -> None:
        """Adds to `c` the problems of the keys this method reads: its `method_kwargs`, and what it needs of the
        rest of the config (a clip length, say). Called before the method is built, so that the constructor never
        sees a value it cannot use."""

    @classmethod
    def example_mode(cls, config: ml_collections.ConfigDict) -> str:
        """What one training example is (see `BatchSampler`): 'frames' (views of one frame), 'pairs' (two frames
        of a video up to `data.max_gap` apart) or 'clips' (`data.clip_length` frames). Default: pairs if
        `data.max_gap` > 0, else single frames."""
        return "pairs" if config.data.max_gap > 0 else "frames"

    @classmethod
    def external_inputs(cls, config: ml_collections.ConfigDict) -> dict[str, Any]:
        """What a run reads beyond its config and its data (a distillation teacher's weights), as {dotted key: JSON
        value}: part of the run's fingerprint, so that a resume with other inputs is refused. Default: nothing."""
        del config
        return {}

    # ---- model -------------------------------------------------------------------------------------------------
    def build_backbone(self) -> nn.Module:
        """The backbone named by `config.model` (a ResNet or a ViT, `models.backbone`)."""
        return create_backbone(self.config.model, self.config.data.image_size)

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """The trainable module; its submodule `backbone` is the ResNet that downstream tasks reuse."""

    def init_variables(self, rng: jax.Array, inputs: PyTree) -> dict[str, PyTree]:
        """Initial `params` and `batch_stats` from example inputs (the output of `make_inputs`)."""
        return dict(self.build_model().init(rng, inputs, train=True))

    def init_extra_state(self, variables: dict[str, PyTree]) -> PyTree:
        """State beside the parameters that is not trained by gradients (EMA target, queue). Default: none."""
        del variables
        return {}

    # ---- data --------------------------------------------------------------------------------------------------
    @property
    def frames_per_example(self) -> int:
        """V, the number of frames of one example."""
        mode = self.example_mode(self.config)
        return self.config.data.clip_length if mode == "clips" else {"frames": 1, "pairs": 2}[mode]

    def two_views(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        """`config.augment.view1` of the first frame and `view2` of the last (the same frame, or a temporal pair)."""
        rng1, rng2 = jax.random.split(rng)
        size = self.config.data.image_size
        x1 = augment_batch(rng1, frames[:, 0], self.config.augment.view1.to_dict(), size)
        x2 = augment_batch(rng2, frames[:, -1], self.config.augment.view2.to_dict(), size)
        return x1.astype(self.dtype), x2.astype(self.dtype)

    @abc.abstractmethod
    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> PyTree:
        """Views made on the device from uint8 frames [B, V, H, W, C] (V: 1, 2 or clip_length, by `example_mode`)."""

    def step_inputs(self, rng: jax.Array, batch: dict[str, jax.Array]) -> PyTree:
        """What the train step feeds `loss_fn`, from the device batch: the views of `batch["frames"]`."""
        return self.make_inputs(rng, batch["frames"])

    # ---- loss --------------------------------------------------------------------------------------------------
    @abc.abstractmethod
    def loss_fn(
        self,
        params: PyTree,
        model_state: PyTree,
        extra: PyTree,
        inputs: PyTree,
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, tuple[PyTree, PyTree, Metrics]]:
        """Loss on the *global* batch; returns (loss, (new model_state, new extra, metrics)).

        Called inside one jit over a device mesh with the batch sharded: reductions over the batch axis (BN
        statistics, cross-correlations, negatives) are global, as if on one device.
        """

    def after_update(self, extra: PyTree, params: PyTree, model_state: PyTree, step: jax.Array) -> PyTree:
        """Updates the extra state after the optimiser step, from the updated parameters and the BatchNorm
        statistics of this step (e.g. the EMA target). Default: unchanged."""
        del params, model_state, step
        return extra

    # ---- bookkeeping ---------------------------------------------------------------------------------------------
    def identity(self) -> dict[str, Any]:
        """Method and architecture, as the exported backbone describes them."""
        return {"method": self.name, **description(self.config.model), "method_kwargs": self.kwargs.to_dict()}


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Rows scaled to unit L2 norm (float32), as torch.nn.functional.normalize."""
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def apply_model(
    model: nn.Module, params: PyTree, model_state: PyTree, *args: Any, train: bool = True,
    rng: jax.Array | None = None, **kwargs: Any,
) -> tuple[Any, PyTree]:  # fmt: skip
    """Applies a module with BatchNorm; returns (output, updated model_state) (model_state unchanged in eval).
    `rng`: the 'dropout' stream (a ViT's stochastic depth) when training."""
    if rng is not None and train:
        kwargs["rngs"] = {**kwargs.get("rngs", {}), "dropout": rng}
    variables = {"params": params, **model_state}
    if train and model_state:
        out, updates = model.apply(variables, *args, train=True, mutable=list(model_state), **kwargs)
        return out, dict(updates)
    return model.apply(variables, *args, train=train, **kwargs), model_state


class TwoViewMethod(Method):
    """A joint-embedding method: two augmented views -> shared backbone + projector -> a loss of (z1, z2).

    Subclasses set `head_bias` and implement `embedding_loss`; `method_kwargs.projector` gives the head sizes and
    `config.augment.view1` / `view2` the two views' augmentations.
    """

    head_bias: ClassVar[bool] = False

    @classmethod
    def check_config(cls, c: Checks) -> None:
        c.integers("method_kwargs.projector", 1, non_empty=True, why="the projector's layer sizes")

    def build_model(self) -> nn.Module:
        return TwoViewEmbedder(self.build_backbone(), tuple(self.kwargs.projector), self.head_bias, self.dtype)

    def make_inputs(self, rng: jax.Array, frames: jax.Array) -> tuple[jax.Array, jax.Array]:
        return self.two_views(rng, frames)

    @abc.abstractmethod
    def embedding_loss(self, z1: jax.Array, z2: jax.Array) -> tuple[jax.Array, Metrics]:
        """The loss of the two views' embeddings [N, D] of the global batch, and extra metrics to log."""

    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        del step
        (z1, z2), model_state = apply_model(self.build_model(), params, model_state, inputs, train=True, rng=rng)
        loss, metrics = self.embedding_loss(z1, z2)
        return loss, (model_state, extra, metrics)
