"""DINO, iBOT, KoLeo and MAE losses against numpy formulas written out here with explicit loops (the papers' and
reference code's definitions), on odd shapes: 2 global + 3 local crops, batch 5, 17 prototypes."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fetalssl_jax.losses import dino_center_update, dino_loss, ibot_patch_loss, koleo_loss, mae_loss, sinkhorn_knopp
from fetalssl_jax.models.patches import patchify


def softmax(row):
    e = np.exp(row - row.max())
    return e / e.sum()


def log_softmax(row):
    shifted = row - row.max()
    return shifted - math.log(np.exp(shifted).sum())


def cross_entropy(teacher_row, student_row, center, tt, st):
    """-sum_k p_k log q_k for one sample."""
    p = softmax((teacher_row - center) / tt)
    return -float(np.dot(p, log_softmax(student_row / st)))


def numpy_dino(student, teacher, center, st, tt):
    """DINO: mean over (teacher crop t, student crop s != t) of the batch mean of the cross-entropy."""
    pair_means = []
    for t in range(len(teacher)):
        for s in range(len(student)):
            if s == t:
                continue
            per_sample = [cross_entropy(teacher[t][b], student[s][b], center, tt, st) for b in range(len(student[s]))]
            pair_means.append(sum(per_sample) / len(per_sample))
    return sum(pair_means) / len(pair_means)


@pytest.mark.parametrize("student_crops, teacher_crops", [(5, 2), (2, 2), (4, 1)])
def test_dino_loss_matches_numpy(student_crops, teacher_crops):
    rng = np.random.default_rng(student_crops * 10 + teacher_crops)
    student = rng.normal(size=(student_crops, 5, 17)) * 2
    teacher = rng.normal(size=(teacher_crops, 5, 17)) * 2
    center = rng.normal(size=17) * 0.5
    want = numpy_dino(student, teacher, center, 0.1, 0.04)
    got = dino_loss(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32), center[None], 0.1, 0.04)
    assert float(got) == pytest.approx(want, rel=1e-5)
    # a sequence of per-crop arrays is the same input
    as_lists = dino_loss([jnp.asarray(c, jnp.float32) for c in student], list(teacher), center, 0.1, 0.04)
    assert float(as_lists) == pytest.approx(want, rel=1e-5)


def test_dino_loss_teacher_gets_no_gradient_and_more_teacher_crops_is_an_error():
    rng = np.random.default_rng(0)
    student = jnp.asarray(rng.normal(size=(3, 4, 7)), jnp.float32)
    teacher = jnp.asarray(rng.normal(size=(2, 4, 7)), jnp.float32)
    grad_t = jax.grad(lambda t: dino_loss(student, t, jnp.zeros(7), 0.1, 0.04))(teacher)
    assert not np.any(np.asarray(grad_t))
    assert np.any(np.asarray(jax.grad(lambda s: dino_loss(s, teacher, jnp.zeros(7), 0.1, 0.04))(student)))
    with pytest.raises(ValueError, match="3 teacher crops but only 2 student crops"):
        dino_loss(student[:2], jnp.concatenate([teacher, teacher[:1]]), jnp.zeros(7), 0.1, 0.04)


def test_center_update_matches_numpy():
    rng = np.random.default_rng(1)
    teacher = rng.normal(size=(2, 5, 17))
    center = rng.normal(size=(1, 17))
    mean = np.zeros(17)
    for crop in teacher:
        for row in crop:
            mean += row
    mean /= 10
    want = 0.9 * center + 0.1 * mean
    got = dino_center_update(jnp.asarray(center, jnp.float32), jnp.asarray(teacher, jnp.float32), 0.9)
    assert got.shape == (1, 17)
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-6)
    # patch logits [B, N, K]: every patch of every image weighs the same
    patches = rng.normal(size=(3, 6, 17))
    want = 0.5 * center[0] + 0.5 * patches.reshape(-1, 17).mean(0)
    np.testing.assert_allclose(np.asarray(dino_center_update(center[0], patches, 0.5)), want, rtol=1e-5, atol=1e-6)


def test_ibot_patch_loss_matches_numpy():
    rng = np.random.default_rng(2)
    b, n, k = 5, 9, 17
    student = rng.normal(size=(b, n, k)) * 2
    teacher = rng.normal(size=(b, n, k)) * 2
    center = rng.normal(size=k) * 0.3
    mask = rng.random((b, n)) < 0.4
    mask[1] = False  # an image without masked patches counts as 0 in the mean over images
    mask[2, 0] = True
    per_image = []
    for i in range(b):
        terms = [cross_entropy(teacher[i, j], student[i, j], center, 0.07, 0.1) for j in range(n) if mask[i, j]]
        per_image.append(sum(terms) / max(len(terms), 1))
    want = sum(per_image) / b
    got = ibot_patch_loss(jnp.asarray(student), jnp.asarray(teacher), jnp.asarray(mask), center, 0.1, 0.07)
    assert float(got) == pytest.approx(want, rel=1e-5)


def numpy_sinkhorn(logits, tt, iterations=3):
    """DINOv2's sinkhorn_knopp_teacher written out: Q = exp(logits / tt) as [K, N]; Q /= sum; `iterations` times
    each prototype's row to 1/K, then each sample's column to 1/N; times N, returned as [N, K]."""
    q = [[math.exp(logits[n][k] / tt) for n in range(len(logits))] for k in range(len(logits[0]))]
    num_k, num_n = len(q), len(q[0])
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        q = [[v / sum(row) / num_k for v in row] for row in q]
        columns = [sum(q[k][n] for k in range(num_k)) for n in range(num_n)]
        q = [[q[k][n] / columns[n] / num_n for n in range(num_n)] for k in range(num_k)]
    return np.array([[q[k][n] * num_n for k in range(num_k)] for n in range(num_n)])


def test_sinkhorn_knopp_matches_numpy_and_leaves_invalid_rows_out():
    rng = np.random.default_rng(4)
    logits = rng.uniform(-1, 1, size=(13, 17))  # cosines, as a weight-normalised last layer gives
    got = np.asarray(sinkhorn_knopp(jnp.asarray(logits, jnp.float32), 0.05))
    np.testing.assert_allclose(got, numpy_sinkhorn(logits, 0.05), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-5)  # each sample a distribution
    valid = rng.random(13) < 0.6
    valid[0] = False
    got = np.asarray(sinkhorn_knopp(jnp.asarray(logits, jnp.float32), 0.05, jnp.asarray(valid)))
    np.testing.assert_allclose(got[valid], numpy_sinkhorn(logits[valid], 0.05), rtol=1e-4, atol=1e-6)
    assert not np.any(got[~valid])
    nothing = np.asarray(sinkhorn_knopp(jnp.asarray(logits, jnp.float32), 0.05, jnp.zeros(13, bool)))
    assert np.all(nothing == 0)  # no row to normalise (an iBOT step without masked patches): zeros, not NaN


def test_dino_and_ibot_losses_with_sinkhorn_knopp_match_numpy():
    rng = np.random.default_rng(5)
    student = rng.normal(size=(4, 6, 11)) * 2
    teacher = rng.uniform(-1, 1, size=(2, 6, 11))
    probs = numpy_sinkhorn(teacher.reshape(12, 11), 0.04).reshape(2, 6, 11)  # both global crops' batches together
    want = np.mean([
        np.mean([-np.dot(probs[t, b], log_softmax(student[s, b] / 0.1)) for b in range(6)])
        for t in range(2) for s in range(4) if s != t
    ])  # fmt: skip
    center = rng.normal(size=11)  # not used by Sinkhorn-Knopp
    got = dino_loss(jnp.asarray(student, jnp.float32), jnp.asarray(teacher, jnp.float32), center, 0.1, 0.04,
                    "sinkhorn_knopp")  # fmt: skip
    assert float(got) == pytest.approx(want, rel=1e-4)
    patches_s, patches_t = rng.normal(size=(3, 5, 11)) * 2, rng.uniform(-1, 1, size=(3, 5, 11))
    mask = rng.random((3, 5)) < 0.5
    mask[0] = False
    mask[1, 2] = True
    probs = numpy_sinkhorn(patches_t[mask], 0.07)  # the masked patches of all images together
    per_patch = [-np.dot(p, log_softmax(s / 0.1)) for p, s in zip(probs, patches_s[mask], strict=True)]
    rows = np.cumsum([0, *mask.sum(1)])
    want = np.mean([np.mean(per_patch[rows[i] : rows[i + 1]]) if mask[i].any() else 0.0 for i in range(3)])
    got = ibot_patch_loss(jnp.asarray(patches_s), jnp.asarray(patches_t), jnp.asarray(mask), center, 0.1, 0.07,
                          "sinkhorn_knopp")  # fmt: skip
    assert float(got) == pytest.approx(want, rel=1e-4)
    with pytest.raises(ValueError, match="centering 'softmax' is not one of"):
        dino_loss(jnp.asarray(student), jnp.asarray(teacher), center, 0.1, 0.04, "softmax")


def test_koleo_loss_matches_numpy():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(11, 6)) * rng.uniform(0.5, 3, size=(11, 1))
    x[4] = x[7]  # a duplicate: distance exactly ||eps * 1|| after normalisation
    x[9] = x[2] * 2.5 + 1e-3  # nearly the same direction
    eps = 1e-8
    unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)
    logs = []
    for i in range(len(unit)):
        best, nearest = -np.inf, None
        for j in range(len(unit)):
            if j != i and unit[i] @ unit[j] > best:
                best, nearest = unit[i] @ unit[j], j
        distance = np.sqrt(np.sum((unit[i] - unit[nearest] + eps) ** 2))  # torch PairwiseDistance adds eps
        logs.append(math.log(distance + eps))
    want = -sum(logs) / len(logs)
    got = float(koleo_loss(jnp.asarray(x, jnp.float32)))
    assert got == pytest.approx(want, rel=1e-4)
    want_spread = koleo_loss(jnp.asarray(np.delete(x, 4, axis=0), jnp.float32))
    assert float(want_spread) < got  # the duplicated direction is what the regulariser punishes


def numpy_mae(pred, target, mask, norm_pix):
    b, n, p = pred.shape
    total, count = 0.0, 0
    for i in range(b):
        for j in range(n):
            if not mask[i, j]:
                continue
            t = target[i, j]
            if norm_pix:
                mean = sum(t) / p
                var = sum((v - mean) ** 2 for v in t) / (p - 1)  # unbiased, torch.var's default (MAE reference)
                t = (t - mean) / math.sqrt(var + 1e-6)
            total += sum((pred[i, j] - t) ** 2) / p
            count += 1
    return total / count


@pytest.mark.parametrize("norm_pix", [True, False])
def test_mae_loss_matches_numpy(norm_pix):
    rng = np.random.default_rng(4)
    images = rng.uniform(size=(3, 12, 8, 3))
    target = np.asarray(patchify(images, 4))  # [3, 6, 48]
    pred = rng.normal(size=target.shape)
    mask = rng.random((3, 6)) < 0.6
    mask[0, 0] = True
    got = mae_loss(jnp.asarray(pred), jnp.asarray(target), jnp.asarray(mask), norm_pix)
    assert float(got) == pytest.approx(numpy_mae(pred, target, mask, norm_pix), rel=1e-5)
