"""Frozen features of your scans: one row per frame (salted video id, frame number, label if any, features).

  python -m fetalssl_jax.main --config configs/embed.py --config.backbone=workdirs/barlow_twins \
      --config.input=/data/scans --workdir runs/embed                  # a folder of videos (every format, recursively)
  python -m fetalssl_jax.main --config configs/embed.py --config.backbone=resnet18_imagenet.safetensors \
      --config.image_size=224 --config.input=scan.mp4 --workdir runs/embed-imagenet
  python -m fetalssl_jax.main --config configs/embed.py --config.backbone=runs/classify \
      --config.input=tfds:fetal_us_video/frames --config.split=validation --workdir runs/embed-val

`backbone`: a pretraining workdir, an exported backbone, a classification run (its fine-tuned backbone), a
torchvision/timm .safetensors/.npz file, or "random"; the architecture and width are read from the files. `input`: a
video or image file, a folder, or tfds:<name> (a built dataset). Writes embeddings.npz (features, source_ids,
frame_index, labels, class_names), embeddings.csv (the ids), sources.csv (id -> path: the only key from the ids to
your files; keep it local), skipped.csv, config.json (with a salted hash of the input path, never the path) and
finished.json into --workdir.

The same command again (same config, model weights and input files) is "up to date" and rewrites nothing; another
backbone, config or set of files is refused, naming what differs, unless --config.overwrite=True, which moves the
old outputs into <workdir>/previous/<UTC time>/ (nothing is deleted). A file that cannot be read (a corrupt video,
an unreadable image) is skipped and listed in skipped.csv (its id and the reason); --config.on_error=raise stops at
it instead. One run at a time per workdir: a second is refused while the first holds its lock.
"""

from fetalssl_jax import config_lib, presets

PRESETS = {"default": lambda c: None, "tiny": presets.tiny_tool_preset}


def get_config(arg: str | None = None):
    """Embed config; `arg` names a preset (default, tiny) optionally followed by ,key=value."""
    c = presets.tool_config("embed")
    presets.backbone_keys(c)
    presets.input_keys(c)
    return config_lib.apply_preset(c, arg, PRESETS)
