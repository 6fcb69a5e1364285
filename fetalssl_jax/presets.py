"""Presets and recipes of the experiment configs (big_vision style): the keys every config starts from, and the
small functions that presets compose. A config file in `configs/` builds its config from these and hands its presets
to `config_lib.apply_preset`; docs/design.md ("Recipes by budget") says why the CPU recipes are what they are.
"""

from __future__ import annotations

from ml_collections import ConfigDict

from fetalssl_jax.data.augment import default_view_config
from fetalssl_jax.models.backbone import is_vit

COMPILATION_CACHE_DIR = "~/.cache/fetalssl_jax/xla"  # JAX's persistent compilation cache of every run


def labelled_data() -> ConfigDict:
    """Where the labelled plane images come from (pretraining's evaluation and the classifier read them alike)."""
    c = ConfigDict()
    c.dataset = "synthetic"  # or a built fetal_cardiac_planes dataset, e.g. "fetal_cardiac_planes/csv"
    c.data_dir = ""  # of `dataset` ("": TFDS's default)
    # Labelled patients of the embedded set (split 60/20/20 by patient): 300 x 20 frames keeps the few-label
    # intervals narrow (60 test patients) and takes seconds to generate.
    c.num_patients = 300
    c.frames_per_patient = 20
    return c


def model() -> ConfigDict:
    """The backbone (`models.backbone`)."""
    c = ConfigDict()
    c.arch = "resnet18"
    c.width = 64  # base channels; 64 is torchvision's ResNet, tests use 8
    c.dtype = "float32"  # compute dtype: "float32" or "bfloat16"; parameters stay float32
    # How convolutions are computed: "auto" = matrix products with a hand-written gradient on the CPU backend (XLA's
    # CPU convolutions are slow, see models/conv.py), XLA's native convolution on GPU/TPU; or "native"/"cpu_matmul".
    c.conv_impl = "auto"
    return c


def vit_model(arch: str = "vit_tiny", patch_size: int = 8) -> ConfigDict:
    """A ViT backbone (`models.backbone`): timm's sizes, `patch_size` pixels square patches."""
    c = ConfigDict()
    c.arch = arch  # vit_tiny, vit_small, vit_base (timm's), or vit_micro (the CPU demos, tests)
    c.patch_size = patch_size  # 8 at 64 px (8x8 patches), 16 at 224 px (14x14)
    c.reg_tokens = 0  # register tokens (DINOv2 with registers: 4)
    c.layer_scale = 0.0  # LayerScale's initial value; 0: off (DINOv2: 1e-5)
    c.drop_path_rate = 0.0  # stochastic depth of the last block (DINO ViT-S: 0.1)
    c.dtype = "float32"  # compute dtype: "float32" or "bfloat16"; parameters stay float32
    return c


def set_backbone(c: ConfigDict, identity: dict) -> None:
    """Makes `c`'s backbone the one `identity` names (`models.backbone.description`: arch and width, or a ViT's arch,
    patch size, registers and LayerScale), keeping `c`'s own compute keys (dtype; a ResNet's conv_impl, a ViT's
    stochastic depth) where the family stays; a ResNet config given a ViT gets `vit_model`'s other keys."""
    if is_vit(identity["arch"]) != is_vit(c.model.arch):
        dtype = c.model.dtype
        c.model = vit_model(identity["arch"], identity["patch_size"]) if is_vit(identity["arch"]) else model()
        c.model.dtype = dtype
    for key, value in identity.items():
        c.model[key] = value


def demo_vit() -> ConfigDict:
    """The CPU demos' ViT, which every ViT demo pretrains and the ViT tools read: vit_micro in 8 px patches."""
    return vit_model("vit_micro", 8)


def tiny_vit_preset(c: ConfigDict) -> None:
    """Seconds on a CPU, for tests and smoke runs: the tiny preset with a 4-block ViT of width 64 (patch 8, 32 px)."""
    tiny_preset(c)
    c.model = demo_vit()


def pretraining_data() -> ConfigDict:
    """The unlabelled videos a pretraining run reads (`data.sources`)."""
    c = ConfigDict()
    c.source = "synthetic"  # embedded generated fetal-US videos, or "tfds": a built fetal_us_video dataset
    c.name = ""  # source "tfds": e.g. "fetal_us_video/synthetic" (frames, pairs or clips as the method needs)
    c.data_dir = ""  # source "tfds": where it was built ("": TFDS's default, ~/tensorflow_datasets)
    c.split = "train"  # source "tfds"
    c.image_size = 64  # network input size (views are cropped and resized to it)
    c.frame_skip = 5  # keep every 5th frame, as the paper
    c.max_gap = 0  # 0: both views from one frame; k > 0: second frame up to k kept frames away
    c.num_videos = 48
    c.frames_per_video = 64  # kept frames per video (after frame skip)
    c.stored_size = 64  # size the frames are rendered / stored at
    c.seed = 0  # of the generated data; the training seed is `seed`
    c.prefetch = 2
    return c


def optim() -> ConfigDict:
    """The optimiser and its learning-rate schedule (`train.optim`)."""
    c = ConfigDict()
    c.name = "lars"
    c.lr_weights = 0.2  # base learning rate, multiplied by batch_size / 256 if lr_batch_scaling
    c.lr_biases = 0.0048  # LARS only: biases and norm parameters
    c.lr_batch_scaling = True
    c.weight_decay = 1e-6
    c.momentum = 0.9
    c.trust_coefficient = 0.001
    c.warmup_epochs = 10.0
    c.end_lr_factor = 0.001  # cosine decays to this fraction of the peak
    c.schedule = "warmup_cosine"  # or "step": x step_decay_factor every step_decay_epochs (autoencoders)
    c.step_decay_epochs = 50.0
    c.step_decay_factor = 0.5624
    return c


def evaluation() -> ConfigDict:
    """The frozen-backbone evaluation of a pretraining run (`eval.evaluator`), on the labelled planes."""
    c = labelled_data()
    c.every_steps = -1  # <= 0: only at the end
    c.knn_k = 20
    c.batch_size = 256
    c.shots = (1, 5, 10, 25, 0)  # labelled images per class of the few-label probes; 0 = all
    c.monitor_shots = (10,)  # the periodic evaluation's probes (kNN and effective rank always)
    c.draws = 20  # random label draws per number of shots
    c.probe_max_iter = 1000
    c.compare_random_init = True
    return c


def base_config() -> ConfigDict:
    """Keys every pretraining config has; methods add their own under `method_kwargs`."""
    c = ConfigDict()
    c.method = ""  # registry name, e.g. "barlow_twins"
    c.seed = 0
    c.model = model()
    c.method_kwargs = ConfigDict()  # heads and loss weights of the method
    c.data = pretraining_data()
    c.augment = ConfigDict({"view1": ConfigDict(), "view2": ConfigDict()})
    c.optim = optim()
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
    c.eval = evaluation()
    return c


def view(**overrides) -> ConfigDict:
    """One view's augmentation: `augment.default_view_config` (the Barlow Twins reference values) with the blur's
    sigma given for the reference's 256 px input and scaled to data.image_size (0.025-0.5 px at 64 px), and
    `overrides`."""
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
    c.deidentify_pixels = True  # blank all but the image (DICOM image regions / the scan sector): burned-in names go
    c.batch_size = 64  # frames per compiled batch (the last one padded)
    c.progress_bar = True
    c.compilation_cache_dir = COMPILATION_CACHE_DIR  # "" disables
    c.on_error = "skip"  # a file that cannot be read: "skip" it (listed in skipped.csv) or "raise" (stop the run)
    c.overwrite = False  # True: outputs of another config in the workdir move to <workdir>/previous/<time>/


def backbone_keys(c: ConfigDict) -> None:
    """Where a backbone comes from; its architecture (a ResNet's width, a ViT's patch size) and input size are read
    from the files when empty."""
    c.backbone = ""  # pretraining workdir, exported backbone, classification run, .safetensors/.npz, or "random"
    c.model = ConfigDict({"arch": "", "width": 0, "patch_size": 0})  # "" / 0: from the files; given: must match
    c.image_size = 0  # 0: the size the backbone was trained at (a weights file needs it)
