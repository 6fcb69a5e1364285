"""Shared pieces of the experiment configs (big_vision style).

Each experiment is one file in `configs/` with `get_config(arg)`. The file starts from `base_config()`, sets its
method's keys, and applies a preset named by `arg` (`--config configs/barlow_twins.py:paper`). Command-line overrides
(`--config.optim.lr_weights=0.1`) are applied by ml_collections on top. Configs are locked: a key that does not
exist is an error, never a silently ignored typo.

`validate_pretraining` / `validate_classification` / `validate_grid` check the values before a run starts (one
ConfigError listing every problem). `fingerprint` is what a run must share with the run whose checkpoint or
results it resumes or reuses: the config less its cosmetic keys.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import numbers
import os
import pathlib
import re
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_collections

ConfigDict = ml_collections.ConfigDict
COMPILATION_CACHE_DIR = "~/.cache/fetalssl_jax/xla"  # JAX's persistent compilation cache of every run


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
    # A resumed run may change num_steps / num_epochs only with this set: the total step count shapes the learning-rate
    # (and EMA) schedule, so a longer run is not the continuation of the shorter one it resumes.
    c.allow_extend = False
    # XLA's persistent compilation cache: a second run of the same config starts without recompiling. "" disables.
    c.compilation_cache_dir = COMPILATION_CACHE_DIR

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
    """One view's augmentation: `augment.default_view_config` (the Barlow Twins reference values) with the blur's
    sigma given for the reference's 256 px input and scaled to data.image_size (0.025-0.5 px at 64 px), and
    `overrides`."""
    from fetalssl_jax.data.augment import default_view_config

    return ConfigDict(default_view_config(**{"blur_sigma_reference": 256.0, **overrides}))


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


# ---- validation ---------------------------------------------------------------------------------------------------
class ConfigError(ValueError):
    """Config values no run can use. The message lists every problem, one per line, each naming the key (dotted
    path), its value and what is allowed: `config.batch_size = -4: must be a positive integer`."""

    def __init__(self, problems: Sequence[str]):
        self.problems = tuple(problems)
        super().__init__("\n".join(self.problems))


_MISSING = object()
DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("lars", "sgd", "adamw")
SCHEDULES = ("warmup_cosine", "step")
CLASSIFY_MODES = ("finetune", "linear")
MIN_IMAGE_SIZE = 32  # the ResNets downsample 32x


def _lookup(config: Any, path: str) -> Any:
    node = config
    for part in path.split("."):
        if not isinstance(node, Mapping | ConfigDict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _at_least(minimum: int) -> str:
    return "must be a positive integer" if minimum == 1 else f"must be an integer >= {minimum}"


class _Checks:
    """Collects problems of one config as `<prefix>.<key> = <value>: <requirement>`; a key the config does not
    have is skipped (the code's default applies)."""

    def __init__(self, config: Any, prefix: str = "config"):
        self.config = config
        self.prefix = prefix
        self.problems: list[str] = []

    def get(self, key: str) -> Any:
        return _lookup(self.config, key)

    def fail(self, key: str, value: Any, requirement: str) -> None:
        self.problems.append(f"{self.prefix}.{key} = {value!r}: {requirement}")

    def integer(self, key: str, minimum: int = 1, why: str = "") -> None:
        value = self.get(key)
        if value is not _MISSING and not (_is_int(value) and value >= minimum):
            self.fail(key, value, _at_least(minimum) + (f" ({why})" if why else ""))

    def positive_number(self, key: str) -> None:
        value = self.get(key)
        if value is not _MISSING and not (_is_number(value) and value > 0):
            self.fail(key, value, "must be a positive number")

    def non_negative_number(self, key: str) -> None:
        value = self.get(key)
        if value is not _MISSING and not (_is_number(value) and value >= 0):
            self.fail(key, value, "must be a number >= 0")

    def fraction(self, key: str) -> None:
        value = self.get(key)
        if value is not _MISSING and not (_is_number(value) and 0 < value <= 1):
            self.fail(key, value, "must be a fraction in (0, 1]")

    def probability(self, key: str) -> None:
        value = self.get(key)
        if value is not _MISSING and not (_is_number(value) and 0 <= value <= 1):
            self.fail(key, value, "must be a probability in [0, 1]")

    def one_of(self, key: str, allowed: Sequence[str]) -> None:
        value = self.get(key)
        if value is not _MISSING and value not in allowed:
            self.fail(key, value, f"must be one of {', '.join(map(repr, allowed))}")

    def boolean(self, key: str) -> None:
        value = self.get(key)
        if value is not _MISSING and not isinstance(value, bool):
            self.fail(key, value, "must be True or False")

    def integers(self, key: str, minimum: int, non_empty: bool = False, distinct: bool = False, why: str = "") -> None:
        """A sequence of integers >= minimum."""
        value = self.get(key)
        if value is _MISSING:
            return
        ok = isinstance(value, Sequence) and not isinstance(value, str)
        ok = ok and all(_is_int(v) and v >= minimum for v in value)
        ok = ok and (len(value) > 0 or not non_empty) and (len(set(value)) == len(value) or not distinct)
        if not ok:
            what = "a non-empty sequence" if non_empty else "a sequence"
            what += " of distinct integers" if distinct else " of integers"
            self.fail(key, value, f"must be {what} >= {minimum}" + (f" ({why})" if why else ""))

    def steps_and_epochs(self, integer_epochs: bool) -> None:
        """num_steps > 0, or -1 / 0 ("train num_epochs epochs", as `total_steps_of` reads it) and num_epochs > 0."""
        steps = self.get("num_steps")
        if steps is _MISSING:
            return
        if not (_is_int(steps) and (steps > 0 or steps in (-1, 0))):
            self.fail("num_steps", steps, "must be a positive integer, or -1 or 0 to train num_epochs epochs")
        elif steps <= 0:
            if integer_epochs:
                self.integer("num_epochs", 1, "num_steps <= 0 trains num_epochs epochs")
            else:
                epochs = self.get("num_epochs")
                if not (_is_number(epochs) and epochs > 0):
                    why = "num_steps <= 0 trains num_epochs epochs"
                    self.fail("num_epochs", epochs, f"must be a positive number ({why})")

    def model(self) -> None:
        from fetalssl_jax.models.conv import CONV_IMPLS
        from fetalssl_jax.models.resnet import RESNET_ARCHS

        self.one_of("model.arch", RESNET_ARCHS)
        self.integer("model.width")
        self.one_of("model.dtype", DTYPES)
        self.one_of("model.conv_impl", CONV_IMPLS)

    def labelled_data(self) -> None:
        """The keys that size the images and the embedded labelled set."""
        self.integer("data.image_size", MIN_IMAGE_SIZE, "the ResNets downsample 32x")
        self.integer("data.stored_size", 16, "the embedded data is rendered at 16 px or more")
        self.integer("data.seed", 0)
        self.integer("eval.num_patients", 3, "patients are split into train, validation and test")
        self.integer("eval.frames_per_patient", 5, "every patient gives a frame of each of the 5 planes")

    def view(self, key: str) -> None:
        """A view's augmentation, checked key by key by `default_view_config` (so every bad key is reported)."""
        from fetalssl_jax.data.augment import default_view_config

        view = self.get(key)
        if view is _MISSING:
            return
        for name, value in view.items():
            try:
                default_view_config(**{name: value})
            except (ValueError, TypeError) as error:
                found = re.search(r"\bmust (.*?)(?:, got .*)?\.?$", str(error))
                if str(error).startswith("Unknown view-config key"):
                    requirement = "unknown view key; " + str(error).split(". ", 1)[-1].rstrip(".").lower()
                elif found:
                    requirement = "must " + found.group(1)
                else:
                    requirement = f"is not a valid view setting ({error})"
                self.fail(f"{key}.{name}", value, requirement)


def _example_mode(method_cls: type, config: ConfigDict) -> str | None:
    # `example_mode` reads only the config; evaluated without constructing the method, whose constructor may fail
    # on the very values being validated (reorder's permutations of clip_length frames).
    try:
        return method_cls.example_mode.fget(types.SimpleNamespace(config=config))
    except Exception:  # noqa: BLE001 - an unusual method: its own constructor reports problems
        return None


def pretraining_problems(config: ConfigDict, prefix: str = "config") -> list[str]:
    """Every problem of a pretraining config, as `validate_pretraining` reports them (empty: none)."""
    import jax

    from fetalssl_jax.data.sources import SOURCES
    from fetalssl_jax.methods import get_method, registered_methods

    c = _Checks(config, prefix)
    c.one_of("method", registered_methods())
    c.integer("seed", 0)
    c.model()
    c.one_of("data.source", SOURCES)
    if c.get("data.source") == "tfds" and not c.get("data.name"):
        c.fail("data.name", c.get("data.name"), "must name a built dataset when data.source is 'tfds', e.g. "
               "'fetal_us_video/synthetic'")  # fmt: skip
    c.labelled_data()
    for key in ("data.num_videos", "data.frames_per_video", "data.frame_skip"):
        c.integer(key)
    c.integer("data.max_gap", 0)
    c.integer("data.prefetch", 0)
    if c.get("method") in registered_methods() and _example_mode(get_method(config.method), config) == "clips":
        c.integer("data.clip_length", 2, f"{config.method} reorders the frames of a clip")
        c.integer("data.clip_stride")
    c.view("augment.view1")
    c.view("augment.view2")
    c.one_of("optim.name", OPTIMIZERS)
    c.one_of("optim.schedule", SCHEDULES)
    c.non_negative_number("optim.warmup_epochs")
    if c.get("optim.schedule") == "step":
        c.positive_number("optim.step_decay_epochs")
    c.integer("batch_size")
    batch, devices = c.get("batch_size"), jax.device_count()
    if _is_int(batch) and batch > 0 and batch % devices:
        c.fail("batch_size", batch, f"must be divisible by the {devices} devices (it is the global batch)")
    c.steps_and_epochs(integer_epochs=False)
    for key in ("log_every_steps", "checkpoint_every_steps", "keep_checkpoints"):
        c.integer(key)
    c.boolean("allow_extend")
    for key in ("eval.knn_k", "eval.draws", "eval.batch_size", "eval.probe_max_iter"):
        c.integer(key)
    c.integers("eval.shots", 0, why="0: all labels")
    c.integers("eval.monitor_shots", 0, why="0: all labels")
    return c.problems


def classification_problems(config: ConfigDict, prefix: str = "config") -> list[str]:
    """Every problem of a classification config (configs/classify.py), as `validate_classification` reports them."""
    c = _Checks(config, prefix)
    c.integer("seed", 0)
    init = c.get("init")
    if init is not _MISSING and not (isinstance(init, str) and init.strip()):
        c.fail("init", init, "must be 'random', a pretraining workdir, a backbone directory or a weights file")
    c.one_of("mode", CLASSIFY_MODES)
    c.fraction("label_fraction")
    c.integer("labels_per_class", 0, "0: use label_fraction")
    per_class, fraction = c.get("labels_per_class"), c.get("label_fraction")
    if _is_int(per_class) and per_class > 0 and _is_number(fraction) and fraction != 1:
        c.fail("label_fraction", fraction, f"must stay 1 when labels_per_class ({per_class}) is set; choose one budget")
    c.model()
    dropout = c.get("head.dropout")
    if dropout is not _MISSING and not (_is_number(dropout) and 0 <= dropout < 1):
        c.fail("head.dropout", dropout, "must be a rate in [0, 1)")
    c.labelled_data()
    c.integer("augment.num_ops", 0)
    c.non_negative_number("augment.magnitude")
    for key in ("augment.hflip_prob", "augment.vflip_prob"):
        c.probability(key)
    c.one_of("optim.name", ("adamw",))
    c.integer("batch_size")
    c.integer("eval_batch_size")
    c.steps_and_epochs(integer_epochs=True)
    c.integer("checkpoint_every_epochs", 0, "0: no checkpoints")
    c.integer("checkpoint_every_steps", 0, "0: no checkpoints")
    return c.problems


# `name=` is a name only when it looks like one: "barlow_twins.py:tiny,num_steps=4" is a bare spec, not a name
_INIT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.+-]*")


@dataclasses.dataclass(frozen=True)
class InitSpec:
    """One row of the grid: its name, and either a pretraining config or a backbone spec."""

    name: str
    spec: str

    @property
    def is_pretraining_config(self) -> bool:
        return self.spec.partition(":")[0].endswith(".py")


def parse_inits(entries: Sequence[str]) -> list[InitSpec]:
    """`name=spec` strings (or bare specs) -> InitSpecs; names must be unique.

    An entry is `name=spec` only when the part before the first '=' is a plain name (letters, digits, `_.+-`, not
    ending in .py); otherwise the whole entry is a spec (e.g. `barlow_twins.py:tiny,num_steps=4`, `/runs/a=b`), named
    after its file or directory.
    """
    inits = []
    for entry in entries:
        entry = str(entry).strip()
        name, sep, spec = entry.partition("=")
        name = name.strip()
        if not sep or not _INIT_NAME.fullmatch(name) or name.endswith(".py"):
            spec = entry
            name = "random" if spec == "random" else pathlib.Path(spec.partition(":")[0]).stem
        inits.append(InitSpec(name, spec.strip()))
    names = [i.name for i in inits]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"config.inits names {duplicates} more than once; give each entry a unique name=")
    if not inits:
        raise ValueError("config.inits is empty")
    return inits


def grid_problems(config: ConfigDict, prefix: str = "config") -> list[str]:
    """Every problem of a grid config (configs/paper_grid.py): its own keys, its `classify` config and the
    pretraining configs among its inits."""
    c = _Checks(config, prefix)
    inits = c.get("inits")
    if not (isinstance(inits, Sequence) and not isinstance(inits, str) and len(inits)):
        c.fail("inits", inits, "must be a non-empty sequence of 'name=spec' entries")
    else:
        try:
            for i, init in enumerate(parse_inits(inits)):
                if init.is_pretraining_config:
                    try:
                        pretraining = load_config(init.spec)
                    except Exception as error:  # noqa: BLE001 - reported with the entry that caused it
                        c.fail(f"inits[{i}]", inits[i], f"its pretraining config does not load: {error}")
                        continue
                    c.problems += pretraining_problems(pretraining, f"{prefix}.inits[{i}] ({init.name}): config")
        except ValueError as error:
            c.fail("inits", inits, str(error))
    c.integers("labels_per_class", 1, distinct=True, why="labelled images of every class")
    fractions = c.get("label_fractions")
    if fractions is not _MISSING:
        ok = isinstance(fractions, Sequence) and not isinstance(fractions, str)
        if not (ok and all(_is_number(f) and 0 < f <= 1 for f in fractions)):
            c.fail("label_fractions", fractions, "must be a sequence of fractions in (0, 1]")
    budgets = [c.get(k) for k in ("labels_per_class", "label_fractions")]
    if all(isinstance(b, Sequence) and not len(b) for b in budgets):
        c.fail("label_fractions", c.get("label_fractions"), "must give at least one budget (or labels_per_class)")
    c.integers("seeds", 0, non_empty=True, distinct=True)
    modes = c.get("modes")
    if not (isinstance(modes, Sequence) and not isinstance(modes, str) and len(modes)
            and all(m in CLASSIFY_MODES for m in modes) and len(set(modes)) == len(modes)):  # fmt: skip
        allowed = ", ".join(map(repr, CLASSIFY_MODES))
        c.fail("modes", modes, f"must be a non-empty sequence of distinct modes from {allowed}")
    classify = c.get("classify")
    if isinstance(classify, ConfigDict) and len(classify):
        c.problems += classification_problems(classify, f"{prefix}.classify")
    else:
        c.fail("classify", classify, "must be a configs/classify.py config")
    return c.problems


TOOL_TASKS = ("embed", "predict", "select", "gradcam", "tsne", "export")
INPUT_TYPES = ("auto", "videos", "images")  # how `input` is read (apply/inputs.py)
# How a frame becomes a square: data/build/readers.FITS, which run-time layers do not import (build-time code)
FITS = ("stretch", "crop_pad", "pad")
EXPORT_FORMATS = ("safetensors", "npz", "onnx")


def tool_config(task: str) -> ConfigDict:
    """The start of a tool's config: its task, and `method`, which names its default workdir (workdirs/<task>)."""
    c = ConfigDict()
    c.task = task
    c.method = task
    return c


def tiny_tool_preset(c: ConfigDict) -> None:
    """Tests: small batches, no progress bar."""
    c.batch_size = 16
    c.progress_bar = False


def input_keys(c: ConfigDict) -> None:
    """The keys of the tasks that read scans (embed, predict, select): what to read, how, and the compiler cache."""
    c.input = ""  # a video or image file, a folder (recursively), or tfds:<name> (a built dataset)
    c.input_type = "auto"  # "auto": a folder with videos is read as videos, else as images; or "videos" / "images"
    c.data_dir = ""  # of a tfds: input ("": TFDS's default)
    c.split = "train"  # of a tfds: input
    c.frame_skip = 5  # videos: every 5th frame, as the TFDS builder and the paper
    c.fit = "stretch"  # how a frame becomes a square, as the builders' `fit`: "stretch", "crop_pad" or "pad"
    c.batch_size = 64  # frames per compiled batch (the last one padded)
    c.progress_bar = True
    c.compilation_cache_dir = COMPILATION_CACHE_DIR  # "" disables


def backbone_keys(c: ConfigDict) -> None:
    """Where a backbone comes from; its architecture, width and input size are read from the files when empty."""
    c.backbone = ""  # pretraining workdir, exported backbone, classification run, .safetensors/.npz, or "random"
    c.model = ConfigDict({"arch": "", "width": 0})  # "" / 0: from the files; given: must match them
    c.image_size = 0  # 0: the size the backbone was trained at (a weights file needs it)


def tool_problems(
    config: ConfigDict, prefix: str = "config", choices: Mapping[str, Sequence[str]] | None = None
) -> list[str]:
    """Every problem of an embed / predict / select / gradcam / tsne / export config (keys it lacks are skipped).
    `choices`: {key: allowed values} that only a layer above knows (select's strategies)."""
    from fetalssl_jax.models.resnet import RESNET_ARCHS

    c = _Checks(config, prefix)
    for key, allowed in (choices or {}).items():
        c.one_of(key, tuple(allowed))
    c.one_of("task", TOOL_TASKS)
    models = ("backbone", "classifier")
    if c.get("task") == "export":
        _export_model(c)
        models = ()
    for key in (*models, "input"):
        value = c.get(key)
        if value is not _MISSING and not (isinstance(value, str) and value.strip()):
            c.fail(key, value, f"must name a {'file or folder' if key == 'input' else 'model'} (it is empty)")
    c.one_of("input_type", INPUT_TYPES)
    c.one_of("fit", FITS)
    if c.get("task") == "tsne":  # a backbone as classification takes it (`init`), on the labelled data
        init = c.get("init")
        if not (isinstance(init, str) and init.strip()):
            c.fail("init", init, "must be 'random', a pretraining workdir, a backbone directory or a weights file")
        c.model()
        c.labelled_data()
        c.integer("eval_batch_size")
    else:
        if c.get("model.arch") not in (_MISSING, ""):
            c.one_of("model.arch", RESNET_ARCHS)
        c.integer("model.width", 0, "0: from the files")
    size = c.get("image_size")
    if size is not _MISSING and not (_is_int(size) and (size == 0 or size >= MIN_IMAGE_SIZE)):
        c.fail("image_size", size, f"must be 0 (from the files) or an integer >= {MIN_IMAGE_SIZE}")
    for key in ("frame_skip", "batch_size", "budget", "smooth_window", "top_k", "min_separation", "num_images"):
        c.integer(key)
    for key in ("min_gap", "seed", "patient_folder"):
        c.integer(key, 0)
    c.probability("threshold")
    stage = c.get("stage")
    if stage is not _MISSING and not (_is_int(stage) and 1 <= stage <= 4):
        c.fail("stage", stage, "must be a ResNet stage 1..4 (layer1..layer4)")
    c.one_of("format", EXPORT_FORMATS)
    c.boolean("progress_bar")
    c.boolean("stream")
    return c.problems


def _export_model(c: _Checks) -> None:
    """Export: one model, a backbone or (to ONNX only) a whole classifier."""
    given = [k for k in ("backbone", "classifier") if isinstance(c.get(k), str) and c.get(k).strip()]
    if not given:
        c.fail("backbone", c.get("backbone"), "must name a model, or config.classifier a classifier (it is empty)")
    elif len(given) == 2:
        c.fail("classifier", c.get("classifier"), f"give a backbone or a classifier, not both (config.backbone = "
                                                  f"{c.get('backbone')!r})")  # fmt: skip
    elif given == ["classifier"] and c.get("format") != "onnx":
        c.fail("format", c.get("format"), "a classifier exports as 'onnx' only (config.backbone = <the run> "
                                          "exports its fine-tuned backbone as safetensors or npz)")  # fmt: skip
    if given == ["classifier"] and c.get("image_size") not in (_MISSING, 0):
        c.fail("image_size", c.get("image_size"), "must be 0 with a classifier (it takes the size it was trained at)")


def _raise_if(problems: list[str]) -> None:
    if problems:
        raise ConfigError(problems)


def validate_tool(config: ConfigDict, choices: Mapping[str, Sequence[str]] | None = None) -> None:
    """Raises ConfigError listing every problem of an embed / predict / select / gradcam / tsne / export config
    (`choices`: as `tool_problems`)."""
    _raise_if(tool_problems(config, choices=choices))


def validate_pretraining(config: ConfigDict) -> None:
    """Raises ConfigError listing every value of a pretraining config that no run can use (sizes, counts, fractions,
    probabilities, names of methods, architectures, optimisers ...), before any data is made or anything compiled."""
    _raise_if(pretraining_problems(config))


def validate_classification(config: ConfigDict) -> None:
    """Raises ConfigError listing every value of a classification config (`task == "classify"`) no run can use."""
    _raise_if(classification_problems(config))


def validate_grid(config: ConfigDict) -> None:
    """Raises ConfigError listing every problem of a grid config (`task == "grid"`): its own keys, its `classify`
    config and each pretraining config among its inits."""
    _raise_if(grid_problems(config))


# ---- fingerprints: what a resumed or reused run must share with the run that wrote it -----------------------------
# Keys that never change a pretraining run's trajectory: how it reports and how often it saves, where the compiler
# caches, how many batches are prepared ahead, and the frozen-backbone evaluation (it reads the weights, never
# changes them). `allow_extend` only permits a change of LENGTH_KEYS.
PRETRAINING_COSMETIC_KEYS = (
    "progress_bar", "log_every_steps", "checkpoint_every_steps", "keep_checkpoints", "compilation_cache_dir",
    "data.prefetch", "eval", "allow_extend",
)  # fmt: skip
# A classifier's checkpoints only save it (a resumed run repeats the losses). Its `eval` keys are not cosmetic:
# they size the labelled set.
CLASSIFICATION_COSMETIC_KEYS = (
    "progress_bar", "compilation_cache_dir", "checkpoint_every_epochs", "checkpoint_every_steps",
)  # fmt: skip
LENGTH_KEYS = ("num_steps", "num_epochs")  # with allow_extend, a resumed pretraining run may change these
DIGEST_KEY = "fingerprint_sha256"  # written into config.json beside the config; never part of a fingerprint


def cosmetic_keys(config: Mapping | ConfigDict) -> tuple[str, ...]:
    """The keys of a pretraining or classification config (`task == "classify"`) that a resume or reuse ignores."""
    return CLASSIFICATION_COSMETIC_KEYS if config.get("task", "pretrain") == "classify" else PRETRAINING_COSMETIC_KEYS


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    return {k: v for key, sub in tree.items() for k, v in _flatten(sub, f"{prefix}.{key}" if prefix else key).items()}


def _matches(key: str, patterns: Sequence[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in patterns)


def fingerprint(config: Mapping | ConfigDict, ignore: Sequence[str] = ()) -> dict[str, Any]:
    """What a run must share with the run whose checkpoint or results it resumes or reuses: every key of `config` (a
    ConfigDict, or the dict read from a run's config.json) as {dotted key: JSON value}, less the cosmetic keys of its
    task (`cosmetic_keys`) and `ignore` (a key also drops the keys below it)."""
    if isinstance(config, ConfigDict):
        tree = json.loads(config.to_json_best_effort())
    else:
        tree = json.loads(json.dumps(config, default=str))  # tuples -> lists, as in a config.json
    skip = (*cosmetic_keys(tree), DIGEST_KEY, *ignore)
    return {k: v for k, v in sorted(_flatten(tree).items()) if not _matches(k, skip)}


def fingerprint_digest(fingerprint: Mapping[str, Any]) -> str:
    """SHA-256 of a fingerprint: two runs with the same digest follow the same trajectory."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def config_json(config: ConfigDict) -> str:
    """A run's config.json: the resolved config and the digest of its fingerprint (`DIGEST_KEY`)."""
    tree = json.loads(config.to_json_best_effort())
    return json.dumps({**tree, DIGEST_KEY: fingerprint_digest(fingerprint(config))}, indent=2)


def stored_fingerprint(config_file: str | os.PathLike, ignore: Sequence[str] = ()) -> dict[str, Any] | None:
    """The fingerprint of the config a run wrote into `config_file` (its config.json), or None without one."""
    file = pathlib.Path(config_file)
    return fingerprint(json.loads(file.read_text()), ignore) if file.is_file() else None


_ABSENT = "<no such key>"


def fingerprint_differences(
    old: Mapping[str, Any], new: Mapping[str, Any], ignore: Sequence[str] = ()
) -> list[tuple[str, Any, Any]]:
    """(dotted key, old value, new value) of every key whose value differs, sorted; `ignore`d keys left out."""
    keys = sorted(k for k in set(old) | set(new) if not _matches(k, ignore))
    return [(k, old.get(k, _ABSENT), new.get(k, _ABSENT)) for k in keys if old.get(k, _ABSENT) != new.get(k, _ABSENT)]


def format_differences(differences: Sequence[tuple[str, Any, Any]], old_name: str = "checkpoint") -> str:
    """One line per differing key: `  optim.lr_weights: checkpoint has 0.2, config has 0.5`."""
    show = (lambda v: v if v is _ABSENT else repr(v))  # fmt: skip
    return "\n".join(f"  {k}: {old_name} has {show(a)}, config has {show(b)}" for k, a, b in differences)
