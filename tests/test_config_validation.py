"""Config validation before anything runs: one case per rule, the command line's exit status, the project's own
configs."""

import sys

import jax
import pytest
from conftest import REPO

from fetalssl_jax import main as cli
from fetalssl_jax.config_lib import load_config, set_by_path
from fetalssl_jax.main import validate
from fetalssl_jax.validation import ConfigError

CONFIGS = REPO / "configs"
BT = "barlow"
PRETRAINING = ("barlow", "vicreg", "simclr", "moco", "byol", "autoencoder", "inpainting", "reorder", "mae")
TOOLS = ("embed", "predict", "select", "gradcam", "tsne", "export")


def _config(name: str, preset: str = "tiny", **overrides):
    config = load_config(f"{CONFIGS / name}.py:{preset}")
    for key, value in overrides.items():
        set_by_path(config, key, value)
    return config


def _problems(config) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate(config)
    assert str(info.value).splitlines() == list(info.value.problems)
    return list(info.value.problems)


# (config file, overrides, the one expected line). Each line is written out by hand: key, value, what is allowed.
PRETRAINING_CASES = [
    (BT, {"batch_size": -4}, "config.batch_size = -4: must be a positive integer"),
    (BT, {"batch_size": 0}, "config.batch_size = 0: must be a positive integer"),
    (BT, {"num_steps": -3}, "config.num_steps = -3: must be a positive integer, or -1 or 0 to train num_epochs "
                                  "epochs"),
    (BT, {"num_steps": -1, "num_epochs": 0}, "config.num_epochs = 0: must be a positive number (num_steps <= 0 "
                                                   "trains num_epochs epochs)"),
    (BT, {"num_steps": 0, "num_epochs": -2}, "config.num_epochs = -2: must be a positive number (num_steps <= 0 "
                                                   "trains num_epochs epochs)"),
    (BT, {"checkpoint_every_steps": 0}, "config.checkpoint_every_steps = 0: must be a positive integer"),
    (BT, {"keep_checkpoints": 0}, "config.keep_checkpoints = 0: must be a positive integer"),
    (BT, {"log_every_steps": 0}, "config.log_every_steps = 0: must be a positive integer"),
    (BT, {"seed": -1}, "config.seed = -1: must be an integer >= 0"),
    (BT, {"model.width": 0}, "config.model.width = 0: must be a positive integer"),
    (BT, {"data.image_size": 16}, "config.data.image_size = 16: must be an integer >= 32 (the ResNets "
                                        "downsample 32x)"),
    (BT, {"data.stored_size": 8}, "config.data.stored_size = 8: must be an integer >= 16 (the embedded data is "
                                        "rendered at 16 px or more)"),
    (BT, {"data.num_videos": 0}, "config.data.num_videos = 0: must be a positive integer"),
    (BT, {"data.frames_per_video": 0}, "config.data.frames_per_video = 0: must be a positive integer"),
    (BT, {"data.frame_skip": 0}, "config.data.frame_skip = 0: must be a positive integer"),
    (BT, {"data.max_gap": -1}, "config.data.max_gap = -1: must be an integer >= 0"),
    ("reorder", {"data.clip_length": 1}, "config.data.clip_length = 1: must be an integer >= 2 (the frames of a clip "
                                         "are reordered)"),
    ("reorder", {"method_kwargs.num_permutations": 25}, "config.method_kwargs.num_permutations = 25: must be at most "
                                                        "the 24 orders of data.clip_length = 4 frames"),
    (BT, {"method_kwargs.projector": (64, 0)}, "config.method_kwargs.projector = (64, 0): must be a non-empty "
                                               "sequence of integers >= 1 (the projector's layer sizes)"),
    ("simclr", {"method_kwargs.temperature": 0.0}, "config.method_kwargs.temperature = 0.0: must be a positive number"),
    ("byol", {"method_kwargs.momentum_base": 1.0}, "config.method_kwargs.momentum_base = 1.0: must be a number in "
                                                   "[0, 1)"),
    (BT, {"optim.lr_weights": -0.1}, "config.optim.lr_weights = -0.1: must be a positive number"),
    (BT, {"optim.weight_decay": -1e-4}, "config.optim.weight_decay = -0.0001: must be a number >= 0"),
    (BT, {"optim.momentum": 1.5}, "config.optim.momentum = 1.5: must be a number in [0, 1)"),
    (BT, {"optim.trust_coefficient": 0.0}, "config.optim.trust_coefficient = 0.0: must be a positive number"),
    (BT, {"eval.knn_k": 0}, "config.eval.knn_k = 0: must be a positive integer"),
    (BT, {"eval.num_patients": 2}, "config.eval.num_patients = 2: must be an integer >= 3 (patients are split "
                                         "into train, validation and test)"),
    (BT, {"eval.frames_per_patient": 4}, "config.eval.frames_per_patient = 4: must be an integer >= 5 (every "
                                               "patient gives a frame of each of the 5 planes)"),
    (BT, {"eval.draws": 0}, "config.eval.draws = 0: must be a positive integer"),
    (BT, {"eval.shots": (1, -2, 0)}, "config.eval.shots = (1, -2, 0): must be a sequence of integers >= 0 (0: "
                                           "all labels)"),
    (BT, {"eval.batch_size": 0}, "config.eval.batch_size = 0: must be a positive integer"),
    (BT, {"augment.view1.flip_prob": 1.5}, "config.augment.view1.flip_prob = 1.5: must be a probability in "
                                                 "[0, 1]"),
    (BT, {"augment.view2.solarize_prob": -0.1}, "config.augment.view2.solarize_prob = -0.1: must be a "
                                                      "probability in [0, 1]"),
    ("simclr", {"augment.view2.blur_prob": 2.0}, "config.augment.view2.blur_prob = 2.0: must be a probability in "
                                                 "[0, 1]"),
    (BT, {"augment.view1.crop_scale": (0.9, 0.2)}, "config.augment.view1.crop_scale = (0.9, 0.2): must be "
                                                         "(low, high) with low <= high"),
    (BT, {"method": "barlow"}, "config.method = 'barlow': must be one of 'autoencoder', 'barlow_twins', 'byol', "
                                     "'dino', 'distill', 'inpainting', 'mae', 'moco', 'reorder', 'simclr', 'vicreg'"),
    (BT, {"model.arch": "resnet9"}, "config.model.arch = 'resnet9': must be one of 'resnet10', 'resnet18', "
                                          "'resnet34', 'resnet50', 'resnet101', 'resnet152', "
                                          "'vit_micro', 'vit_tiny', 'vit_small', 'vit_base'"),
    (BT, {"model.dtype": "float16"}, "config.model.dtype = 'float16': must be one of 'float32', 'bfloat16'"),
    (BT, {"model.conv_impl": "fast"}, "config.model.conv_impl = 'fast': must be one of 'auto', 'native', "
                                            "'cpu_matmul'"),
    (BT, {"optim.name": "adam"}, "config.optim.name = 'adam': must be one of 'lars', 'sgd', 'adamw'"),
    (BT, {"optim.schedule": "cosine"}, "config.optim.schedule = 'cosine': must be one of 'warmup_cosine', "
                                             "'step'"),
    (BT, {"data.source": "hdf5"}, "config.data.source = 'hdf5': must be one of 'synthetic', 'tfds'"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "overrides", "expected"), PRETRAINING_CASES, ids=lambda v: str(v)[:40])
def test_pretraining_rule(name, overrides, expected):
    assert _problems(_config(name, **overrides)) == [expected]


def test_the_global_batch_must_divide_over_the_devices(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 8)
    problems = _problems(_config(BT, batch_size=12))
    assert problems == ["config.batch_size = 12: must be divisible by the 8 devices (it is the global batch)"]
    validate(_config(BT, batch_size=16))  # 2 per device


def test_values_that_only_look_wrong_are_accepted():
    validate(_config(BT, num_steps=4, num_epochs=0))  # num_epochs is unused with num_steps > 0
    validate(_config(BT, num_steps=0, num_epochs=2))  # 0 and -1 both mean "use the epochs"
    validate(_config(BT, **{"eval.shots": (0,), "data.max_gap": 0}))


CLASSIFY_CASES = [
    ({"label_fraction": 0.0}, "config.label_fraction = 0.0: must be a fraction in (0, 1]"),
    ({"label_fraction": 1.5}, "config.label_fraction = 1.5: must be a fraction in (0, 1]"),
    ({"labels_per_class": 5, "label_fraction": 0.5}, "config.label_fraction = 0.5: must stay 1 when labels_per_class "
                                                     "(5) is set; choose one budget"),
    ({"labels_per_class": -1}, "config.labels_per_class = -1: must be an integer >= 0 (0: use label_fraction)"),
    ({"mode": "probe"}, "config.mode = 'probe': must be one of 'finetune', 'linear'"),
    ({"optim.name": "sgd"}, "config.optim.name = 'sgd': must be one of 'adamw'"),
    ({"batch_size": 0}, "config.batch_size = 0: must be a positive integer"),
    ({"eval_batch_size": -8}, "config.eval_batch_size = -8: must be a positive integer"),
    ({"num_steps": -2}, "config.num_steps = -2: must be a positive integer, or -1 or 0 to train num_epochs epochs"),
    ({"num_epochs": 0}, "config.num_epochs = 0: must be a positive integer (num_steps <= 0 trains num_epochs epochs)"),
    ({"checkpoint_every_steps": -1}, "config.checkpoint_every_steps = -1: must be an integer >= 0 (0: no "
                                     "checkpoints)"),
    ({"augment.hflip_prob": 1.2}, "config.augment.hflip_prob = 1.2: must be a probability in [0, 1]"),
    ({"model.arch": "vit"}, "config.model.arch = 'vit': must be one of 'resnet10', 'resnet18', 'resnet34', "
                            "'resnet50', 'resnet101', 'resnet152', 'vit_micro', 'vit_tiny', 'vit_small', 'vit_base'"),
    ({"data.image_size": 24}, "config.data.image_size = 24: must be an integer >= 32 (the ResNets downsample 32x)"),
    ({"eval.num_patients": 1}, "config.eval.num_patients = 1: must be an integer >= 3 (patients are split into train, "
                               "validation and test)"),
    ({"head.dropout": 1.0}, "config.head.dropout = 1.0: must be a number in [0, 1)"),
    ({"optim.lr": -1e-3}, "config.optim.lr = -0.001: must be a positive number"),
    ({"optim.weight_decay": -1.0}, "config.optim.weight_decay = -1.0: must be a number >= 0"),
    ({"calibration": "platt"}, "config.calibration = 'platt': must be one of 'temperature', 'temperature_and_bias'"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "expected"), CLASSIFY_CASES, ids=lambda v: str(v)[:40])
def test_classification_rule(overrides, expected):
    assert _problems(_config("classify", **overrides)) == [expected]


GRID_CASES = [
    ({"inits": ()}, "config.inits = (): must be a non-empty sequence of 'name=spec' entries"),
    ({"inits": ("random", "random")}, "config.inits = ('random', 'random'): names ['random'] more than once; give "
                                      "each entry a unique name="),
    ({"seeds": ()}, "config.seeds = (): must be a non-empty sequence of distinct integers >= 0"),
    ({"seeds": (0, 0)}, "config.seeds = (0, 0): must be a non-empty sequence of distinct integers >= 0"),
    ({"modes": ()}, "config.modes = (): must be a non-empty sequence of distinct modes from 'finetune', 'linear'"),
    ({"modes": ("finetune", "probe")}, "config.modes = ('finetune', 'probe'): must be a non-empty sequence of "
                                       "distinct modes from 'finetune', 'linear'"),
    ({"label_fractions": (0.0,)}, "config.label_fractions = (0.0,): must be a sequence of distinct fractions in "
                                  "(0, 1]"),
    ({"labels_per_class": (0,)}, "config.labels_per_class = (0,): must be a sequence of distinct integers >= 1 "
                                 "(labelled images of every class)"),
    ({"labels_per_class": (), "label_fractions": ()}, "config.label_fractions = (): must give at least one budget (or "
                                                      "labels_per_class)"),
    ({"classify.batch_size": 0}, "config.classify.batch_size = 0: must be a positive integer"),
    ({"classify.mode": "probe"}, "config.classify.mode = 'probe': must be one of 'finetune', 'linear'"),
    ({"inits": (f"bt={CONFIGS / 'barlow.py'}:tiny,batch_size=-4", "random")},
     "config.inits[0] (bt): config.batch_size = -4: must be a positive integer"),
]  # fmt: skip


@pytest.mark.parametrize(("overrides", "expected"), GRID_CASES, ids=lambda v: str(v)[:40])
def test_grid_rule(overrides, expected):
    assert _problems(_config("paper_grid", **overrides)) == [expected]


TOOL_CASES = [
    ("embed", {"input": ""}, "config.input = '': must name a video or image file, a folder or tfds:<name> (it is "
                             "empty)"),
    ("embed", {"backbone": " "}, "config.backbone = ' ': must name a model: a run, an exported backbone, a weights "
                                 "file or 'random' (it is empty)"),
    ("embed", {"input_type": "movies"}, "config.input_type = 'movies': must be one of 'auto', 'videos', 'images'"),
    ("embed", {"image_size": 16}, "config.image_size = 16: must be an integer >= 32 (0: the size the backbone was "
                                  "trained at)"),
    ("embed", {"model.arch": "vit"}, "config.model.arch = 'vit': must be one of 'resnet10', 'resnet18', 'resnet34', "
                                     "'resnet50', 'resnet101', 'resnet152', 'vit_micro', 'vit_tiny', 'vit_small', "
                                     "'vit_base'"),
    ("embed", {"model.patch_size": -8}, "config.model.patch_size = -8: must be an integer >= 0 (0: from the files)"),
    ("embed", {"frame_skip": 0}, "config.frame_skip = 0: must be a positive integer"),
    ("predict", {"fit": "squash"}, "config.fit = 'squash': must be one of 'stretch', 'crop_pad', 'pad'"),
    ("select", {"budget": 0}, "config.budget = 0: must be a positive integer"),
    ("select", {"min_gap": -1}, "config.min_gap = -1: must be an integer >= 0"),
    ("predict", {"threshold": 2.0}, "config.threshold = 2.0: must be a probability in [0, 1]"),
    ("predict", {"smooth_window": 0}, "config.smooth_window = 0: must be a positive integer"),
    ("gradcam", {"stage": 5}, "config.stage = 5: must be a ResNet stage 1..4 (layer1..layer4)"),
    ("export", {"format": "pt"}, "config.format = 'pt': must be one of 'safetensors', 'npz', 'onnx'"),
    ("tsne", {"init": ""}, "config.init = '': must name 'random', a pretraining workdir, a backbone directory or a "
                           "weights file (it is empty)"),
]  # fmt: skip
FILLED = {"embed": {"backbone": "b", "input": "i"}, "select": {"backbone": "b", "input": "i"},
          "predict": {"classifier": "c", "input": "i"}, "gradcam": {"classifier": "c"}, "export": {"backbone": "b"},
          "tsne": {}}  # fmt: skip


@pytest.mark.parametrize(("name", "overrides", "expected"), TOOL_CASES, ids=lambda v: str(v)[:40])
def test_tool_rule(name, overrides, expected):
    assert _problems(_config(name, "default", **{**FILLED[name], **overrides})) == [expected]


def test_every_problem_is_reported_at_once_one_per_line():
    config = _config(BT, batch_size=-4, checkpoint_every_steps=0, **{"model.dtype": "half"})
    assert sorted(_problems(config)) == sorted([
        "config.batch_size = -4: must be a positive integer",
        "config.checkpoint_every_steps = 0: must be a positive integer",
        "config.model.dtype = 'half': must be one of 'float32', 'bfloat16'",
    ])  # fmt: skip


@pytest.mark.parametrize("preset", ["tiny", "default", "paper"])
@pytest.mark.parametrize("name", [*PRETRAINING, "classify", "paper_grid"])
def test_the_projects_own_configs_are_valid(name, preset):
    config = _config(name, preset)
    validate(config)


@pytest.mark.parametrize("name", TOOLS)
def test_the_tool_configs_are_valid_once_their_paths_are_given(name):
    validate(_config(name, "default", **FILLED[name]))
    if FILLED[name]:
        problems = _problems(_config(name, "default"))
        assert all(p.endswith("(it is empty)") for p in problems) and len(problems) == len(FILLED[name])


def test_a_tool_command_exits_2_and_writes_nothing(tmp_path):
    import subprocess

    workdir = tmp_path / "run"
    # a subprocess: absl's flags of one config's keys cannot be defined again for another config in one process
    cmd = [sys.executable, "-m", "fetalssl_jax.main", "--config", f"{CONFIGS / 'predict.py'}", "--workdir",
           str(workdir), "--config.classifier=runs/c", "--config.input=scan.mp4", "--config.threshold=1.5"]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["error: config.threshold = 1.5: must be a probability in [0, 1]"]
    assert not workdir.exists()


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("--config.batch_size=-4", "error: config.batch_size = -4: must be a positive integer"),
        ("--config.checkpoint_every_steps=0", "error: config.checkpoint_every_steps = 0: must be a positive integer"),
    ],
)
def test_command_line_exits_2_and_writes_nothing(override, expected, tmp_path, monkeypatch, capsys):
    workdir = tmp_path / "run"
    argv = ["fetalssl-train", "--config", f"{CONFIGS / 'barlow.py'}:tiny", "--workdir", str(workdir), override]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the --config.* overrides from sys.argv
    assert cli.main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [expected]
    assert not workdir.exists()
