"""Standard fetal cardiac plane classification: fine-tune or linear-probe a backbone on a fraction of the labels.

  python -m fetalssl_jax.main --config configs/classify.py --config.init=workdirs/barlow_twins
  python -m fetalssl_jax.main --config configs/classify.py:default,mode=linear,label_fraction=0.1
  python -m fetalssl_jax.main --config configs/classify.py:default,labels_per_class=5,num_steps=300  # 5 per class
  python -m fetalssl_jax.main --config configs/classify.py --config.init=resnet18_imagenet.safetensors \
      --config.model.width=64
  python -m fetalssl_jax.main --config configs/classify.py:paper --config.init=runs/bt      # the paper's setting
  python -m fetalssl_jax.main --config configs/classify.py:vit --config.init=workdirs/dino   # DINO's ViT
  python -m fetalssl_jax.main --config configs/classify.py:vit --config.init=dinov2_vits14.safetensors \
      --config.model.arch=vit_small --config.model.patch_size=14 --config.data.image_size=70

`init` is "random", a pretraining workdir, an exported backbone directory, a classification run (its fine-tuned
backbone), or a .safetensors/.npz file: torchvision/timm ResNet names (e.g. ImageNet weights) or a timm / DINO /
DINOv2-named ViT (e.g. UltraDINO or DINOv2 weights). The file's architecture must be the config's `model`: the error
names the overrides that fit. Presets: default (CPU, embedded data), tiny, paper, vit (the vit_micro/8 at 64 px of
configs/dino.py and configs/mae.py, MAE's fine-tuning recipe for 300 steps), tiny_vit.
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets


def default(c) -> None:
    """CPU: the demo backbone (width-16 ResNet-18, 64 px) on the embedded labelled planes (300 patients, 3600
    training images), 600 steps of batch 64 (about 11 epochs of the full set), validated every 100 steps."""
    c.model.width = 16
    c.num_steps = 600
    c.eval_every_steps = 100
    c.batch_size = 64


def tiny(c) -> None:
    """Seconds on a CPU: for tests."""
    c.model.arch = "resnet10"
    c.model.width = 8
    c.data.image_size = 32
    c.data.stored_size = 32
    c.eval.num_patients = 10
    c.eval.frames_per_patient = 10
    c.num_epochs = 2
    c.batch_size = 16
    c.progress_bar = False


def paper(c) -> None:
    """The reference: ResNet-50 at 256 px, 100 epochs, batch 128."""
    c.model.arch = "resnet50"
    c.model.width = 64
    c.data.image_size = 256
    c.data.stored_size = 256
    c.num_epochs = 100
    c.batch_size = 128


def vit(c) -> None:
    """CPU: the vit_micro/8 at 64 px that configs/dino.py, configs/mae.py and configs/barlow.py:vit pretrain, fine-tuned
    with MAE's recipe (He et al. 2022, its FINETUNE.md) in 300 steps of batch 32 (as the grid's cells), validated every
    100 steps: AdamW, weight decay 0.05 (not on biases, norms, tokens, position embeddings), layer-wise learning-rate
    decay 0.75, stochastic depth 0.1, 5 % linear warm-up then cosine to 0, no head dropout. Two changes for the 300-step
    budget (docs/results.md, "A ViT classifier in 300 steps"): the rate is the ResNet classifier's 1e-3, not MAE's 1e-3
    x batch / 256 (made for 100 ImageNet epochs; at 300 steps the head hardly moves), and the head's BatchNorm without
    scale and bias (MAE's linear-probe head) standardises the class token. Not taken from MAE: mixup, CutMix, label
    smoothing and random erasing (the reference's RandAugment and flips stay)."""
    c.model = presets.demo_vit()
    c.model.drop_path_rate = 0.1
    c.num_steps, c.eval_every_steps, c.batch_size = 300, 100, 32
    c.head.dropout = 0.0
    c.head.batch_norm = True
    c.optim.lr = 1e-3
    c.optim.weight_decay = 0.05
    c.optim.layer_decay = 0.75
    c.optim.schedule = "warmup_cosine"
    c.optim.warmup_fraction = 0.05


def tiny_vit(c) -> None:
    """Seconds on a CPU: the vit preset at 32 px, for tests."""
    tiny(c)
    vit(c)
    c.num_steps, c.batch_size = -1, 16


PRESETS = {"default": default, "tiny": tiny, "paper": paper, "vit": vit, "tiny_vit": tiny_vit}


def get_config(arg: str | None = None):
    """Classification config; `arg` names a preset (default, tiny, paper, vit, tiny_vit) optionally followed by
    ,key=value."""
    c = ConfigDict()
    c.task = "classify"
    c.method = "classify"  # names the default workdir
    c.seed = 0  # label subset, head init, dropout and augmentation
    c.init = "random"
    c.mode = "finetune"  # or "linear": frozen backbone (BN running statistics), only the head trains
    c.label_fraction = 1.0  # stratified fraction of the training split (the paper: 1, .5, .25, .1, .05, .01)
    # > 0: exactly this many labelled training images of every class instead (label_fraction must then stay 1)
    c.labels_per_class = 0
    c.classes = ()  # class names in label order; empty: the labelled data's own (the embedded set: PLANES)
    # fitted on the validation split after training (downstream/calibration.py): "temperature_and_bias" also
    # corrects a classifier that favours some classes (it can change predictions; with fewer than 50 validation
    # frames of a class, the temperature alone); "temperature" keeps every prediction of the trained classifier
    c.calibration = "temperature_and_bias"
    c.model = presets.model()
    c.head = ConfigDict({"dropout": 0.5, "batch_norm": False})
    # the images: the network's input size; the embedded set's rendering size and generator seed
    c.data = ConfigDict({"image_size": 64, "stored_size": 64, "seed": 0})
    c.eval = presets.labelled_data()  # where the labelled images come from
    c.augment = ConfigDict({"num_ops": 5, "magnitude": 5.0, "hflip_prob": 0.5, "vflip_prob": 0.5})
    c.optim = ConfigDict({"name": "adamw", "lr": 1e-3, "weight_decay": 1e-6})
    # a ViT's layer-wise learning-rate decay (BEiT / MAE): block i of L learns at lr x layer_decay^(L - i), the
    # embeddings at lr x layer_decay^(L + 1), the head at lr; 1.0: off (a ResNet: must be 1.0)
    c.optim.layer_decay = 1.0
    c.optim.schedule = "constant"  # or "warmup_cosine": a linear warm-up, then cosine to 0 at the last step
    c.optim.warmup_fraction = 0.0  # of the steps, with "warmup_cosine"
    c.batch_size = 128
    c.eval_batch_size = 256
    c.num_epochs = 100
    # > 0 overrides num_epochs: a fixed number of optimiser steps whatever the subset size (batches cycle through
    # the subset; the batch is min(batch_size, subset size)), so a 10-image budget trains as long as the full set
    c.num_steps = -1
    # validate (and keep the best classifier) this often and at the end: every epoch, or with num_steps every
    # eval_every_steps steps
    c.eval_every_epochs = 1
    c.eval_every_steps = 50
    # resumable runs, at the first validation after each multiple (0: none; the selected classifier is always saved)
    c.checkpoint_every_epochs = 5
    c.checkpoint_every_steps = 500  # with num_steps
    c.progress_bar = True
    c.compilation_cache_dir = presets.COMPILATION_CACHE_DIR
    return config_lib.apply_preset(c, arg, PRESETS)
