"""The CPU max-pool gradient (models/pool.py) and the huge-page re-execution (fetalssl_jax/runtime/hugepages.py).

The max-pool reference is `jax.grad` of `lax.reduce_window(max)`, i.e. XLA's own select_and_scatter, and a numpy
loop that sends each window's gradient to its first maximum (PyTorch's rule); neither shares code with the tested
form.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from fetalssl_jax.models.pool import max_pool, max_pool_fast_grad
from fetalssl_jax.runtime.hugepages import HUGETLB_TUNABLE, _thp_available, hugepage_environ


def _native(x, window, strides, padding):
    return lax.reduce_window(x, -jnp.inf, lax.max, (1, *window, 1), (1, *strides, 1), ((0, 0), *padding, (0, 0)))


def _numpy_first_max_grad(x, window, strides, padding, dy):
    """dx of sum(maxpool(x) * dy), each window's dy added to its first maximum in row-major order."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), padding[0], padding[1], (0, 0)), constant_values=-np.inf)
    dxp = np.zeros_like(xp)
    for b in range(n):
        for i in range(dy.shape[1]):
            for j in range(dy.shape[2]):
                for ch in range(c):
                    r0, c0 = i * strides[0], j * strides[1]
                    win = xp[b, r0 : r0 + window[0], c0 : c0 + window[1], ch]
                    k = int(np.argmax(win))  # numpy's argmax: first occurrence, row-major
                    dxp[b, r0 + k // window[1], c0 + k % window[1], ch] += dy[b, i, j, ch]
    return dxp[:, padding[0][0] : padding[0][0] + h, padding[1][0] : padding[1][0] + w]


# (shape, window, strides, padding): the ResNet stem's 3x3/2 pad 1, odd and non-square maps, overlapping and
# non-overlapping windows, asymmetric padding.
POOLS = [
    ((2, 8, 8, 3), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((1, 7, 9, 2), (3, 3), (2, 2), ((1, 1), (1, 1))),
    ((2, 6, 6, 4), (2, 2), (2, 2), ((0, 0), (0, 0))),
    ((1, 5, 6, 3), (3, 2), (1, 2), ((2, 0), (1, 1))),
]


@pytest.mark.parametrize("shape,window,strides,padding", POOLS)
def test_max_pool_values_and_gradients_equal_native_and_first_max_rule(shape, window, strides, padding):
    rng = np.random.default_rng(sum(shape))
    # ReLU output rounded to a coarse grid: many ties, at zero and above it.
    x = np.maximum(np.round(rng.standard_normal(shape) * 2) / 2, 0).astype(np.float32)
    y_ref = _native(jnp.asarray(x), window, strides, padding)
    dy = rng.standard_normal(y_ref.shape).astype(np.float32)

    def loss(pool, x):
        return jnp.sum(pool(x) * dy)

    fast = lambda x: max_pool(x, window, strides, padding, conv_impl="cpu_matmul")  # noqa: E731
    native = lambda x: max_pool(x, window, strides, padding, conv_impl="native")  # noqa: E731
    np.testing.assert_array_equal(jax.jit(fast)(x), y_ref)
    np.testing.assert_array_equal(jax.jit(native)(x), y_ref)
    grad_fast = jax.jit(jax.grad(lambda x: loss(fast, x)))(x)
    grad_xla = jax.jit(jax.grad(lambda x: loss(lambda a: _native(a, window, strides, padding), x)))(x)
    want = _numpy_first_max_grad(x, window, strides, padding, dy)
    np.testing.assert_allclose(grad_fast, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad_xla, want, rtol=1e-6, atol=1e-6)  # the rule is XLA's own


def test_max_pool_plateau_sends_every_gradient_to_the_first_maximum():
    """Hand-worked: a constant 4x4 map, 2x2 windows with stride 2: each window's gradient lands on its top-left."""
    x = jnp.ones((1, 4, 4, 1), jnp.float32)
    dx = jax.grad(lambda x: jnp.sum(max_pool_fast_grad(x, (2, 2), (2, 2), ((0, 0), (0, 0))) * jnp.arange(1.0, 5.0)
                                    .reshape(1, 2, 2, 1)))(x)  # fmt: skip
    want = np.zeros((4, 4), np.float32)
    want[0, 0], want[0, 2], want[2, 0], want[2, 2] = 1, 2, 3, 4
    np.testing.assert_array_equal(dx[0, :, :, 0], want)


def test_max_pool_bfloat16_and_bad_padding():
    x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 6, 6, 2)), jnp.bfloat16)
    grad = jax.grad(lambda x: jnp.sum(max_pool(x, (3, 3), (2, 2), ((1, 1), (1, 1)), "cpu_matmul").astype(jnp.float32)))
    dx = grad(x)
    assert dx.dtype == jnp.bfloat16
    assert float(jnp.sum(dx.astype(jnp.float32))) == 18.0  # one unit per output: 3x3 positions x 2 channels
    with pytest.raises(ValueError, match="padding"):
        max_pool(x, (3, 3), (2, 2), ((3, 3), (1, 1)))


def test_hugepage_environ_rules():
    base = {"PATH": "/bin"}
    env = hugepage_environ(base, is_glibc_linux=True, thp_available=True)
    assert env == {"PATH": "/bin", "GLIBC_TUNABLES": HUGETLB_TUNABLE}
    # Other tunables are kept; a hugetlb value already given (ours or the user's) is left alone.
    env = hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, is_glibc_linux=True, thp_available=True)
    assert env["GLIBC_TUNABLES"] == f"glibc.malloc.arena_max=2:{HUGETLB_TUNABLE}"
    assert hugepage_environ({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, True, True) is None
    assert hugepage_environ(base, is_glibc_linux=False, thp_available=True) is None
    assert hugepage_environ(base, is_glibc_linux=True, thp_available=False) is None
    for off in ("0", "false", "OFF"):
        assert hugepage_environ({"FETALSSL_HUGEPAGES": off}, is_glibc_linux=True, thp_available=True) is None


def test_thp_setting_parsing(tmp_path):
    setting = tmp_path / "enabled"
    setting.write_text("always [madvise] never\n")
    assert _thp_available(str(setting))
    setting.write_text("always madvise [never]\n")
    assert not _thp_available(str(setting))
    assert not _thp_available(str(tmp_path / "missing"))


def test_reexec_keeps_arguments_and_pid_and_sets_the_tunable_once():
    script = textwrap.dedent(
        """
        import os, sys
        print("BEFORE", os.getpid(), os.environ.get("GLIBC_TUNABLES"), flush=True)
        from fetalssl_jax.runtime.hugepages import reexec_with_hugepages
        reexec_with_hugepages()
        print("AFTER", os.getpid(), os.environ.get("GLIBC_TUNABLES"), sys.argv[1:])
        """
    )
    env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "FETALSSL_HUGEPAGES")}
    out = subprocess.run([sys.executable, "-c", script, "a", "--b=1"], capture_output=True, text=True, check=True,
                         env=env).stdout.split("\n")  # fmt: skip
    befores = [line.split() for line in out if line.startswith("BEFORE")]
    after = next(line.split(" ", 3) for line in out if line.startswith("AFTER"))
    assert after[3] == "['a', '--b=1']"
    if hugepage_environ(env) is None:  # not glibc/Linux, or THP off on this machine: runs as it is
        assert len(befores) == 1 and after[2] == "None"
    else:
        assert len(befores) == 2 and befores[0][1] == befores[1][1] == after[1]  # same process, run twice
        assert after[2] == HUGETLB_TUNABLE
    env["FETALSSL_HUGEPAGES"] = "0"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True, env=env).stdout
    assert out.count("BEFORE") == 1 and "AFTER" in out and out.split("AFTER")[1].split()[1] == "None"
