"""PyTorch-named ResNet weights: import from torchvision/timm state dicts, export, round trip."""

import numpy as np
import pytest

from fetalssl_jax.downstream.backbones import resolve_backbone
from fetalssl_jax.errors import DataError
from fetalssl_jax.models import torch_io
from fetalssl_jax.models.resnet import random_backbone_variables


def torchvision_state_dict(stage_sizes, width, bottleneck, seed=0):
    """A state dict with the keys and shapes torchvision's ResNet(...).state_dict() has, written from the
    torchvision architecture (not from our converter): random values, fc included."""
    rng = np.random.default_rng(seed)
    sd = {}

    def conv(name, out_c, in_c, k):
        sd[f"{name}.weight"] = rng.standard_normal((out_c, in_c, k, k)).astype(np.float32)

    def bn(name, c):
        sd[f"{name}.weight"] = rng.standard_normal(c).astype(np.float32)
        sd[f"{name}.bias"] = rng.standard_normal(c).astype(np.float32)
        sd[f"{name}.running_mean"] = rng.standard_normal(c).astype(np.float32)
        sd[f"{name}.running_var"] = rng.uniform(0.5, 2, c).astype(np.float32)
        sd[f"{name}.num_batches_tracked"] = np.array(7, np.int64)

    expansion = 4 if bottleneck else 1
    conv("conv1", width, 3, 7)
    bn("bn1", width)
    in_c = width
    for i, blocks in enumerate(stage_sizes):
        planes = width * 2**i
        for j in range(blocks):
            p = f"layer{i + 1}.{j}"
            if bottleneck:
                conv(f"{p}.conv1", planes, in_c, 1)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
                conv(f"{p}.conv3", planes * 4, planes, 1)
                bn(f"{p}.bn3", planes * 4)
            else:
                conv(f"{p}.conv1", planes, in_c, 3)
                bn(f"{p}.bn1", planes)
                conv(f"{p}.conv2", planes, planes, 3)
                bn(f"{p}.bn2", planes)
            stride = 2 if (i > 0 and j == 0) else 1
            if stride != 1 or in_c != planes * expansion:
                conv(f"{p}.downsample.0", planes * expansion, in_c, 1)
                bn(f"{p}.downsample.1", planes * expansion)
            in_c = planes * expansion
    sd["fc.weight"] = rng.standard_normal((1000, in_c)).astype(np.float32)
    sd["fc.bias"] = np.zeros(1000, np.float32)
    return sd


def test_known_values_land_in_the_right_flax_leaves():
    sd = torchvision_state_dict((2, 2, 2, 2), 8, bottleneck=False)
    expected = random_backbone_variables("resnet18", 8, seed=0)
    v = torch_io.from_torch_state_dict(sd, expected, "test")
    p, s = v["params"], v["batch_stats"]
    # conv: torch [out, in, kh, kw] -> flax [kh, kw, in, out]
    assert p["conv1"]["kernel"][5, 2, 1, 6] == sd["conv1.weight"][6, 1, 5, 2]
    assert p["layer3_1"]["conv2"]["kernel"][0, 2, 13, 30] == sd["layer3.1.conv2.weight"][30, 13, 0, 2]
    assert p["layer2_0"]["downsample_conv"]["kernel"][0, 0, 7, 9] == sd["layer2.0.downsample.0.weight"][9, 7, 0, 0]
    np.testing.assert_array_equal(p["bn1"]["scale"], sd["bn1.weight"])
    np.testing.assert_array_equal(p["layer4_0"]["downsample_bn"]["bias"], sd["layer4.0.downsample.1.bias"])
    np.testing.assert_array_equal(s["layer1_1"]["bn2"]["mean"], sd["layer1.1.bn2.running_mean"])
    np.testing.assert_array_equal(s["layer4_1"]["bn1"]["var"], sd["layer4.1.bn1.running_var"])
    # every leaf of the Flax model was filled, with torch's values (sum of all conv weights as a checksum)
    torch_conv_sum = sum(float(w.sum()) for k, w in sd.items() if k.endswith("weight") and w.ndim == 4)
    flax_conv_sum = sum(float(leaf["kernel"].sum()) for leaf in _modules(p) if "kernel" in leaf)
    assert flax_conv_sum == pytest.approx(torch_conv_sum, rel=1e-6)


def _modules(tree):
    for value in tree.values():
        if isinstance(value, dict):
            if any(not isinstance(x, dict) for x in value.values()):
                yield value
            yield from _modules(value)


def test_bottleneck_arch_and_width_are_inferred_and_prefixes_stripped():
    sd = torchvision_state_dict((3, 4, 6, 3), 4, bottleneck=True)
    assert torch_io.infer_resnet(sd) == ("resnet50", 4)
    assert torch_io.infer_resnet(torchvision_state_dict((2, 2, 2, 2), 8, False)) == ("resnet18", 8)
    assert torch_io.infer_resnet(torchvision_state_dict((3, 4, 6, 3), 8, False)) == ("resnet34", 8)
    # An SSL checkpoint: DDP + backbone prefix, a projector beside it.
    wrapped = {f"module.backbone.{k}": v for k, v in sd.items()}
    wrapped["module.projector.0.weight"] = np.ones((3, 3), np.float32)
    assert torch_io.infer_resnet(wrapped) == ("resnet50", 4)
    v = torch_io.from_torch_state_dict(wrapped, random_backbone_variables("resnet50", 4, 0), "ckpt")
    kernel = v["params"]["layer3_5"]["conv3"]["kernel"]
    np.testing.assert_array_equal(kernel[0, 0, :, 0], sd["layer3.5.conv3.weight"][0, :, 0, 0])


def test_export_has_exactly_torchvisions_keys_and_round_trips(tmp_path):
    variables = random_backbone_variables("resnet50", 4, seed=3)
    sd = torch_io.to_torch_state_dict(variables)
    reference = torchvision_state_dict((3, 4, 6, 3), 4, bottleneck=True)
    assert set(sd) == set(reference) - {"fc.weight", "fc.bias"}
    for key in sd:
        assert sd[key].shape == reference[key].shape, key
    for suffix in (".safetensors", ".npz"):
        path = torch_io.save_state_dict_file(tmp_path / f"w{suffix}", sd)
        back = torch_io.from_torch_state_dict(torch_io.load_state_dict_file(path), variables, str(path))
        flat_a, flat_b = _flat(variables), _flat(back)
        assert flat_a.keys() == flat_b.keys()
        for key in flat_a:
            np.testing.assert_array_equal(np.asarray(flat_a[key]), flat_b[key], err_msg=str(key))


def _flat(tree, prefix=()):
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out


def test_resolve_backbone_from_weights_file_checks_the_architecture(tmp_path):
    sd = torchvision_state_dict((1, 1, 1, 1), 8, bottleneck=False)
    path = torch_io.save_state_dict_file(tmp_path / "imagenet.safetensors", sd)
    init = resolve_backbone(str(path), {"arch": "resnet10", "width": 8}, 32)
    assert init.kind == "weights_file"
    np.testing.assert_array_equal(init.variables["params"]["layer1_0"]["conv1"]["kernel"][1, 1, 2, 3],
                                  sd["layer1.0.conv1.weight"][3, 2, 1, 1])  # fmt: skip
    with pytest.raises(DataError, match=r"resnet10 of width 8.*asks for a resnet10 of width 16 \(set "
                                        r"--config.model.width=8\)"):  # fmt: skip
        resolve_backbone(str(path), {"arch": "resnet10", "width": 16}, 32)
    with pytest.raises(DataError, match="resnet18"):
        resolve_backbone(str(path), {"arch": "resnet18", "width": 8}, 32)


def test_bad_weights_are_named(tmp_path):
    sd = torchvision_state_dict((1, 1, 1, 1), 8, bottleneck=False)
    del sd["layer2.0.bn1.running_var"]
    with pytest.raises(DataError, match=r"missing \['layer2.0.bn1.running_var'\]"):
        torch_io.from_torch_state_dict(sd, random_backbone_variables("resnet10", 8, 0), "w.npz")
    deep_stem = torchvision_state_dict((1, 1, 1, 1), 8, bottleneck=False)
    deep_stem["conv1.1.weight"] = np.zeros((8, 8, 3, 3), np.float32)
    with pytest.raises(DataError, match="conv1.1.weight"):
        torch_io.from_torch_state_dict(deep_stem, None, "timm.safetensors")
    with pytest.raises(DataError, match="no ResNet stem"):
        torch_io.from_torch_state_dict({"fc.weight": np.zeros((2, 2))}, None, "head_only.npz")
    (tmp_path / "w.pth").write_bytes(b"not really")
    with pytest.raises(DataError, match=r"w.pth.*safetensors"):
        torch_io.load_state_dict_file(tmp_path / "w.pth")
    (tmp_path / "broken.safetensors").write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError, match="broken.safetensors"):
        torch_io.load_state_dict_file(tmp_path / "broken.safetensors")
    with pytest.raises(DataError, match="nowhere"):
        resolve_backbone(str(tmp_path / "nowhere"), {"arch": "resnet10", "width": 8}, 32)
