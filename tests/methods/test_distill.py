"""Distillation (methods/distill.py): a tiny Barlow Twins run teaches a tiny student end to end; the loss is the numpy
formula of the teacher's and the student's features; the teacher never changes; its settings are checked; a resume
with another teacher is refused; the student exports to ONNX like any backbone."""

import json

import jax
import numpy as np
import pytest
from conftest import REPO, tiny_config

from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.main import validate
from fetalssl_jax.methods import get_method
from fetalssl_jax.methods.distill import distillation_loss
from fetalssl_jax.models.backbone import create_backbone
from fetalssl_jax.models.heads import MLPHead
from fetalssl_jax.runtime.sharding import batch_sharding, make_mesh
from fetalssl_jax.train.checkpoint import export_backbone, load_backbone
from fetalssl_jax.train.fingerprint import WorkdirMismatchError
from fetalssl_jax.train.loop import train
from fetalssl_jax.train.monitor import read_metrics
from fetalssl_jax.train.optim import make_optimizer
from fetalssl_jax.train.step import init_state, make_train_step
from fetalssl_jax.validation import ConfigError


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny Barlow Twins run (resnet10 w8 at 32 px, 8 steps): the teacher's workdir."""
    workdir = tmp_path_factory.mktemp("teacher")
    train(tiny_config(num_steps=8, **{"eval.compare_random_init": False}), workdir)
    return workdir


def distill_config(teacher_path, **overrides):
    config = load_config(f"{REPO / 'configs' / 'distill.py'}:tiny")
    set_by_path(config, "method_kwargs.teacher", str(teacher_path))
    set_by_path(config, "eval.compare_random_init", False)
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return config


def numpy_loss(student, teacher, kind, beta=1.0):
    s, t = np.asarray(student, np.float64), np.asarray(teacher, np.float64)
    if kind == "cosine":
        cos = np.sum(s * t, 1) / (np.linalg.norm(s, axis=1) * np.linalg.norm(t, axis=1))
        return np.mean(1 - cos)
    d = s.shape[1]
    s = s / np.linalg.norm(s, axis=1, keepdims=True) * np.sqrt(d)
    t = t / np.linalg.norm(t, axis=1, keepdims=True) * np.sqrt(d)
    x = np.abs(s - t)
    return np.mean(np.where(x < beta, 0.5 * x**2 / beta, x - 0.5 * beta))


@pytest.mark.parametrize(("kind", "beta"), [("cosine", 1.0), ("smooth_l1", 1.0), ("smooth_l1", 0.3)])
def test_loss_is_the_numpy_formula(kind, beta):
    rng = np.random.default_rng(0)
    student, teacher = rng.standard_normal((2, 12, 24)).astype(np.float32)
    got = float(distillation_loss(student, teacher, kind, beta))
    np.testing.assert_allclose(got, numpy_loss(student, teacher, kind, beta), rtol=1e-5)
    assert float(distillation_loss(teacher, teacher, kind, beta)) == pytest.approx(0.0, abs=1e-6)


def _steps(config, num_steps):
    """The method, its initial state's teacher (host copy) and the states and losses of `num_steps` train steps."""
    method = get_method("distill")(config, num_steps)
    mesh = make_mesh()
    optimizer = make_optimizer(config.optim, config.batch_size, 1, num_steps)
    frames = np.random.default_rng(0).integers(0, 256, (config.batch_size, 1, 32, 32, 1), dtype=np.uint8)
    batch = {"frames": jax.device_put(frames, batch_sharding(mesh))}
    state = init_state(method, optimizer, config.seed, batch["frames"], mesh)
    start_params = jax.device_get(state.params)
    step = make_train_step(method, optimizer, mesh)
    buffers = [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(state.extra)]
    losses = []
    for _ in range(num_steps):
        state, metrics = step(state, batch)  # the old state is donated
        losses.append(float(metrics["loss"]))
        # the unchanged teacher is handed on in the donated buffers: no copy, no second teacher in memory
        assert [leaf.unsafe_buffer_pointer() for leaf in jax.tree.leaves(state.extra)] == buffers
    return method, start_params, state, losses, batch


def test_teacher_is_frozen_and_the_student_learns(teacher):
    config = distill_config(teacher, **{"optim.lr_weights": 3.0})  # 12 steps, one of warm-up
    method, start_params, state, losses, _ = _steps(config, 12)
    saved, _ = load_backbone(teacher / "backbone")
    kept = jax.device_get(state.extra["teacher"])
    assert jax.tree.structure(kept) == jax.tree.structure(saved)
    for a, b in zip(jax.tree.leaves(kept), jax.tree.leaves(saved), strict=True):
        np.testing.assert_array_equal(a, b)  # bit for bit, after 12 donated steps
    assert "teacher" not in state.params and "teacher" not in jax.tree_util.keystr(state.opt_state)
    moved = jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()), state.params, start_params)
    assert max(jax.tree.leaves(moved["backbone"])) > 0
    assert all(np.isfinite(losses)) and np.mean(losses[-3:]) < 0.85 * losses[0], losses


def test_the_step_loss_is_the_formula_of_both_networks(teacher):
    """The loss of one step, from an independent forward of the exported teacher (inference mode) and of the student
    (train mode) on the same views."""
    config = distill_config(teacher, **{"method_kwargs.loss": "smooth_l1", "method_kwargs.projector": (16,)})
    method = get_method("distill")(config, 1)
    frames = np.random.default_rng(1).integers(0, 256, (8, 1, 32, 32, 1), dtype=np.uint8)
    views = method.make_inputs(jax.random.PRNGKey(3), frames)
    variables = method.init_variables(jax.random.key(0, impl="rbg"), views)
    params, state = variables.pop("params"), variables
    extra = method.init_extra_state({"params": params, **state})
    loss, (_, _, metrics) = method.loss_fn(params, state, extra, views, jax.random.PRNGKey(0), 0)

    teacher_vars, description = load_backbone(teacher / "backbone")
    teacher_net = create_backbone({"arch": "resnet10", "width": 8}, 32)
    student_net = create_backbone(config.model, 32)
    head = MLPHead((16, teacher_net.num_features), use_bias=True)
    student, want = [], []
    for x in views:
        want.append(teacher_net.apply(teacher_vars, x, train=False))
        feats, _ = student_net.apply({"params": params["backbone"], "batch_stats": state["batch_stats"]["backbone"]},
                                     x, train=True, mutable=["batch_stats"])  # fmt: skip
        out, _ = head.apply({"params": params["projector"], "batch_stats": state["batch_stats"]["projector"]}, feats,
                            train=True, mutable=["batch_stats"])  # fmt: skip
        student.append(out)
    student, want = np.concatenate(student), np.concatenate(want)
    assert description["identity"]["method"] == "barlow_twins"
    np.testing.assert_allclose(float(loss), numpy_loss(student, want, "smooth_l1"), rtol=1e-4)
    cos = np.sum(student * want, 1) / np.linalg.norm(student, axis=1) / np.linalg.norm(want, axis=1)
    np.testing.assert_allclose(float(metrics["cosine_to_teacher"]), cos.mean(), rtol=1e-4, atol=1e-6)


def test_end_to_end_run_and_a_resume_with_another_teacher_is_refused(teacher, tmp_path):
    own_teacher = tmp_path / "teacher"
    variables, description = load_backbone(teacher / "backbone")
    export_backbone(own_teacher, variables, description)
    config = distill_config(own_teacher, num_steps=4)
    result = train(config, tmp_path / "student")
    assert result.status == "finished" and result.step == 4
    assert all(np.isfinite(r["loss"]) for r in read_metrics(tmp_path / "student"))
    exported = json.loads((tmp_path / "student" / "backbone" / "backbone.json").read_text())
    assert exported["identity"]["arch"] == "resnet10" and exported["identity"]["width"] == 4
    assert exported["identity"]["teacher"]["arch"] == "resnet10" and exported["identity"]["teacher"]["width"] == 8
    # the same path, other weights: the teacher's digest is part of the run's fingerprint
    export_backbone(own_teacher, jax.tree.map(lambda a: a * 0.5, variables), description)
    with pytest.raises(WorkdirMismatchError, match=r"inputs\.teacher\.weights_sha256"):
        train(config, tmp_path / "student")


def test_settings_are_checked_with_one_line_each(teacher, tmp_path):
    missing = tmp_path / "no_such_run"
    with pytest.raises(ConfigError) as error:
        validate(distill_config(missing))
    (line,) = error.value.problems
    assert line.startswith("config.method_kwargs.teacher = ") and str(missing) in line and "\n" not in line
    unreadable = tmp_path / "teacher.safetensors"
    unreadable.write_bytes(b"not a weights file")
    with pytest.raises(ConfigError) as error:
        validate(distill_config(unreadable))
    (line,) = error.value.problems
    assert line.startswith(f"config.method_kwargs.teacher = '{unreadable}': cannot be read") and "\n" not in line
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"method_kwargs.teacher = .*empty.*holds"):
        validate(distill_config(tmp_path / "empty"))
    bad = {"method_kwargs.loss": "mse", "method_kwargs.projector": (0,), "method_kwargs.beta": -1.0}
    with pytest.raises(ConfigError) as error:
        validate(distill_config(teacher, **bad))
    assert [p.split(" = ")[0] for p in error.value.problems] == [
        "config.method_kwargs.loss", "config.method_kwargs.beta", "config.method_kwargs.projector"]  # fmt: skip
    with pytest.raises(ConfigError, match="method_kwargs.teacher = '': must name the teacher"):
        validate(load_config(f"{REPO / 'configs' / 'distill.py'}:tiny"))


def test_the_student_exports_to_onnx_like_any_backbone(teacher, tmp_path):
    """The student of a finished run through configs/export.py's ONNX path, against its JAX features."""
    ort = pytest.importorskip("onnxruntime")
    from fetalssl_jax.apply.loading import load_backbone as load_any
    from fetalssl_jax.downstream.onnx_export import export_backbone as export_onnx
    from fetalssl_jax.eval.frozen import eval_features

    train(distill_config(teacher, num_steps=2), tmp_path / "student")
    onnx_file = export_onnx(tmp_path / "student", tmp_path / "student.onnx")
    student = load_any(tmp_path / "student")
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 1), dtype=np.uint8)
    want = np.asarray(eval_features(student.module, 32, student.variables, frames))
    got = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"frames": frames})[0]
    assert got.shape == (3, student.module.num_features)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
