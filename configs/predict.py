"""Find the standard planes in your scans with a trained classifier (a classification run).

  python -m fetalssl_jax.main --config configs/predict.py --config.classifier=runs/classify \
      --config.input=scan.mp4 --workdir runs/predict            # a video: timeline, best frames, summary.json
  python -m fetalssl_jax.main --config configs/predict.py --config.classifier=runs/classify \
      --config.input=/data/scans --config.smooth_window=5 --workdir runs/predict-all      # every video of a folder
  python -m fetalssl_jax.main --config configs/predict.py --config.classifier=runs/classify \
      --config.input=/data/images --workdir runs/predict-images                            # images: predictions.csv
  python -m fetalssl_jax.main --config configs/predict.py --config.classifier=runs/export/classifier.onnx \
      --config.input=scan.mp4 --config.stream=True --config.smooth_window=5 --workdir runs/live   # frame by frame

Videos: every `frame_skip`-th frame is classified; the probabilities are averaged over `smooth_window` kept frames
(1: none); per plane the `top_k` most probable frames at or above `threshold`, at least `min_separation` kept frames
apart, are saved as PNG (the frame at its recorded size, the probability in the name and the PNG's text); written
per video (in <workdir>/<video id>/ when the input has several): frames.csv, timeline.png, best_*.png and
summary.json (planes found: frames and probabilities; planes not found). Images and built datasets
(tfds:<name>): predictions.csv with every class probability. The probabilities are calibrated with the
classifier's temperature; a classifier with a known-frame rule adds the columns `ood_score` and `known` (false: not a
known plane, e.g. a black, colour-Doppler or non-ultrasound frame), and best frames are chosen among known frames
only (docs/apply.md, "Predictions that know their limits"). A labelled dataset whose class names are not the
classifier's is an error. Also written: sources.csv (id -> path: the only key from the ids to your files; keep it
local), skipped.csv, config.json (with a salted hash of the input path, never the path) and finished.json.

The same command again (same config, classifier weights and input files) is "up to date" and rewrites nothing;
another classifier, config or set of files is refused, naming what differs, unless --config.overwrite=True, which
moves the old reports into <workdir>/previous/<UTC time>/ (nothing is deleted). A video or image that cannot be read
is skipped and listed in skipped.csv (its id and the reason), the others are reported; --config.on_error=raise stops
at it instead. One run at a time per workdir: a second is refused while the first holds its lock. `classifier` is a
classification run or its ONNX export (configs/export.py; run by onnxruntime, no JAX compilation).

stream=True: one video read frame by frame as it plays, a file or a capture device (input=device:0), as at the
scanner (fetalssl_jax/apply/stream.py): black, frozen and wrong-size frames skipped and counted; the probabilities
averaged over the last `smooth_window` frames only (causal: offline averaging is centred); plane changes printed and
written to stream.csv as they happen, each plane's best frame so far to best_<plane>.png; per-frame latency in
frames.csv; summary.json at the end (or Ctrl-C).
"""

from fetalssl_jax import config_lib, presets

PRESETS = {"default": lambda c: None, "tiny": presets.tiny_tool_preset}


def get_config(arg: str | None = None):
    """Predict config; `arg` names a preset (default, tiny) optionally followed by ,key=value."""
    c = presets.tool_config("predict")
    c.classifier = ""  # a classification run's workdir (or its classifier/ directory), or its .onnx export
    presets.input_keys(c)
    c.smooth_window = 1  # kept frames averaged around each frame (centred); 1: no smoothing
    c.threshold = 0.5  # a plane is found where its (smoothed) probability reaches this
    c.top_k = 1  # best frames per plane
    c.min_separation = 5  # kept frames between two best frames of one plane
    c.stream = False  # True: one live video (a file or device:N) frame by frame, causal smoothing (see above)
    return config_lib.apply_preset(c, arg, PRESETS)
