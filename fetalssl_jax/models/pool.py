"""Max pooling with a hand-written gradient, for XLA's CPU backend.

JAX's gradient, `select_and_scatter_add`, is slow on XLA:CPU (docs/design.md, "Max pooling's gradient on CPU");
the form below is built only from strided slices, compares and pads that XLA fuses:

    forward     y  = reduce_window(max)                    (the native forward: it is already fast)
    gradient    dx = sum over the kh*kw window taps t of place_t(where(first_max_t, dy, 0))

`first_max_t` is true where tap t holds the window's maximum and no earlier tap (row-major order) did: the gradient
goes to the first maximum of each window, exactly as XLA's select_and_scatter (select = `>=`) and PyTorch do, so
ties (for example the zeros after a ReLU) are routed the same way. `place_t` puts tap t's values back where the
forward read them from (`conv.col2im`, shared with the matrix-product convolution).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from fetalssl_jax.models.conv import col2im, resolve_conv_impl, strided_taps

__all__ = ["max_pool", "max_pool_fast_grad"]

Array = Any
Padding = tuple[tuple[int, int], tuple[int, int]]


def _native_max_pool(x: Array, window: tuple[int, int], strides: tuple[int, int], padding: Padding) -> Array:
    # -inf padding, as PyTorch and flax.linen.max_pool. A Python scalar init, so that JAX recognises the max monoid
    # (and can differentiate the native form).
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *padding, (0, 0)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def max_pool_fast_grad(x: Array, window: tuple[int, int], strides: tuple[int, int], padding: Padding) -> Array:
    """NHWC max pooling (padding with -inf) whose gradient is computed by `_bwd` below; see the module docstring.

    Args:
        x: input [N, H, W, C], floating point.
        window: (kh, kw).
        strides: (stride_h, stride_w).
        padding: ((top, bottom), (left, right)), explicit, non-negative and smaller than the window.
    """
    return _native_max_pool(x, window, strides, padding)


def _fwd(x, window, strides, padding):
    y = _native_max_pool(x, window, strides, padding)
    return y, (x, y)


def _bwd(window, strides, padding, residuals, dy):
    x, y = residuals
    kh, kw = window
    pad_value = jnp.array(-jnp.inf, x.dtype)
    taken = jnp.zeros(y.shape, bool)  # windows whose maximum an earlier tap already holds
    routed = []
    for tap in strided_taps(x, kh, kw, strides, padding, pad_value):
        first_max = (tap == y) & ~taken
        taken = taken | first_max
        routed.append(jnp.where(first_max, dy, jnp.zeros((), dy.dtype)))
    return (col2im(jnp.concatenate(routed, axis=-1), x.shape, kh, kw, strides, padding),)


max_pool_fast_grad.defvjp(_fwd, _bwd)


def max_pool(
    x: Array, window: tuple[int, int], strides: tuple[int, int], padding: Padding, conv_impl: str = "auto"
) -> Array:
    """NHWC max pooling padded with -inf; on the CPU backend ('auto') or with 'cpu_matmul' its gradient is the
    fast form above, elsewhere (and with 'native') XLA's own. Both give the same values and gradients."""
    window, strides = tuple(window), tuple(strides)
    padding = (tuple(padding[0]), tuple(padding[1]))
    if any(p < 0 or p >= k for pair, k in zip(padding, window, strict=True) for p in pair):
        raise ValueError(f"max_pool padding {padding} must be >= 0 and smaller than the window {window}")
    if resolve_conv_impl(conv_impl) == "native":
        # the same reduce_window, written as flax's max_pool over an input padded with -inf: the form that ONNX
        # converters (jax2onnx) map to one 2-D MaxPool (a padded 4-D reduce_window becomes a 4-D one onnxruntime
        # refuses); values and gradients unchanged (a window never lies wholly in the padding)
        x = jnp.pad(x, ((0, 0), *padding, (0, 0)), constant_values=-jnp.inf)
        return nn.max_pool(x, window_shape=window, strides=strides, padding="VALID")
    return max_pool_fast_grad(x, window, strides, padding)
