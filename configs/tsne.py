"""t-SNE of frozen backbone features on the labelled planes, coloured by plane: does a backbone separate the planes
without labels?

  python -m fetalssl_jax.main --config configs/tsne.py --config.init=workdirs/barlow_twins --workdir runs/tsne
  python -m fetalssl_jax.main --config configs/tsne.py --config.init=random --config.split=valid --workdir runs/tsne-r

`init` takes what classification takes (configs/classify.py): random, a pretraining workdir, an exported backbone,
a classification run, a ResNet or ViT weights file; `model` must name its architecture (a ViT: the vit preset, e.g.
--config configs/tsne.py:vit --config.init=workdirs/dino). The labelled data are the classifier's (`eval.dataset`:
the embedded set, or a built fetal_cardiac_planes dataset). Writes tsne_<split>.png and tsne_<split>.npz (the 2-D
points, labels and patient ids) into --workdir.
"""

from ml_collections import ConfigDict

from fetalssl_jax import config_lib, presets


def default(c) -> None:
    """The demo backbone: width-16 ResNet-18 at 64 px."""
    c.model.width = 16


def tiny(c) -> None:
    """Seconds on a CPU: for tests."""
    c.model.arch, c.model.width = "resnet10", 8
    c.data.image_size = c.data.stored_size = 32
    c.eval.num_patients, c.eval.frames_per_patient = 10, 10


def vit(c) -> None:
    """The vit_micro/8 at 64 px that configs/dino.py and configs/mae.py pretrain."""
    c.model = presets.demo_vit()


PRESETS = {"default": default, "tiny": tiny, "vit": vit}


def get_config(arg: str | None = None):
    """t-SNE config; `arg` names a preset (default, tiny, vit) optionally followed by ,key=value."""
    c = presets.tool_config("tsne")
    c.seed = 0
    c.init = "random"
    c.split = "test"  # train, valid or test
    c.classes = ()  # class names in label order; empty: the labelled data's own
    c.model = presets.model()
    c.data = ConfigDict({"image_size": 64, "stored_size": 64, "seed": 0})
    c.eval = presets.labelled_data()  # the labelled images, as the classifier reads them
    c.eval_batch_size = 256
    return config_lib.apply_preset(c, arg, PRESETS)
