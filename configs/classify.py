"""Standard fetal cardiac plane classification: fine-tune or linear-probe a backbone on a fraction of the labels.

  python -m fetalssl_jax.main --config configs/classify.py --config.init=workdirs/barlow_twins
  python -m fetalssl_jax.main --config configs/classify.py:default,mode=linear,label_fraction=0.1
  python -m fetalssl_jax.main --config configs/classify.py:default,labels_per_class=5,num_steps=300  # 5 per class
  python -m fetalssl_jax.main --config configs/classify.py --config.init=resnet18_imagenet.safetensors \
      --config.model.width=64
  python -m fetalssl_jax.main --config configs/classify.py:paper --config.init=runs/bt      # the paper's setting

`init` is "random", a pretraining workdir, an exported backbone directory, or a .safetensors/.npz file with
torchvision/timm ResNet names (e.g. ImageNet weights). Presets: default (CPU, embedded data), tiny, paper.
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


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """Classification config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
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
    c.model = presets.model()
    c.head = ConfigDict({"dropout": 0.5, "batch_norm": False})
    # the images: the network's input size; the embedded set's rendering size and generator seed
    c.data = ConfigDict({"image_size": 64, "stored_size": 64, "seed": 0})
    c.eval = presets.labelled_data()  # where the labelled images come from
    c.augment = ConfigDict({"num_ops": 5, "magnitude": 5.0, "hflip_prob": 0.5, "vflip_prob": 0.5})
    c.optim = ConfigDict({"name": "adamw", "lr": 1e-3, "weight_decay": 1e-6})
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
