"""Clip order + transform prediction (methods/reorder.py): permutation sets, the inputs it makes, training."""

import itertools
import json

import jax
import numpy as np
import pytest
from conftest import REPO

from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.data import sources
from fetalssl_jax.data.augment import IMAGENET_MEAN, IMAGENET_STD
from fetalssl_jax.methods import get_method
from fetalssl_jax.methods.reorder import permutation_set
from fetalssl_jax.runtime.sharding import batch_sharding, enable_compilation_cache, make_mesh
from fetalssl_jax.train.durations import durations
from fetalssl_jax.train.loop import make_sampler, train
from fetalssl_jax.train.monitor import read_metrics
from fetalssl_jax.train.optim import make_optimizer
from fetalssl_jax.train.step import init_state, make_train_step

METRICS = ("order_accuracy", "transform_accuracy", "order_loss", "transform_loss")


def reorder_config(**overrides):
    config = load_config(f"{REPO / 'configs' / 'reorder.py'}:tiny")
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return config


def min_hamming(perms) -> int:
    return min(int(np.sum(np.asarray(a) != np.asarray(b))) for a, b in itertools.combinations(perms, 2))


def test_all_orders_by_default():
    perms = permutation_set(3)
    assert perms.shape == (6, 3)
    assert sorted(map(tuple, perms)) == list(itertools.permutations(range(3)))


def test_max_hamming_subset_is_the_greedy_choice():
    # the greedy algorithm, written out independently: identity first, then the largest minimum distance,
    # ties to the lexicographically first candidate
    candidates = list(itertools.permutations(range(4)))
    chosen = [candidates[0]]
    while len(chosen) < 5:

        def score(p):
            return min(sum(x != y for x, y in zip(p, q, strict=True)) for q in chosen)

        best = max((p for p in candidates if p not in chosen), key=score)  # max() keeps the first of ties
        chosen.append(best)
    np.testing.assert_array_equal(permutation_set(4, 5), np.array(chosen))
    # by hand: 0123, 1032, 2301, 3210 are pairwise 4 apart (a Latin square, so no 5th can be 4 from all)
    assert [tuple(p) for p in chosen[:4]] == [(0, 1, 2, 3), (1, 0, 3, 2), (2, 3, 0, 1), (3, 2, 1, 0)]
    assert min_hamming(chosen) == 3

    perms = permutation_set(4, 10)
    assert perms.shape == (10, 4) and len(set(map(tuple, perms))) == 10
    assert all(sorted(p) == [0, 1, 2, 3] for p in perms.tolist())
    # 3 is the best possible for more than 4 orders of 4 (see above); random subsets usually reach only 2
    assert min_hamming(perms) >= 3
    with pytest.raises(ValueError, match="more than the 24 orders"):
        permutation_set(4, 25)


def undo_transform(x: np.ndarray, kind: str, t: int) -> np.ndarray:
    """Inverse of transform `t` of set `kind` on a clip [K, H, W, C], written with np.rot90."""
    if kind == "none":
        assert t == 0
        return x
    assert kind == "rotations"
    return np.rot90(x, -t, axes=(1, 2))


@pytest.mark.parametrize("kind, num_permutations", [("rotations", 0), ("rotations", 10), ("none", 0)])
def test_make_inputs_can_be_undone_and_covers_every_class(kind, num_permutations):
    size, k, batch = 16, 4, 256
    no_augmentation = {"crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0), "color_jitter_prob": 0.0}
    config = reorder_config(**{
        "data.image_size": size, "method_kwargs.transforms": kind,
        "method_kwargs.num_permutations": num_permutations,
    })  # fmt: skip
    with config.augment.unlocked():
        config.augment.view1.update(no_augmentation)
    method = get_method("reorder")(config)

    clip = np.zeros((k, size, size, 1), np.uint8)
    for i in range(k):
        clip[i] = 10 + 40 * i  # frame i is filled with its own value
    clip[:, :2, :5] = 255  # a 2x5 mark in the top-left corner: every rotation and flip moves it differently
    frames = np.broadcast_to(clip, (batch, *clip.shape))
    inputs = jax.jit(method.make_inputs)(jax.random.PRNGKey(0), frames)
    clips, order, transform = (np.asarray(inputs[n]) for n in ("clips", "order", "transform"))
    assert clips.shape == (batch, k, size, size, 3) and clips.dtype == np.float32

    expected = (np.repeat(clip, 3, axis=-1) / 255.0 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    perms = permutation_set(k, num_permutations)
    num_transforms = {"rotations": 4, "none": 1}[kind]
    for x, o, t in zip(clips, order, transform, strict=True):
        upright = undo_transform(x, kind, int(t))
        recovered = upright[np.argsort(perms[o])]  # input frame j is original frame perms[o][j]
        np.testing.assert_allclose(recovered, expected, atol=1e-4)
    # targets are spread over every class across the batch
    np.testing.assert_array_equal(np.unique(order), np.arange(len(perms)))
    np.testing.assert_array_equal(np.unique(transform), np.arange(num_transforms))


def test_end_to_end_run_logs_pretext_accuracy_and_evaluates(tmp_path):
    result = train(reorder_config(**{"eval.compare_random_init": False}), tmp_path)
    assert result.status == "finished" and result.step == 12  # 96 frames / batch 16 = 6 steps x 2 epochs
    evaluation = json.loads((tmp_path / "eval.json").read_text())
    assert set(evaluation["knn_macro_f1"]) == {"reorder (step 12)"}
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(12))
    for r in records:
        assert np.isfinite(r["loss"]) and 0.0 <= r["order_accuracy"] <= 1.0 and 0.0 <= r["transform_accuracy"] <= 1.0


def test_one_train_step_gives_finite_loss_and_metrics():
    # the same config and optimiser as the end-to-end run above: with its compilation cache on, the step and the
    # initialisation compiled there are reused here
    config = reorder_config(**{"eval.compare_random_init": False})
    enable_compilation_cache(config.compilation_cache_dir)
    method = get_method(config.method)(config)
    sampler = make_sampler(config, method, sources.pretraining_frames(config))
    assert sampler.mode == "clips"
    total_steps = durations(config, sampler.steps_per_epoch).total
    optimizer = make_optimizer(config.optim, config.batch_size, sampler.steps_per_epoch, total_steps)
    mesh = make_mesh()
    frames = jax.make_array_from_process_local_data(batch_sharding(mesh), sampler.batch(0)["frames"])
    assert frames.shape == (16, 4, 32, 32, 1)
    state = init_state(method, optimizer, config.seed, frames, mesh)
    new_state, metrics = make_train_step(method, optimizer, mesh)(state, {"frames": frames})
    metrics = {name: float(v) for name, v in jax.device_get(metrics).items()}
    assert int(new_state.step) == 1
    assert np.isfinite(metrics["loss"]) and set(METRICS) <= set(metrics)
    assert 0.0 <= metrics["order_accuracy"] <= 1.0 and 0.0 <= metrics["transform_accuracy"] <= 1.0
    np.testing.assert_allclose(metrics["loss"], metrics["order_loss"] + metrics["transform_loss"], rtol=1e-5)
