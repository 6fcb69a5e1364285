"""Knowledge distillation: a frozen teacher backbone teaches a small student on unlabelled frames.

The teacher is any backbone the project loads (`method_kwargs.teacher`: a pretraining workdir or its exported
backbone, a classification run's fine-tuned backbone, a torchvision / timm weights file), run in inference mode
(BatchNorm running statistics). Both views of a frame (`augment.view1`, `view2`) go to the student *and* to the
teacher: the teacher sees exactly the pixels the student sees ("consistent teaching", Beyer et al. 2022, as
LightlyTrain's distillation), on the views at the teacher's input size. The student's pooled features pass through a
projector (`projector`: hidden sizes, then a linear layer to the teacher's feature dimension D) and regress the
teacher's pooled features, per view:

    cosine:     1 - cos(p, t)                                 mean over the views of the global batch
    smooth_l1:  smooth_l1(p^ - t^, beta), x^ = sqrt(D) x/|x|   mean over the views and the D dimensions

(x^: each row at unit RMS, so that `beta` is on the scale of one feature.) The teacher's variables are the method's
extra state (`extra["teacher"]`): beside the train state, replicated and checkpointed with it, never seen by the
optimiser; the step returns them unchanged, so donating the old state recycles their buffers without a copy. Its
identity (architecture, input size, the SHA-256 of its weights) is part of the run's fingerprint
(`external_inputs`): a resume with another teacher is refused.

The forms of a teacher are read by loaders that sit above this layer (they read classification runs too):
`configs/distill.py` installs them with `set_teacher_loader` (`apply.loading.load_backbone`,
`apply.outputs.model_identity`).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fetalssl_jax.errors import UserError
from fetalssl_jax.methods.base import Method, apply_model, l2_normalize, register
from fetalssl_jax.models.heads import TwoViewEmbedder
from fetalssl_jax.validation import Checks, is_int

LOSSES = ("cosine", "smooth_l1")


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A frozen backbone: its module, variables (host arrays), input size, where it came from and what it is."""

    module: nn.Module
    variables: dict[str, Any]
    image_size: int
    source: str
    identity: dict[str, Any]

    @property
    def num_features(self) -> int:
        return int(self.module.num_features)


_LOADER: dict[str, Callable[..., Any]] = {}


def set_teacher_loader(load: Callable[..., Any], identify: Callable[[Any], dict[str, Any]]) -> None:
    """Installs how a teacher is read: `load(path, image_size=None | int)` returns a backbone with `module`,
    `variables`, `image_size` and `source` (`apply.loading.load_backbone`), or raises a UserError naming the path;
    `identify(backbone)` is what it is, its weights' digest included (`apply.outputs.model_identity`)."""
    _LOADER.update(load=load, identify=identify)


def load_teacher(spec: str, image_size: int = 0, fallback_size: int = 0) -> Teacher:
    """The teacher at `spec` for inputs of `image_size` (0: the size its files record; a weights file records
    none and gets `fallback_size`, the student's input size)."""
    if not _LOADER:
        raise UserError(
            "no teacher loader is installed: build a distillation config with configs/distill.py, or call "
            "fetalssl_jax.methods.distill.set_teacher_loader(apply.loading.load_backbone, apply.outputs.model_identity)"
        )
    size = image_size or (fallback_size if pathlib.Path(spec).expanduser().is_file() else 0)
    backbone = _LOADER["load"](spec, image_size=size or None)
    return Teacher(backbone.module, backbone.variables, int(backbone.image_size), str(backbone.source),
                   dict(_LOADER["identify"](backbone)))  # fmt: skip


def _config_teacher(config: Any) -> Teacher:
    kwargs = config["method_kwargs"]
    return load_teacher(str(kwargs["teacher"]).strip(), int(kwargs["teacher_image_size"]),
                        int(config["data"]["image_size"]))  # fmt: skip


def unit_rms(x: jax.Array) -> jax.Array:
    """Rows scaled to unit root-mean-square (L2 norm sqrt(D)), float32."""
    return l2_normalize(x) * jnp.sqrt(jnp.float32(x.shape[-1]))


def distillation_loss(student: jax.Array, teacher: jax.Array, kind: str = "cosine", beta: float = 1.0) -> jax.Array:
    """The loss of projected student features against teacher features, both [N, D] (see the module docstring)."""
    if kind == "cosine":
        return jnp.mean(1.0 - jnp.sum(l2_normalize(student) * l2_normalize(teacher), axis=-1))
    if kind == "smooth_l1":
        diff = jnp.abs(unit_rms(student) - unit_rms(teacher))
        return jnp.mean(jnp.where(diff < beta, 0.5 * diff**2 / beta, diff - 0.5 * beta))
    raise ValueError(f"unknown distillation loss {kind!r}; choose one of {LOSSES}")


@register
class Distill(Method):
    """Distillation; `method_kwargs`: teacher (path), teacher_image_size (0: recorded), loss ('cosine' or
    'smooth_l1'), beta (smooth_l1's transition), projector (hidden sizes of the student's head; () = linear)."""

    name = "distill"
    from_scratch = False

    def __init__(self, config, total_steps: int = 1):
        super().__init__(config, total_steps)
        self.teacher = _config_teacher(config)
        module = self.teacher.module
        # the teacher computes in the student's dtype (parameters stay float32), as the student does
        self.teacher_module = module.clone(dtype=self.dtype) if hasattr(module, "dtype") else module

    @classmethod
    def check_config(cls, c: Checks) -> None:
        before = len(c.problems)
        c.text("method_kwargs.teacher", "the teacher: a pretraining workdir, an exported backbone, a classification "
               "run or a .safetensors/.npz weights file")  # fmt: skip
        c.integer("method_kwargs.teacher_image_size", 0, "0: the size the teacher's files record")
        c.one_of("method_kwargs.loss", LOSSES)
        c.positive_number("method_kwargs.beta")
        c.integers("method_kwargs.projector", 1, why="hidden sizes of the student's head; () = one linear layer")
        if len(c.problems) > before or not is_int(c.get("data.image_size")):
            return  # the teacher is read only with settings that can read it
        try:
            _config_teacher(c.config)
        except (UserError, OSError, ValueError) as error:
            message = " ".join(str(error).split())
            c.fail("method_kwargs.teacher", c.get("method_kwargs.teacher"), f"cannot be read as a teacher: {message}")

    @classmethod
    def external_inputs(cls, config) -> dict[str, Any]:
        teacher = _config_teacher(config)
        return {f"inputs.teacher.{k}": v for k, v in teacher.identity.items()}

    def build_model(self) -> nn.Module:
        sizes = (*self.kwargs.projector, self.teacher.num_features)
        return TwoViewEmbedder(self.build_backbone(), sizes, head_bias=True, dtype=self.dtype)

    def make_inputs(self, rng, frames):
        return self.two_views(rng, frames)

    def init_extra_state(self, variables):
        del variables
        return {"teacher": self.teacher.variables}

    def teacher_features(self, teacher_variables: dict[str, Any], views: jax.Array) -> jax.Array:
        """The frozen teacher's pooled features [N, D] of normalised views [N, S, S, 3], at its input size."""
        size = self.teacher.image_size
        if views.shape[1:3] != (size, size):
            views = jax.image.resize(views, (views.shape[0], size, size, views.shape[3]), "bilinear")
        features = self.teacher_module.apply(teacher_variables, views, train=False)
        return jax.lax.stop_gradient(features.astype(jnp.float32))

    def loss_fn(self, params, model_state, extra, inputs, rng, step):
        del step
        (p1, p2), model_state = apply_model(self.build_model(), params, model_state, inputs, train=True, rng=rng)
        student = jnp.concatenate([p1, p2])
        teacher = jnp.concatenate([self.teacher_features(extra["teacher"], x) for x in inputs])
        loss = distillation_loss(student, teacher, self.kwargs.loss, self.kwargs.beta)
        cosine = jnp.mean(jnp.sum(l2_normalize(student) * l2_normalize(teacher), axis=-1))
        return loss, (model_state, extra, {"cosine_to_teacher": cosine})

    def identity(self) -> dict[str, Any]:
        return {**super().identity(), "teacher": {"source": self.teacher.source, **self.teacher.identity}}


def default_kwargs(teacher: str = "", projector: Sequence[int] = (), loss: str = "cosine", beta: float = 1.0) -> dict:
    """`method_kwargs` of a distillation config."""
    return {"teacher": teacher, "teacher_image_size": 0, "loss": loss, "beta": beta, "projector": tuple(projector)}
