"""2-D convolution as matrix products, with a hand-written gradient, for XLA's CPU backend, where Eigen's convolution
is slow for 1x1 kernels and small feature maps (measurements: docs/design.md, "Convolutions on CPU are matrix
products"):

    forward       y  = patches(x) @ W                 patches: [N*Ho*Wo, kh*kw*Cin] (im2col), W: [kh*kw*Cin, Cout]
    weight grad   dW = patches(x)^T @ dy
    input grad    dx = col2im(dy @ W^T)               col2im: each tap's columns added back at its strided offset

That form serves every 1x1 convolution (the patches are the input itself) and every spatial convolution with fewer
than 4x4 output pixels per image; bigger maps keep the native convolution and its autodiff. The patches are rebuilt
in the backward pass rather than saved (saving them would keep kh*kw copies of every activation alive).

`conv_general_dilated` has `lax.conv_general_dilated`'s signature and is passed to `flax.linen.Conv` through its
`conv_general_dilated` field, so the module, its parameter (`kernel`, [kh, kw, in, out]) and its initialisation are
unchanged. Which implementation runs is chosen when the function is traced (`conv_impl`): 'auto' picks the matrix
form on the CPU backend and XLA's native convolution on GPU/TPU.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

__all__ = ["CONV_IMPLS", "conv2d_matmul", "make_conv_general_dilated", "resolve_conv_impl"]

Array = Any
Padding = tuple[tuple[int, int], tuple[int, int]]

CONV_IMPLS = ("auto", "native", "cpu_matmul")


def resolve_conv_impl(conv_impl: str) -> str:
    """'native' or 'cpu_matmul': 'auto' is the matrix form on the CPU backend, the native convolution elsewhere."""
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {conv_impl!r}; choose one of {', '.join(CONV_IMPLS)}")
    if conv_impl == "auto":
        return "cpu_matmul" if jax.default_backend() == "cpu" else "native"
    return conv_impl


def _out_size(size: int, kernel: int, stride: int, pad: tuple[int, int]) -> int:
    return (size + pad[0] + pad[1] - kernel) // stride + 1


def _is_pointwise(kh: int, kw: int, padding: Padding) -> bool:
    return kh == 1 and kw == 1 and padding == ((0, 0), (0, 0))


def strided_taps(x: Array, kh: int, kw: int, strides: tuple[int, int], padding: Padding, pad_value: Any = 0):
    """The kh*kw window taps of a padded x, each [N, Ho, Wo, C], in row-major tap order."""
    n, h, w, c = x.shape
    sh, sw = strides
    ho, wo = _out_size(h, kh, sh, padding[0]), _out_size(w, kw, sw, padding[1])
    xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)), constant_values=pad_value)
    return [
        lax.slice(xp, (0, i, j, 0), (n, i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1, c), (1, sh, sw, 1))
        for i in range(kh)
        for j in range(kw)
    ]


def _patches(x: Array, kh: int, kw: int, strides: tuple[int, int], padding: Padding) -> Array:
    """im2col: [N, Ho, Wo, kh*kw*C], columns ordered (tap row, tap column, channel) like a reshaped HWIO kernel."""
    sh, sw = strides
    if _is_pointwise(kh, kw, padding):
        ho, wo = _out_size(x.shape[1], 1, sh, padding[0]), _out_size(x.shape[2], 1, sw, padding[1])
        return x[:, : sh * (ho - 1) + 1 : sh, : sw * (wo - 1) + 1 : sw, :] if (sh, sw) != (1, 1) else x
    return jnp.concatenate(strided_taps(x, kh, kw, strides, padding), axis=-1)


def col2im(cols: Array, x_shape: tuple[int, ...], kh: int, kw: int, strides: tuple[int, int], padding: Padding):
    """Adjoint of `_patches`: adds every tap's [N, Ho, Wo, C] block back where that tap read it from."""
    n, h, w, c = x_shape
    sh, sw = strides
    _, ho, wo, _ = cols.shape
    if _is_pointwise(kh, kw, padding):
        if (sh, sw) == (1, 1):
            return cols
        # Interior padding puts the strided samples back in place; the high padding restores the dropped tail.
        return lax.pad(cols, jnp.zeros((), cols.dtype), ((0, 0, 0), (0, h - sh * (ho - 1) - 1, sh - 1),
                                                          (0, w - sw * (wo - 1) - 1, sw - 1), (0, 0, 0)))  # fmt: skip
    total = None
    for t, (i, j) in enumerate((i, j) for i in range(kh) for j in range(kw)):
        # Tap (i, j) read x rows i - pad_top + sh*k (k < ho): place them there; negative low/high padding crops the
        # parts that fell into the zero padding of the forward pass.
        low_h, low_w = i - padding[0][0], j - padding[1][0]
        config = (
            (0, 0, 0),
            (low_h, h - low_h - sh * (ho - 1) - 1, sh - 1),
            (low_w, w - low_w - sw * (wo - 1) - 1, sw - 1),
            (0, 0, 0),
        )
        placed = lax.pad(cols[..., t * c : (t + 1) * c], jnp.zeros((), cols.dtype), config)
        total = placed if total is None else total + placed
    return total


def _matmul(a: Array, b: Array, contract: tuple[Sequence[int], Sequence[int]], precision: Any) -> Array:
    # Accumulate in float32 whatever the compute dtype (what the native bfloat16 convolution does), then round once.
    out = lax.dot_general(a, b, (contract, ((), ())), precision=precision, preferred_element_type=jnp.float32)
    return out.astype(a.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_matmul(x: Array, w: Array, strides: tuple[int, int], padding: Padding, precision: Any = None) -> Array:
    """NHWC x HWIO -> NHWC convolution (no dilation, one group) as one matrix product; see the module docstring.

    Args:
        x: input [N, H, W, Cin].
        w: kernel [kh, kw, Cin, Cout] (same dtype as `x`).
        strides: (stride_h, stride_w).
        padding: ((top, bottom), (left, right)), explicit and non-negative.
        precision: passed to the matrix products.
    """
    return _forward(x, w, strides, padding, precision)


def _forward(x, w, strides, padding, precision):
    kh, kw, cin, cout = w.shape
    cols = _patches(x, kh, kw, strides, padding)
    return _matmul(cols, w.reshape(kh * kw * cin, cout), ((3,), (0,)), precision)


def _fwd(x, w, strides, padding, precision):
    return _forward(x, w, strides, padding, precision), (x, w)


def _bwd(strides, padding, precision, residuals, dy):
    x, w = residuals
    kh, kw, cin, cout = w.shape
    dy = dy.astype(x.dtype)
    cols = _patches(x, kh, kw, strides, padding)
    # dW: contraction over batch and both spatial axes (N*Ho*Wo), one GEMM. XLA transposes the GEMM's first operand
    # to contract it; make that the narrower one (transposing the wide block inputs cost ResNet-50 a third of a step).
    if cout < cols.shape[-1]:
        dw = jnp.transpose(_matmul(dy, cols, ((0, 1, 2), (0, 1, 2)), precision)).reshape(w.shape)
    else:
        dw = _matmul(cols, dy, ((0, 1, 2), (0, 1, 2)), precision).reshape(w.shape)
    # dx: W^T is materialised (it is small) so that the GEMM is a plain [M, Cout] @ [Cout, K].
    w_t = jnp.transpose(w.reshape(kh * kw * cin, cout))
    dcols = _matmul(dy, w_t, ((3,), (0,)), precision)
    dx = col2im(dcols, x.shape, kh, kw, strides, padding)
    return dx, dw


conv2d_matmul.defvjp(_fwd, _bwd)


# Below this many output pixels per image XLA:CPU's native convolution collapses; at and above it the native forward
# and input gradient are as fast as im2col + GEMM without the kh*kw-times larger patch matrix (docs/design.md).
_MIN_NATIVE_PIXELS = 16


def _use_native(x_shape, w_shape, strides, padding) -> bool:
    """Whether the native convolution (and its autodiff) is the faster choice: spatial (k > 1) convs on big maps."""
    kh, kw = w_shape[:2]
    if _is_pointwise(kh, kw, padding):
        return False
    ho = _out_size(x_shape[1], kh, strides[0], padding[0])
    wo = _out_size(x_shape[2], kw, strides[1], padding[1])
    return ho * wo >= _MIN_NATIVE_PIXELS


def _native_layout(lhs_shape, rhs_shape, dimension_numbers) -> bool:
    want = lax.conv_dimension_numbers(lhs_shape, rhs_shape, ("NHWC", "HWIO", "NHWC"))
    got = lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
    return got == want


def make_conv_general_dilated(conv_impl: str = "auto") -> Callable[..., Array]:
    """A drop-in for `lax.conv_general_dilated` (for `flax.linen.Conv(conv_general_dilated=...)`).

    With 'cpu_matmul' (or 'auto' on the CPU backend) 2-D NHWC/HWIO convolutions with explicit padding, no dilation
    and one feature group run as `conv2d_matmul`; anything else falls through to `lax.conv_general_dilated`.
    """
    if conv_impl not in CONV_IMPLS:
        raise ValueError(f"unknown conv_impl {conv_impl!r}; choose one of {', '.join(CONV_IMPLS)}")

    def conv_general_dilated(
        lhs,
        rhs,
        window_strides,
        padding,
        lhs_dilation=None,
        rhs_dilation=None,
        dimension_numbers=None,
        feature_group_count=1,
        batch_group_count=1,
        precision=None,
        preferred_element_type=None,
    ):
        native = functools.partial(
            lax.conv_general_dilated,
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            batch_group_count=batch_group_count,
            precision=precision,
            preferred_element_type=preferred_element_type,
        )
        # Resolved here, at trace time, so that one model definition serves every backend.
        if resolve_conv_impl(conv_impl) == "native":
            return native()
        fits = (
            lhs.ndim == 4
            and not isinstance(padding, str)
            and all(p >= 0 for pair in padding for p in pair)
            and all(d == 1 for d in (lhs_dilation or (1, 1)))
            and all(d == 1 for d in (rhs_dilation or (1, 1)))
            and feature_group_count == 1
            and batch_group_count == 1
            and preferred_element_type is None
            and lhs.dtype == rhs.dtype
            and _native_layout(lhs.shape, rhs.shape, dimension_numbers)
        )
        if not fits:
            return native()
        strides = tuple(window_strides)
        pads = (tuple(padding[0]), tuple(padding[1]))
        if _use_native(lhs.shape, rhs.shape, strides, pads):
            return native()
        return conv2d_matmul(lhs, rhs, strides, pads, precision)

    return conv_general_dilated
