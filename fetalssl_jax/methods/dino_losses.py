"""Pure losses of the self-distillation family: DINO (Caron et al. 2021), iBOT (Zhou et al. 2022), DINOv2's KoLeo
regulariser (Oquab et al. 2024), and the teacher-centre update they share.

Teacher probabilities are softmax((teacher_logits - center) / teacher_temp) and carry no gradient; student
log-probabilities are log_softmax(student_logits / student_temp). Everything is computed in float32 over the
global batch (under jit on a sharded batch the means are global, as the references' all-reduce makes them).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

__all__ = ["dino_center_update", "dino_loss", "ibot_patch_loss", "koleo_loss", "sinkhorn_knopp"]

KOLEO_EPS = 1e-8  # DINOv2's KoLeoLoss: normalisation, pairwise-distance and log epsilon


def _crops(logits: jax.Array | Sequence[jax.Array]) -> jax.Array:
    """[C, B, K] float32 from an array or a sequence of C arrays [B, K]."""
    if isinstance(logits, Sequence):
        logits = jnp.stack(list(logits))
    return jnp.asarray(logits, jnp.float32)


CENTERINGS = ("centering", "sinkhorn_knopp")  # DINO's EMA centre, or DINOv2's Sinkhorn-Knopp batch normalisation
SINKHORN_ITERATIONS = 3  # DINOv2's sinkhorn_knopp_teacher(n_iterations=3)


def sinkhorn_knopp(
    teacher_logits: jax.Array, teacher_temp: float, valid: jax.Array | None = None,
    iterations: int = SINKHORN_ITERATIONS,
) -> jax.Array:  # fmt: skip
    """DINOv2's Sinkhorn-Knopp teacher (SwAV's normalisation): Q = exp(logits / teacher_temp) over the N valid rows
    of ``teacher_logits`` [N, K], normalised to total 1, then `iterations` times each column (prototype) to 1/K and
    each row (sample) to 1/N; returned times N, so every valid row sums to 1 (invalid rows are 0). ``valid`` [N]
    bool (default all) leaves rows out, as DINOv2 passes only the masked patches; no gradient."""
    x = jnp.asarray(teacher_logits, jnp.float32) / teacher_temp
    valid = jnp.ones(x.shape[0], bool) if valid is None else jnp.asarray(valid, bool)
    seen = valid[:, None]
    top = jnp.max(jnp.where(seen, x, -jnp.inf))
    x = x - jnp.where(jnp.isfinite(top), top, 0.0)  # one constant: the result is unchanged
    q = jnp.where(seen, jnp.exp(jnp.where(seen, x, 0.0)), 0.0)
    rows, prototypes = jnp.sum(valid).astype(jnp.float32), x.shape[1]
    tiny = jnp.finfo(jnp.float32).tiny
    q = q / jnp.maximum(jnp.sum(q), tiny)
    for _ in range(iterations):
        q = q / jnp.maximum(jnp.sum(q, axis=0, keepdims=True), tiny) / prototypes
        q = q / jnp.maximum(jnp.sum(q, axis=1, keepdims=True), tiny) / jnp.maximum(rows, 1.0)
    return jax.lax.stop_gradient(q * rows)


def _teacher_probs(
    teacher_logits: jax.Array, center: jax.Array, teacher_temp: float, centering: str = "centering",
    valid: jax.Array | None = None,
) -> jax.Array:  # fmt: skip
    """[..., K] teacher probabilities: softmax((logits - center) / temp), or Sinkhorn-Knopp over all leading axes
    together (``valid`` [...] picks the rows it sees; the centre is then not used)."""
    if centering == "sinkhorn_knopp":
        shape = teacher_logits.shape
        flat_valid = None if valid is None else jnp.reshape(valid, -1)
        return sinkhorn_knopp(teacher_logits.reshape(-1, shape[-1]), teacher_temp, flat_valid).reshape(shape)
    if centering != "centering":
        raise ValueError(f"centering {centering!r} is not one of {CENTERINGS}")
    center = jnp.asarray(center, jnp.float32).reshape(-1)
    return jax.lax.stop_gradient(jax.nn.softmax((teacher_logits - center) / teacher_temp, axis=-1))


def dino_loss(
    student_logits_per_crop: jax.Array | Sequence[jax.Array],
    teacher_logits_per_global_crop: jax.Array | Sequence[jax.Array],
    center: jax.Array,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
    centering: str = "centering",
) -> jax.Array:
    """DINO's cross-entropy, averaged over every (teacher crop t, student crop s) pair with s != t.

    Student logits [S, B, K] (global crops first, in the teacher's order, then local crops), teacher logits [T, B, K]
    with T <= S, ``center`` [K] or [1, K]. Each pair contributes the batch mean of -sum_k p_t log q_s; the loss is
    the mean over the T * S - T pairs (T * (S - 1) when the student sees the T global crops and S - T local ones).
    ``centering`` 'sinkhorn_knopp' replaces the centred softmax by `sinkhorn_knopp` over all T * B teacher rows.
    """
    student = _crops(student_logits_per_crop)
    teacher = _crops(teacher_logits_per_global_crop)
    if teacher.shape[0] > student.shape[0]:
        raise ValueError(f"DINO: {teacher.shape[0]} teacher crops but only {student.shape[0]} student crops")
    log_q = jax.nn.log_softmax(student / student_temp, axis=-1)
    p = _teacher_probs(teacher, center, teacher_temp, centering)
    terms = [
        -jnp.mean(jnp.sum(p[t] * log_q[s], axis=-1))
        for t in range(teacher.shape[0])
        for s in range(student.shape[0])
        if s != t
    ]
    return jnp.mean(jnp.stack(terms))


def dino_center_update(center: jax.Array, teacher_logits: jax.Array, momentum: float = 0.9) -> jax.Array:
    """EMA of the teacher output: center * momentum + (1 - momentum) * the mean of ``teacher_logits`` over every
    leading axis (crops, batch, patches: [..., K]); returned in ``center``'s shape, without gradient."""
    batch_center = jnp.mean(jnp.asarray(teacher_logits, jnp.float32).reshape(-1, teacher_logits.shape[-1]), axis=0)
    new = center * momentum + batch_center.reshape(jnp.shape(center)) * (1.0 - momentum)
    return jax.lax.stop_gradient(new)


def ibot_patch_loss(
    student_patch_logits: jax.Array,
    teacher_patch_logits: jax.Array,
    mask: jax.Array,
    center: jax.Array,
    student_temp: float = 0.1,
    teacher_temp: float = 0.04,
    centering: str = "centering",
) -> jax.Array:
    """iBOT's masked-patch cross-entropy: per image [B, N, K] the mean over its masked patches (``mask`` [B, N],
    True = masked in the student's input) of -sum_k p log q, then the mean over all B images (an image without
    masked patches counts as 0, as iBOT and DINOv2 divide by max(count, 1)). With ``centering`` 'sinkhorn_knopp' the
    teacher's probabilities are `sinkhorn_knopp` over the masked patches of all images (DINOv2)."""
    log_q = jax.nn.log_softmax(jnp.asarray(student_patch_logits, jnp.float32) / student_temp, axis=-1)
    p = _teacher_probs(jnp.asarray(teacher_patch_logits, jnp.float32), center, teacher_temp, centering, mask)
    cross_entropy = -jnp.sum(p * log_q, axis=-1)  # [B, N]
    mask = jnp.asarray(mask, jnp.float32)
    per_image = jnp.sum(cross_entropy * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)
    return jnp.mean(per_image)


def koleo_loss(features: jax.Array, eps: float = KOLEO_EPS) -> jax.Array:
    """Kozachenko-Leonenko entropy estimator of L2-normalised ``features`` [N, D] (N >= 2): -mean_i log(d_i + eps),
    d_i = ||x_i - x_j + eps|| for x_j the nearest other row (largest dot product). The eps placements are DINOv2's
    (torch ``F.normalize(eps)``, ``nn.PairwiseDistance(eps)`` which adds eps to the difference, ``log(d + eps)``).
    """
    x = jnp.asarray(features, jnp.float32)
    x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)
    dots = jnp.matmul(x, x.T, precision=jax.lax.Precision.HIGHEST)
    dots = jnp.where(jnp.eye(x.shape[0], dtype=bool), -1.0, dots)  # a row is not its own neighbour
    nearest = jax.lax.stop_gradient(jnp.argmax(dots, axis=1))
    distances = jnp.linalg.norm(x - x[nearest] + eps, axis=-1)
    return -jnp.mean(jnp.log(distances + eps))
