"""The CPU convolution path (models/conv.py) against XLA's native convolution and its autodiff.

The reference everywhere is `lax.conv_general_dilated` and `jax.grad` of it: an independent implementation (Eigen's
spatial convolution and XLA's own transposition rules), not the GEMM/col2im code under test.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fetalssl_jax.models.conv import conv2d_matmul, make_conv_general_dilated, resolve_conv_impl
from fetalssl_jax.models.resnet import create_resnet

DN = ("NHWC", "HWIO", "NHWC")
RTOL = 1e-4  # relative to the largest magnitude of the reference tensor


def _rel_err(got, want) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.max(np.abs(got - want)) / max(np.max(np.abs(want)), 1e-30))


def _native(x, w, strides, padding):
    return lax.conv_general_dilated(x, w, strides, padding, dimension_numbers=DN)


def _value_and_grads(conv, x, w, cotangent):
    """y and the gradients of <y, cotangent> w.r.t. x and w (a random cotangent tests every output position)."""

    def f(x, w):
        y = conv(x, w)
        return jnp.sum(y.astype(jnp.float32) * cotangent), y

    (_, y), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(x, w)
    return y, grads


# (batch, height, width, in, out, kernel, strides, padding): strides 1/2, kernels 1/3/7, odd and non-square maps,
# zero / symmetric / asymmetric padding.
CASES = [
    (2, 5, 5, 3, 4, 1, (1, 1), ((0, 0), (0, 0))),
    (2, 7, 9, 3, 5, 1, (2, 2), ((0, 0), (0, 0))),
    (2, 6, 6, 4, 3, 3, (1, 1), ((1, 1), (1, 1))),
    (2, 7, 5, 4, 6, 3, (2, 2), ((1, 1), (1, 1))),
    (1, 9, 8, 2, 3, 3, (2, 1), ((0, 1), (2, 0))),
    (2, 11, 11, 3, 4, 7, (2, 2), ((3, 3), (3, 3))),
    (3, 2, 2, 8, 8, 3, (1, 1), ((1, 1), (1, 1))),
    (2, 4, 4, 5, 7, 3, (1, 1), ((0, 0), (0, 0))),
]


@pytest.mark.parametrize("n,h,w,cin,cout,k,strides,padding", CASES)
def test_matmul_conv_values_and_gradients_equal_native(n, h, w, cin, cout, k, strides, padding):
    rng = np.random.default_rng(k * 100 + h)
    x = jnp.asarray(rng.standard_normal((n, h, w, cin)), jnp.float32)
    kernel = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float32)
    y_ref = _native(x, kernel, strides, padding)
    cot = jnp.asarray(rng.standard_normal(y_ref.shape), jnp.float32)

    y, (dx, dw) = _value_and_grads(lambda a, b: conv2d_matmul(a, b, strides, padding), x, kernel, cot)
    y_ref, (dx_ref, dw_ref) = _value_and_grads(lambda a, b: _native(a, b, strides, padding), x, kernel, cot)
    assert y.shape == y_ref.shape and dx.shape == x.shape and dw.shape == kernel.shape
    assert _rel_err(y, y_ref) < RTOL
    assert _rel_err(dx, dx_ref) < RTOL
    assert _rel_err(dw, dw_ref) < RTOL


def test_bfloat16_compute_matches_native_on_the_same_rounded_inputs():
    """bfloat16 in, bfloat16 out, float32 accumulation: within bfloat16 rounding of the float32 convolution of the
    same (bfloat16-representable) inputs; the float32 path is held to 1e-4 above."""
    rng = np.random.default_rng(7)
    strides, padding = (2, 2), ((1, 1), (1, 1))
    x = jnp.asarray(rng.standard_normal((2, 7, 7, 8)), jnp.bfloat16)
    kernel = jnp.asarray(rng.standard_normal((3, 3, 8, 16)), jnp.bfloat16)
    cot = jnp.asarray(rng.standard_normal((2, 4, 4, 16)), jnp.float32)
    y, (dx, dw) = _value_and_grads(lambda a, b: conv2d_matmul(a, b, strides, padding), x, kernel, cot)
    assert y.dtype == dx.dtype == dw.dtype == jnp.bfloat16
    y_ref, (dx_ref, dw_ref) = _value_and_grads(
        lambda a, b: _native(a, b, strides, padding), x.astype(jnp.float32), kernel.astype(jnp.float32), cot
    )
    bf16_eps = 2.0**-8  # one rounding of the result (and of the bfloat16 cotangent in the gradients)
    assert _rel_err(y, y_ref) < 2 * bf16_eps
    assert _rel_err(dx, dx_ref) < 4 * bf16_eps
    assert _rel_err(dw, dw_ref) < 4 * bf16_eps


def test_flax_conv_with_the_cpu_path_has_the_same_parameters_and_outputs():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 3, 4)), jnp.float32)

    def conv(impl):
        kwargs = {} if impl is None else {"conv_general_dilated": make_conv_general_dilated(impl)}
        return nn.Conv(6, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), use_bias=False, name="c", **kwargs)

    plain = conv(None).init(jax.random.key(0), x)
    cpu = conv("cpu_matmul").init(jax.random.key(0), x)
    assert jax.tree.structure(plain) == jax.tree.structure(cpu)
    np.testing.assert_array_equal(plain["params"]["kernel"], cpu["params"]["kernel"])
    want = conv(None).apply(plain, x)
    assert _rel_err(conv("cpu_matmul").apply(plain, x), want) < RTOL
    # Dilated convolutions are not covered by the GEMM form and fall through to the native one.
    dilated = make_conv_general_dilated("cpu_matmul")(x, plain["params"]["kernel"], (1, 1), ((2, 2), (2, 2)),
                                                      rhs_dilation=(2, 2), dimension_numbers=DN)  # fmt: skip
    np.testing.assert_array_equal(
        dilated, lax.conv_general_dilated(x, plain["params"]["kernel"], (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                          dimension_numbers=DN),
    )  # fmt: skip


def test_conv_impl_names():
    assert resolve_conv_impl("auto") == ("cpu_matmul" if jax.default_backend() == "cpu" else "native")
    assert resolve_conv_impl("native") == "native"
    with pytest.raises(ValueError, match="conv_impl"):
        resolve_conv_impl("cudnn")
    with pytest.raises(ValueError, match="conv_impl"):
        create_resnet("resnet18", conv_impl="fast")


def test_resnet_gradients_equal_under_both_conv_impls():
    """A whole ResNet (the stem and layer1 on >= 4x4 maps take the native path, layer2-4 and every 1x1 projection the
    GEMM path): identical parameter trees, equal BatchNorm statistics, loss and gradients."""
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 16, 16, 3)), jnp.float32)
    native, cpu = (create_resnet("resnet10", width=8, conv_impl=impl) for impl in ("native", "cpu_matmul"))
    variables = jax.jit(lambda x: native.init(jax.random.key(0, impl="rbg"), x))(x)
    assert jax.tree.structure(variables) == jax.tree.structure(
        jax.eval_shape(lambda x: cpu.init(jax.random.key(0, impl="rbg"), x), x)
    )

    def loss(model, params):
        out, state = model.apply({**variables, "params": params}, x, mutable=["batch_stats"])
        return jnp.sum(jnp.sin(out)), state

    results = [
        jax.jit(jax.value_and_grad(lambda p, m=m: loss(m, p), has_aux=True))(variables["params"]) for m in (native, cpu)
    ]
    (loss_n, state_n), grads_n = results[0]
    (loss_c, state_c), grads_c = results[1]
    assert _rel_err(loss_c, loss_n) < RTOL
    for a, b in zip(jax.tree.leaves(state_c), jax.tree.leaves(state_n), strict=True):
        assert _rel_err(a, b) < RTOL
    paths = jax.tree_util.tree_flatten_with_path(grads_n)[0]
    for (path, want), got in zip(paths, jax.tree.leaves(grads_c), strict=True):
        assert _rel_err(got, want) < RTOL, jax.tree_util.keystr(path)


def test_compilation_cache_is_used_by_a_second_process(tmp_path):
    """enable_compilation_cache: a second process with the same program loads it instead of compiling."""
    script = textwrap.dedent(
        f"""
        import jax, jax.numpy as jnp
        from jax import monitoring
        from fetalssl_jax.runtime.sharding import enable_compilation_cache
        hits = []
        monitoring.register_event_listener(lambda name, **kw: hits.append(name))
        enable_compilation_cache({str(tmp_path / "xla")!r})
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # the toy program compiles in ms
        f = jax.jit(lambda x: jnp.tanh(x @ x.T).sum())
        f(jnp.ones((64, 64))).block_until_ready()
        print("HITS", hits.count("/jax/compilation_cache/cache_hits"))
        """
    )
    runs = [
        subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
        for _ in range(2)
    ]
    hits = [int(out.split("HITS")[-1]) for out in runs]
    assert hits[0] == 0 and hits[1] >= 1, hits  # (jnp.ones is a cached program too)
    assert any((tmp_path / "xla").iterdir())
