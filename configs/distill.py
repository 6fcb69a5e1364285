"""Distillation: a frozen teacher backbone teaches a small student on the unlabelled frames (methods/distill.py).

  python -m fetalssl_jax.main --config configs/barlow.py                  # the teacher: workdirs/barlow_twins
  python -m fetalssl_jax.main --config configs/distill.py                 # its student: workdirs/distill
  python -m fetalssl_jax.main --config configs/distill.py --config.method_kwargs.teacher=runs/classify

`method_kwargs.teacher` is a pretraining workdir, an exported backbone directory, a classification run (its
fine-tuned backbone) or a .safetensors/.npz file with torchvision/timm names; the student is `model`. Presets:
default (CPU), tiny (tests: name a teacher), paper (GPU/TPU).
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets
from fetalssl_jax.apply.loading import load_backbone
from fetalssl_jax.apply.outputs import model_identity
from fetalssl_jax.methods import distill

# The teacher's forms are read above the methods layer: this file, which builds every distillation config, installs
# the project's loader of every backbone form.
distill.set_teacher_loader(load_backbone, model_identity)


def default(c) -> None:
    """CPU: the default Barlow Twins run (a width-16 ResNet-18 at 64 px) teaches a width-8 ResNet-10, a fifth of its
    FLOPs per frame, on the embedded videos with its views and its short-run LARS."""
    presets.cpu_demo_preset(c)
    c.method_kwargs.teacher = "workdirs/barlow_twins"
    c.model.arch = "resnet10"
    c.model.width = 8
    presets.short_run_lars(c, lr=0.3, weight_decay=1e-4, lr_biases=0.0048)
    presets.ultrasound_views(c)


def tiny(c) -> None:
    """Seconds on a CPU, for tests: a width-4 ResNet-10 at 32 px (name a teacher trained at 32 px)."""
    presets.tiny_preset(c)
    c.model.width = 4
    presets.short_run_lars(c, lr=0.3, weight_decay=1e-4, lr_biases=0.0048)


def paper(c) -> None:
    """GPU/TPU: the paper preset's Barlow Twins ResNet-50 at 256 px teaches a ResNet-18."""
    presets.paper_preset(c)
    c.model.arch = "resnet18"
    c.method_kwargs.teacher = "workdirs/barlow_twins-paper"
    c.batch_size = 1024
    c.num_epochs = 100


PRESETS = {"default": default, "tiny": tiny, "paper": paper}


def get_config(arg: str | None = None):
    """Distillation config; `arg` names a preset (default, tiny, paper) optionally followed by ,key=value."""
    c = presets.base_config()
    c.method = "distill"
    c.method_kwargs = ConfigDict(distill.default_kwargs())
    presets.barlow_twins_views(c)
    return config_lib.apply_preset(c, arg, PRESETS)
