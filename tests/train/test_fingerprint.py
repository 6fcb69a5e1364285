"""The fingerprint that decides whether a workdir's run may be resumed or reused, and the one rule that applies it."""

import pytest

from fetalssl_jax.downstream import classification
from fetalssl_jax.train import loop
from fetalssl_jax.train.fingerprint import (
    WorkdirMismatchError,
    differences,
    ensure_resumable,
    fingerprint,
    format_differences,
)


def test_fingerprint_drops_the_cosmetic_keys_of_its_task():
    run = {
        "seed": 3, "progress_bar": True, "log_every_steps": 5, "checkpoint_every_steps": 10, "keep_checkpoints": 2,
        "compilation_cache_dir": "/c", "allow_extend": True, "num_steps": 8,
        "optim": {"lr_weights": 0.2, "name": "lars"}, "data": {"prefetch": 2, "seed": 0},
        "eval": {"knn_k": 20, "shots": (1, 0)}, "fingerprint_sha256": "ab",
    }  # fmt: skip
    assert fingerprint(run, loop.COSMETIC_KEYS) == {"data.seed": 0, "num_steps": 8, "optim.lr_weights": 0.2,
                                                    "optim.name": "lars", "seed": 3}  # fmt: skip
    classify = {"task": "classify", "seed": 1, "progress_bar": False, "checkpoint_every_epochs": 5,
                "checkpoint_every_steps": 500, "compilation_cache_dir": "", "init": "runs/a",
                "eval": {"num_patients": 300}}  # fmt: skip
    # the classifier's eval keys size its labelled set: they count
    cosmetic = classification.COSMETIC_KEYS
    expected = {"eval.num_patients": 300, "init": "runs/a", "seed": 1, "task": "classify"}
    assert fingerprint(classify, cosmetic) == expected
    assert fingerprint(classify, cosmetic, ignore=("init",)) == {k: v for k, v in expected.items() if k != "init"}


def test_differences_name_the_key_and_both_values():
    old = {"optim.lr_weights": 0.2, "seed": 0, "augment.view1.crop_scale": [0.08, 1.0]}
    new = {"optim.lr_weights": 0.5, "seed": 0, "augment.view1.crop_scale": [0.5, 1.0], "num_steps": 8}
    found = differences(old, new)
    assert found == [
        ("augment.view1.crop_scale", [0.08, 1.0], [0.5, 1.0]),
        ("num_steps", "<no such key>", 8),
        ("optim.lr_weights", 0.2, 0.5),
    ]
    assert format_differences(found).splitlines() == [
        "  augment.view1.crop_scale: checkpoint has [0.08, 1.0], config has [0.5, 1.0]",
        "  num_steps: checkpoint has <no such key>, config has 8",
        "  optim.lr_weights: checkpoint has 0.2, config has 0.5",
    ]
    assert differences(old, new, ignore=("augment", "num_steps", "optim")) == []


def test_ensure_resumable_allows_only_a_new_length_and_only_when_asked():
    stored = {"seed": 0, "num_steps": 4}
    ensure_resumable(None, stored, what="nothing")  # nothing stored yet
    ensure_resumable(stored, dict(stored), what="same")
    longer = {"seed": 0, "num_steps": 8}
    with pytest.raises(WorkdirMismatchError) as info:
        ensure_resumable(stored, longer, what="run A", hint="use a new workdir")
    assert str(info.value).splitlines() == [
        "run A was made by another config; these keys differ (cosmetic keys never count):",
        "  num_steps: checkpoint has 4, config has 8",
        "Use a new workdir.",
    ]
    ensure_resumable(stored, longer, allow_extend=True, what="run A")
    with pytest.raises(WorkdirMismatchError, match="  seed: checkpoint has 0, config has 1"):
        ensure_resumable(stored, {"seed": 1, "num_steps": 8}, allow_extend=True, what="run A")


def test_a_run_written_before_a_key_was_added_matches_only_that_keys_old_behaviour():
    """A DINO checkpoint from before `method_kwargs.centering` existed resumes under the EMA centre it was trained
    with, and is refused, naming the key, under Sinkhorn-Knopp; a stored value is compared as any other."""
    before = {"method": "dino", "method_kwargs.teacher_temp": 0.04, "seed": 0}
    ensure_resumable(before, {**before, "method_kwargs.centering": "centering"}, what="run")
    with pytest.raises(WorkdirMismatchError, match="  method_kwargs.centering: checkpoint has <no such key>, config"):
        ensure_resumable(before, {**before, "method_kwargs.centering": "sinkhorn_knopp"}, what="run")
    stored = {**before, "method_kwargs.centering": "sinkhorn_knopp"}
    assert differences(stored, {**before, "method_kwargs.centering": "centering"}) == [
        ("method_kwargs.centering", "sinkhorn_knopp", "centering")
    ]
    assert differences({**before, "method_kwargs.centering": "centering"}, before) == [
        ("method_kwargs.centering", "centering", "<no such key>")
    ]
    # the CPU default's run from before `optim.clip_grad` was a key of every DINO preset: it did not clip
    ensure_resumable(before, {**before, "optim.clip_grad": 0.0}, what="run")
    with pytest.raises(WorkdirMismatchError, match="  optim.clip_grad: checkpoint has <no such key>, config has 3.0"):
        ensure_resumable(before, {**before, "optim.clip_grad": 3.0}, what="run")
