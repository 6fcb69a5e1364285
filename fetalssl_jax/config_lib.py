"""Shared pieces of the experiment configs (big_vision style).

Each experiment is one file in `configs/` with `get_config(arg)`. The file starts from `base_config()`, sets its
method's keys, and applies a preset named by `arg` (`--config configs/barlow.py:paper`). Command-line overrides
(`--config.optim.lr_weights=0.1`) are applied by ml_collections on top. Configs are locked: a key that does not
exist is an error, never a silently ignored typo.
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
from collections.abc import Callable, Mapping, Sequence

import ml_collections

ConfigDict = ml_collections.ConfigDict


def base_config() -> ConfigDict:
    """Keys every pretraining config has; methods add their own under `method_kwargs`."""
    c = ConfigDict()
    c.method = ""  # registry name, e.g. "barlow_twins"
    c.seed = 0

    c.model = ConfigDict()
    c.model.arch = "resnet18"
    c.model.width = 64  # base channels; 64 is torchvision's ResNet, tests use 8
    c.model.dtype = "float32"  # compute dtype: "float32" or "bfloat16"; parameters stay float32
    # How convolutions are computed: "auto" = matrix products with a hand-written gradient on the CPU backend (XLA's
    # CPU convolutions are slow, see models/conv.py), XLA's native convolution on GPU/TPU; or "native"/"cpu_matmul".
    c.model.conv_impl = "auto"

    c.method_kwargs = ConfigDict()  # heads and loss weights of the method

    c.data = ConfigDict()
    c.data.source = "synthetic"  # embedded generated fetal-US videos, or "tfds": a built fetal_us_video dataset
    c.data.name = ""  # source "tfds": e.g. "fetal_us_video/synthetic" (frames, pairs or clips as the method needs)
    c.data.data_dir = ""  # source "tfds": where it was built ("": TFDS's default, ~/tensorflow_datasets)
    c.data.split = "train"  # source "tfds"
    c.data.image_size = 64  # network input size (views are cropped and resized to it)
    c.data.frame_skip = 5  # keep every 5th frame, as the paper
    c.data.max_gap = 0  # 0: both views from one frame; k > 0: second frame up to k kept frames away
    c.data.clip_length = 4  # frames per clip, for clip-based methods (reorder)
    c.data.clip_stride = 1  # kept frames between consecutive clip frames
    c.data.num_videos = 48
    c.data.frames_per_video = 64  # kept frames per video (after frame skip)
    c.data.stored_size = 64  # size the frames are rendered / stored at
    c.data.seed = 0  # of the generated data; the training seed is `seed`
    c.data.prefetch = 2

    c.augment = ConfigDict()
    c.augment.view1 = ConfigDict()
    c.augment.view2 = ConfigDict()

    c.optim = ConfigDict()
    c.optim.name = "lars"
    c.optim.lr_weights = 0.2  # base learning rate, multiplied by batch_size / 256 if lr_batch_scaling
    c.optim.lr_biases = 0.0048  # LARS only: biases and norm parameters
    c.optim.lr_batch_scaling = True
    c.optim.weight_decay = 1e-6
    c.optim.momentum = 0.9
    c.optim.trust_coefficient = 0.001
    c.optim.warmup_epochs = 10.0
    c.optim.end_lr_factor = 0.001  # cosine decays to this fraction of the peak
    c.optim.schedule = "warmup_cosine"  # or "step": x step_decay_factor every step_decay_epochs (autoencoders)
    c.optim.step_decay_epochs = 50.0
    c.optim.step_decay_factor = 0.5624

    c.batch_size = 128  # global batch over all devices and hosts
    c.num_epochs = 100
    c.num_steps = -1  # > 0 overrides num_epochs

    c.log_every_steps = 10
    c.checkpoint_every_steps = 200
    c.keep_checkpoints = 3
    c.progress_bar = True
    # XLA's persistent compilation cache: a second run of the same config starts without recompiling. "" disables.
    c.compilation_cache_dir = "~/.cache/fetalssl_jax/xla"

    c.eval = ConfigDict()
    c.eval.every_steps = -1  # <= 0: only at the end
    c.eval.dataset = "synthetic"  # or a built fetal_cardiac_planes dataset, e.g. "fetal_cardiac_planes/synthetic"
    c.eval.data_dir = ""  # of eval.dataset ("": TFDS's default)
    c.eval.knn_k = 20
    # Labelled patients of the embedded set (split 60/20/20 by patient): 300 x 20 frames keeps the few-label
    # intervals narrow (60 test patients) and takes seconds to generate.
    c.eval.num_patients = 300
    c.eval.frames_per_patient = 20
    c.eval.batch_size = 256
    c.eval.shots = (1, 5, 10, 25, 0)  # labelled images per class of the few-label probes; 0 = all
    c.eval.monitor_shots = (10,)  # the periodic evaluation's probes (kNN and effective rank always)
    c.eval.draws = 20  # random label draws per number of shots
    c.eval.probe_max_iter = 1000
    c.eval.compare_random_init = True
    return c


def view(**overrides) -> ConfigDict:
    """One view's augmentation: the Barlow Twins reference values, with `overrides`."""
    base = dict(
        crop_scale=(0.08, 1.0), crop_ratio=(3 / 4, 4 / 3), flip_prob=0.5, vflip_prob=0.0,
        color_jitter_prob=0.8, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1,
        grayscale_prob=0.2, blur_prob=1.0, blur_sigma=(0.1, 2.0), blur_kernel_fraction=0.1, solarize_prob=0.0,
        # the reference's sigma is for its 256 px input; scaled to data.image_size (0.025-0.5 px at 64 px)
        blur_sigma_reference=256.0,
        rotation_prob=0.0, rotation_deg=0.0, ultrasound_prob=0.0, gain_db=0.0, tgc_db=0.0, speckle=0.0,
        dynamic_range_db=50.0,
    )  # fmt: skip
    base.update(overrides)
    return ConfigDict(base)


def barlow_twins_views(c: ConfigDict) -> None:
    """Barlow Twins / VICReg views: blur p 1.0 / 0.1, solarize p 0.0 / 0.2."""
    c.augment.view1 = view(blur_prob=1.0, solarize_prob=0.0)
    c.augment.view2 = view(blur_prob=0.1, solarize_prob=0.2)


def simclr_views(c: ConfigDict) -> None:
    """SimCLR / MoCo / BYOL views of the reference: ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale 0.2,
    Gaussian blur p 0.5 (kernel ~10% of the size), no solarize."""
    for name in ("view1", "view2"):
        c.augment[name] = view(brightness=0.8, contrast=0.8, saturation=0.8, hue=0.2, blur_prob=0.5)


def tiny_preset(c: ConfigDict) -> None:
    """Seconds on a CPU, for tests and smoke runs: a one-block-per-stage ResNet of width 8 at 32 px."""
    c.model.arch = "resnet10"
    c.model.width = 8
    c.data.image_size = 32
    c.data.stored_size = 32
    c.data.num_videos = 6
    c.data.frames_per_video = 16
    c.batch_size = 16
    c.num_epochs = 2
    c.optim.warmup_epochs = 1
    c.log_every_steps = 1
    c.checkpoint_every_steps = 4
    c.eval.num_patients = 10
    c.eval.frames_per_patient = 10
    c.eval.batch_size = 64
    c.eval.probe_max_iter = 200
    c.eval.shots = (1, 2, 0)
    c.eval.draws = 3
    c.progress_bar = False


def ultrasound_views(c: ConfigDict, crop_scale: tuple[float, float] = (0.25, 1.0)) -> None:
    """Both views for gray ultrasound frames in short runs (see docs/design.md, "Recipes by budget").

    - any rotation (the fetal lie, and so the heart's orientation in the image, is arbitrary);
    - overall gain +-6 dB, a TGC slope of +-6 dB over the depth and fresh speckle (what differs between two
      acquisitions of the same anatomy), with probability 0.8;
    - crops of at least 25 % of the frame: the anatomy that tells the planes apart fills a small part of it, and
      a 0.08-crop of a 64 px frame is often fluid or background only;
    - saturation, hue and grayscale off: they do nothing on gray frames (and are skipped for them anyway).
    """
    for name in ("view1", "view2"):
        v = c.augment[name]
        v.crop_scale = tuple(crop_scale)
        v.rotation_prob, v.rotation_deg = 1.0, 180.0
        v.ultrasound_prob, v.gain_db, v.tgc_db, v.speckle = 0.8, 6.0, 6.0, 0.5
        v.saturation, v.hue, v.grayscale_prob = 0.0, 0.0, 0.0


BIAS_LR_RATIO = 0.0048 / 0.2  # the Barlow Twins reference's biases/weights learning-rate ratio


def short_run_lars(c: ConfigDict, lr: float, weight_decay: float, lr_biases: float | None = None) -> None:
    """LARS for runs of hundreds to a few thousand steps: trust coefficient 0.02 instead of the ImageNet 0.001,
    as solo-learn's CIFAR recipes (see docs/design.md, "Recipes by budget"); lr is per 256 images of batch.

    Biases and BatchNorm parameters get no trust-ratio adaptation, so they learn at `BIAS_LR_RATIO` of the
    weights' rate: at the full rate (solo-learn's choice) the Barlow Twins demo's 10-label probe fell from +0.067
    to +0.008 over random init."""
    c.optim.name = "lars"
    c.optim.trust_coefficient = 0.02
    c.optim.lr_weights = lr
    c.optim.lr_biases = lr * BIAS_LR_RATIO if lr_biases is None else lr_biases
    c.optim.weight_decay = weight_decay
    c.optim.lr_batch_scaling = True


def cpu_demo_preset(c: ConfigDict) -> None:
    """A few minutes on a 2-core CPU: a narrow ResNet-18 at 64 px, 20 epochs of the embedded videos."""
    c.model.width = 16
    c.batch_size = 128
    c.num_epochs = 20
    c.optim.warmup_epochs = 2
    c.checkpoint_every_steps = 100
    c.eval.every_steps = 240  # one periodic evaluation half way (kNN, 10-per-class probe, effective rank)


def paper_preset(c: ConfigDict) -> None:
    """The paper's common setting (GPU/TPU): ResNet-50 at 256 px in bfloat16, evaluated every 5000 steps."""
    c.model.arch = "resnet50"
    c.model.width = 64
    c.model.dtype = "bfloat16"
    c.data.image_size = 256
    c.data.stored_size = 256
    c.data.num_videos = 400
    c.data.frames_per_video = 100
    c.checkpoint_every_steps = 1000
    c.log_every_steps = 50
    c.eval.every_steps = 5000


def apply_preset(
    config: ConfigDict, arg: str | None, presets: Mapping[str, Callable[[ConfigDict], None]]
) -> ConfigDict:
    """Applies the preset named `arg` (empty or None: the default) and locks the config.

    `arg` may also carry overrides after the preset, big_vision style: `paper,batch_size=1024`.
    """
    arg = (arg or "").strip()
    name, _, rest = arg.partition(",")
    name = name.strip() or "default"
    if name not in presets:
        raise ValueError(f"unknown preset {name!r} for method {config.method!r}; choose one of {sorted(presets)}")
    presets[name](config)
    config.preset = name
    config.lock()
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"config argument {item!r} is not key=value")
        set_by_path(config, key.strip(), parse_value(value.strip()))
    return config


def parse_value(text: str):
    """A command-line value: a Python literal (`0.1`, `(8, 8)`, `True`) where it parses as one, else the string."""
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def unknown_key_message(config: ConfigDict, path: str) -> str | None:
    """None when `a.b.c` exists in `config`; otherwise a message naming the key and the valid keys where it failed."""
    node = config
    parts = path.split(".")
    for i, part in enumerate(parts):
        if not isinstance(node, ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "the top level"
            valid = sorted(node.keys()) if isinstance(node, ConfigDict) else []
            return f"unknown config key {path!r}: {where} has no key {part!r}; valid keys there: {valid}"
        node = node[part]
    return None


def set_by_path(config: ConfigDict, path: str, value) -> None:
    """Sets `a.b.c` in a (locked) config; an unknown key raises KeyError with `unknown_key_message`."""
    message = unknown_key_message(config, path)
    if message:
        raise KeyError(message)
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node[part]
    if isinstance(value, (list, tuple)):
        with node.ignore_type():
            node[leaf] = value
    else:
        node[leaf] = value


def unknown_override_keys(config: ConfigDict, argv: Sequence[str], flag_name: str = "config") -> list[str]:
    """Messages for the `--config.X=...` overrides in argv whose key X does not exist in `config`."""
    prefix = f"--{flag_name}."
    messages = []
    for arg in argv:
        if arg.startswith(prefix):
            message = unknown_key_message(config, arg[len(prefix) :].split("=", 1)[0])
            if message:
                messages.append(message)
    return messages


def load_config_module(path: str | os.PathLike):
    """Imports a config file as a module (configs are files, not an installed package)."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    spec = importlib.util.spec_from_file_location(f"_fetalssl_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(path_and_arg: str) -> ConfigDict:
    """Loads `path.py[:arg]` the way `--config` does: imports the file and calls its `get_config(arg)`."""
    path, _, arg = path_and_arg.partition(":")
    module = load_config_module(path)
    if not hasattr(module, "get_config"):
        raise AttributeError(f"config file {path!r} has no get_config(arg) function")
    return module.get_config(arg or None)
