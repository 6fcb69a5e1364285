"""Choose the frames worth labelling: `budget` frames that cover your unlabelled videos, exported for labelling.

  python -m fetalssl_jax.main --config configs/select.py --config.backbone=workdirs/barlow_twins \
      --config.input=/data/scans --config.budget=50 --workdir runs/select
  # label: fill in the `class` column of runs/select/to_label/labels.csv (3VV/3VT, 4CH, LVOT, RVOT, non-heart), then
  tfds build data_builders/fetal_cardiac_planes --config csv --manual_dir runs/select/to_label

The frames are embedded as configs/embed.py does, then chosen by `strategy` (`fetalssl_jax/apply/selection.py`):
"typical" (the default: the most typical frame of each of `budget` k-means clusters of the embeddings; why:
docs/design.md, "Label-budget selection"), "k-center" (each next frame the one farthest from all chosen so far) or
"random"; picks spread over videos, and frames within
`min_gap` frame numbers of a chosen frame of the same video are skipped (near-duplicate neighbours).

Writes to --workdir: to_label/ (the chosen frames as PNG at their recorded size; labels.csv with image_name, an
empty class and as patient_id the video's salted id, or its patient folder's with `patient_folder`),
selection.csv (the order of choice), embeddings.npz/.csv, sources.csv (id -> path: the only key from the ids to
your files; keep it local), skipped.csv, config.json (with a salted hash of the input path, never the path) and
finished.json. A budget larger than the number of frames is an error.

Your labels are never touched. Run again with a larger budget (and the same or a grown folder of videos) to add
`budget` minus the frames chosen before: new PNGs and new rows at the end of to_label/labels.csv, the classes you
filled in kept byte for byte, no frame chosen twice. The same config again is "up to date". A smaller budget or
another backbone, strategy, seed ... is refused, unless --config.overwrite=True, which moves the whole selection
(to_label/ included) into <workdir>/previous/<UTC time>/ (nothing is deleted). A video that cannot be read is
skipped and listed in skipped.csv; --config.on_error=raise stops at it instead.
"""

from fetalssl_jax import config_lib, presets
from fetalssl_jax.apply.selection import DEFAULT_STRATEGY


def tiny(c) -> None:
    """Tests: small batches, a small budget, no progress bar."""
    presets.tiny_tool_preset(c)
    c.budget = 6


PRESETS = {"default": lambda c: None, "tiny": tiny}


def get_config(arg: str | None = None):
    """Select config; `arg` names a preset (default, tiny) optionally followed by ,key=value."""
    c = presets.tool_config("select")
    presets.backbone_keys(c)
    presets.input_keys(c)
    c.budget = 25  # frames to label, in total (a run in a workdir with a selection adds the difference)
    # "typical" (the most typical frame of each of `budget` k-means clusters), "k-center" (a covering) or "random"
    c.strategy = DEFAULT_STRATEGY
    # frames of one video closer than this (in frame numbers of the recording; 10 = 2 kept frames at frame skip 5)
    # to a chosen one are not chosen: neighbouring frames are near-duplicates
    c.min_gap = 10
    # which folder level below `input` names the patient: 1 for <patient>/<video>, 2 for <site>/<patient>/<video>;
    # picks spread over patients and labels.csv's patient_id is the patient's salted id, so the plane builder keeps
    # all of a patient's videos in one split. 0: every video is its own patient.
    c.patient_folder = 0
    c.seed = 0  # draws the first frame
    return config_lib.apply_preset(c, arg, PRESETS)
