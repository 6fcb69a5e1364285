"""Tests for the torchvision-topology Flax ResNets.

Expected values come from independent sources: torchvision's published parameter counts, numpy
re-implementations of the stem / BatchNorm, and the definitions of the initialisers.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.core import unfreeze

from fetalssl_jax.models.resnet import RESNET_ARCHS, BasicBlock, Bottleneck, ResNet, create_resnet

EPS = 1e-5


def _key(seed: int = 0) -> jax.Array:
    # "rbg" keys compile far faster than threefry on CPU, which dominates the test time here.
    return jax.random.key(seed, impl="rbg")


def _init(model, x, seed: int = 0):
    """Initialise under jit (one compilation is cheaper than op-by-op on CPU)."""
    return unfreeze(jax.jit(lambda r, x: model.init(r, x, train=False))(_key(seed), x))


def _apply(model, variables, x, **kwargs):
    """Jitted apply; kwargs (train, return_map, mutable) are static."""
    return jax.jit(lambda v, x: model.apply(v, x, **kwargs))(variables, x)


def _n_params(tree) -> int:
    return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


# ---------------------------------------------------------------- numpy reference for the stem
def _np_conv_7x7_s2_p3(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """PyTorch Conv2d(k=7, stride=2, padding=3, bias=False) on NHWC, kernel [kh, kw, in, out]."""
    b, h, w, _ = x.shape
    ho, wo = (h + 6 - 7) // 2 + 1, (w + 6 - 7) // 2 + 1
    xp = np.pad(x, ((0, 0), (3, 3), (3, 3), (0, 0)))
    out = np.zeros((b, ho, wo, kernel.shape[-1]))
    for di in range(7):
        for dj in range(7):
            patch = xp[:, di : di + 2 * ho : 2, dj : dj + 2 * wo : 2, :]
            out += np.einsum("bhwc,co->bhwo", patch, kernel[di, dj])
    return out


def _np_maxpool_3x3_s2_p1(x: np.ndarray) -> np.ndarray:
    """PyTorch MaxPool2d(3, stride=2, padding=1): padding never wins the max."""
    b, h, w, c = x.shape
    ho, wo = (h + 2 - 3) // 2 + 1, (w + 2 - 3) // 2 + 1
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    out = np.empty((b, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            out[:, i, j, :] = xp[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3, :].max(axis=(1, 2))
    return out


def _np_stem(x, kernel, scale, bias, mean=None, var=None):
    """conv1 -> BN (batch stats unless mean/var given) -> ReLU -> maxpool, in float64."""
    conv = _np_conv_7x7_s2_p3(np.asarray(x, np.float64), np.asarray(kernel, np.float64))
    batch_mean = conv.mean(axis=(0, 1, 2))
    batch_var = conv.var(axis=(0, 1, 2))  # biased, as PyTorch normalises with
    m = batch_mean if mean is None else mean
    v = batch_var if var is None else var
    y = (conv - m) / np.sqrt(v + EPS) * scale + bias
    return _np_maxpool_3x3_s2_p1(np.maximum(y, 0.0)), batch_mean, batch_var


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def r18():
    """Width-8 ResNet-18 with perturbed stem BN params/stats so the BN checks are not trivial."""
    model = create_resnet("resnet18", width=8)
    variables = _init(model, jnp.zeros((2, 32, 32, 3)))
    rng = np.random.default_rng(0)
    c = model.width
    variables["params"]["bn1"]["scale"] = jnp.asarray(rng.uniform(0.5, 1.5, c), jnp.float32)
    variables["params"]["bn1"]["bias"] = jnp.asarray(rng.normal(0, 0.5, c), jnp.float32)
    variables["batch_stats"]["bn1"]["mean"] = jnp.asarray(rng.normal(0, 1, c), jnp.float32)
    variables["batch_stats"]["bn1"]["var"] = jnp.asarray(rng.uniform(0.5, 2.0, c), jnp.float32)
    return model, variables


# ---------------------------------------------------------------- parameter counts
# torchvision's published totals minus fc (512*1000+1000 for 18/34, 2048*1000+1000 for 50+),
# e.g. resnet18: 11,689,512 - 513,000.
TORCHVISION_PARAMS_NO_FC = {
    # resnet10 is not a torchvision model; counted by hand: stem 9,408 + 128; layer1 73,984; layer2 230,144;
    # layer3 919,040; layer4 3,673,088 (two 3x3 convs, two BNs, a 1x1 downsample + BN where the width doubles)
    "resnet10": 4_905_792,
    "resnet18": 11_176_512,
    "resnet34": 21_284_672,
    "resnet50": 23_508_032,
    "resnet101": 42_500_160,
    "resnet152": 58_143_808,
}


@pytest.mark.parametrize("arch", RESNET_ARCHS)
def test_param_count_matches_torchvision(arch):
    expected = TORCHVISION_PARAMS_NO_FC[arch]
    model = create_resnet(arch)
    shapes = jax.eval_shape(lambda r, x: model.init(r, x, train=False), _key(0), jnp.zeros((1, 32, 32, 3)))
    assert _n_params(shapes["params"]) == expected
    # Running stats are buffers in torch, not parameters: they must live in batch_stats only.
    assert set(shapes) == {"params", "batch_stats"}
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))


def test_archs_and_num_features():
    assert RESNET_ARCHS == ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
    assert create_resnet("resnet18").num_features == 512
    assert create_resnet("resnet34").num_features == 512
    assert create_resnet("resnet50").num_features == 2048
    assert create_resnet("resnet152", width=16).num_features == 512
    assert create_resnet("resnet18", width=8).num_features == 64


def test_unknown_arch_raises():
    with pytest.raises(ValueError, match="resnet7") as err:
        create_resnet("resnet7")
    assert "resnet50" in str(err.value)


# ---------------------------------------------------------------- shapes and naming
def test_resnet18_shapes(r18):
    model, variables = r18
    x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 64, 64, 3)), jnp.float32)
    (pooled, fmap), _ = _apply(model, variables, x, return_map=True, mutable=["batch_stats"])
    assert pooled.shape == (2, 64) and pooled.dtype == jnp.float32
    assert fmap.shape == (2, 2, 2, 64) and fmap.dtype == jnp.float32
    np.testing.assert_allclose(pooled, np.asarray(fmap).mean(axis=(1, 2)), rtol=1e-5, atol=1e-6)


def test_resnet50_shapes():
    model = create_resnet("resnet50", width=8)
    x = jnp.zeros((2, 64, 64, 3))
    variables = jax.eval_shape(lambda r, x: model.init(r, x, train=False), _key(0), x)
    pooled, fmap = jax.eval_shape(lambda v, x: model.apply(v, x, train=False, return_map=True), variables, x)
    assert pooled.shape == (2, 256) and pooled.dtype == jnp.float32
    assert fmap.shape == (2, 2, 2, 256)
    p = variables["params"]
    # v1.5: stride 2 on the 3x3 conv; 1x1 convs are stride 1; expansion 4 on conv3.
    assert p["layer2_0"]["conv1"]["kernel"].shape == (1, 1, 32, 16)
    assert p["layer2_0"]["conv2"]["kernel"].shape == (3, 3, 16, 16)
    assert p["layer2_0"]["conv3"]["kernel"].shape == (1, 1, 16, 64)
    assert p["layer1_0"]["downsample_conv"]["kernel"].shape == (1, 1, 8, 32)  # channels change only


def test_submodule_names_match_torchvision_layout(r18):
    _, variables = r18
    p = variables["params"]
    blocks = [f"layer{i}_{j}" for i in range(1, 5) for j in range(2)]
    assert set(p) == {"conv1", "bn1", *blocks}
    assert p["conv1"]["kernel"].shape == (7, 7, 3, 8)
    assert "kernel" not in p["bn1"] and "bias" not in p["conv1"]
    # torchvision: downsample only in the first block of layer2..4 for BasicBlock nets.
    with_ds = {b for b in blocks if "downsample_conv" in p[b]}
    assert with_ds == {"layer2_0", "layer3_0", "layer4_0"}
    assert set(p["layer2_0"]) == {"conv1", "bn1", "conv2", "bn2", "downsample_conv", "downsample_bn"}
    assert set(p["layer1_1"]) == {"conv1", "bn1", "conv2", "bn2"}
    assert set(variables["batch_stats"]["layer2_0"]["downsample_bn"]) == {"mean", "var"}


# ---------------------------------------------------------------- initialisation
def _bn_scales(params, prefix=""):
    """Yield (path, scale) for every BatchNorm in a param tree."""
    for name, sub in params.items():
        if isinstance(sub, dict) and "scale" in sub:
            yield f"{prefix}{name}", np.asarray(sub["scale"])
        elif isinstance(sub, dict):
            yield from _bn_scales(sub, f"{prefix}{name}/")


def test_zero_init_residual_basic(r18):
    _, variables = r18
    params = dict(variables["params"])
    params.pop("bn1")  # perturbed by the fixture; checked in the small-net test below
    scales = dict(_bn_scales(params))
    last = [k for k in scales if k.endswith("/bn2")]
    assert len(last) == 8
    for path, s in scales.items():
        np.testing.assert_array_equal(s, 0.0 if path.endswith("/bn2") else 1.0, err_msg=path)


@pytest.mark.parametrize("zero_init", [True, False])
def test_zero_init_residual_bottleneck(zero_init):
    model = ResNet(stage_sizes=(2, 1), block_cls=Bottleneck, width=4, zero_init_residual=zero_init)
    params = _init(model, jnp.zeros((1, 16, 16, 3)))["params"]
    scales = dict(_bn_scales(params))
    assert sum(k.endswith("/bn3") for k in scales) == 3
    assert "layer1_0/downsample_bn" in scales
    for path, s in scales.items():
        want = 0.0 if (zero_init and path.endswith("/bn3")) else 1.0
        np.testing.assert_array_equal(s, want, err_msg=path)


def test_no_zero_init_basic():
    model = ResNet(stage_sizes=(1, 1), block_cls=BasicBlock, width=4, zero_init_residual=False)
    scales = dict(_bn_scales(_init(model, jnp.zeros((1, 16, 16, 3)))["params"]))
    assert "layer1_0/bn2" in scales
    for path, s in scales.items():
        np.testing.assert_array_equal(s, 1.0, err_msg=path)


def test_conv_init_is_kaiming_normal_fan_out():
    model = ResNet(stage_sizes=(1,), block_cls=BasicBlock, width=64)
    p = _init(model, jnp.zeros((1, 16, 16, 3)))["params"]
    for kernel in (p["conv1"]["kernel"], p["layer1_0"]["conv2"]["kernel"]):
        kh, kw, _, out = kernel.shape
        std = np.sqrt(2.0 / (out * kh * kw))  # torch kaiming_normal_(mode="fan_out", "relu")
        k = np.asarray(kernel)
        assert abs(k.mean()) < 0.05 * std
        assert abs(k.std() / std - 1) < 0.05
        # torch draws from an untruncated normal; jax's truncated normal would stop at 2 std.
        assert np.abs(k).max() > 3 * std


@pytest.mark.parametrize("block_cls", [BasicBlock, Bottleneck])
@pytest.mark.parametrize("train", [True, False])
def test_block_without_downsample_is_relu_identity_at_init(block_cls, train):
    channels = 8
    block = block_cls(features=channels // block_cls.expansion)
    x = np.random.default_rng(0).normal(size=(2, 6, 6, channels)).astype(np.float32)
    variables = _init(block, jnp.asarray(x))
    assert "downsample_conv" not in variables["params"]
    out = _apply(block, variables, jnp.asarray(x), train=train, mutable=["batch_stats"])[0]
    np.testing.assert_allclose(np.asarray(out), np.maximum(x, 0.0), rtol=0, atol=1e-6)


# ---------------------------------------------------------------- BatchNorm behaviour vs numpy
@pytest.fixture(scope="module")
def stem_train(r18):
    model, variables = r18
    x = np.random.default_rng(1).normal(size=(3, 20, 20, 3)).astype(np.float32)
    _, state = _apply(model, variables, jnp.asarray(x), train=True, mutable=["batch_stats", "intermediates"])
    p = variables["params"]
    ref, batch_mean, batch_var = _np_stem(
        x, p["conv1"]["kernel"], np.asarray(p["bn1"]["scale"]), np.asarray(p["bn1"]["bias"])
    )
    return variables, state, ref, batch_mean, batch_var


def test_stem_matches_numpy_train_mode(stem_train):
    _, state, ref, _, _ = stem_train
    (stem,) = state["intermediates"]["stem"]
    assert stem.shape == (3, 5, 5, 8)
    np.testing.assert_allclose(np.asarray(stem), ref, rtol=1e-4, atol=1e-5)


def test_train_updates_batch_stats_with_momentum_0_9(stem_train):
    variables, state, _, batch_mean, batch_var = stem_train
    old = variables["batch_stats"]["bn1"]
    new = state["batch_stats"]["bn1"]
    np.testing.assert_allclose(new["mean"], 0.9 * np.asarray(old["mean"]) + 0.1 * batch_mean, rtol=1e-4, atol=1e-6)
    # Flax uses the biased batch variance for the running average (PyTorch: unbiased).
    np.testing.assert_allclose(new["var"], 0.9 * np.asarray(old["var"]) + 0.1 * batch_var, rtol=1e-4, atol=1e-6)


def test_eval_uses_running_stats_and_is_per_sample(r18):
    model, variables = r18
    rng = np.random.default_rng(2)
    a, b, c = (rng.normal(size=(1, 20, 20, 3)).astype(np.float32) for _ in range(3))
    # batch_stats is not mutable: eval mode must not try to update it.
    run = jax.jit(lambda x: model.apply(variables, x, train=False, mutable=["intermediates"]))
    out_ab, state = run(jnp.asarray(np.concatenate([a, b])))
    out_ac, _ = run(jnp.asarray(np.concatenate([a, c])))
    out_ab2, _ = run(jnp.asarray(np.concatenate([a, b])))
    np.testing.assert_array_equal(np.asarray(out_ab), np.asarray(out_ab2))
    np.testing.assert_allclose(out_ab[0], out_ac[0], rtol=1e-6, atol=1e-6)
    assert not np.allclose(out_ab[1], out_ac[1])

    p, s = variables["params"], variables["batch_stats"]
    ref, _, _ = _np_stem(
        np.concatenate([a, b]),
        p["conv1"]["kernel"],
        np.asarray(p["bn1"]["scale"]),
        np.asarray(p["bn1"]["bias"]),
        mean=np.asarray(s["bn1"]["mean"]),
        var=np.asarray(s["bn1"]["var"]),
    )
    np.testing.assert_allclose(np.asarray(state["intermediates"]["stem"][0]), ref, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- mixed precision
def test_bfloat16_compute(r18):
    f32, variables = r18
    # Undo the zero-init so the residual branches contribute and are compared too.
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.ones_like(v) if path[-1].key == "scale" else v, variables
    )
    bf16 = create_resnet("resnet18", width=8, dtype="bfloat16")
    assert bf16.dtype == jnp.bfloat16
    x = jnp.asarray(np.random.default_rng(3).normal(size=(4, 64, 64, 3)), jnp.float32)
    shapes = jax.eval_shape(lambda r, x: bf16.init(r, x, train=False), _key(0), x)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(shapes))
    out16, state16 = _apply(bf16, variables, x, mutable=["batch_stats"])
    out32, _ = _apply(f32, variables, x, mutable=["batch_stats"])
    assert out16.dtype == jnp.float32
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state16))
    out16, out32 = np.asarray(out16), np.asarray(out32)
    rel = np.linalg.norm(out16 - out32) / np.linalg.norm(out32)
    assert 0 < rel < 0.05  # > 0: really computed in reduced precision
