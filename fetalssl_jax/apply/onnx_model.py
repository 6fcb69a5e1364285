"""A plane classifier exported to ONNX (configs/export.py with classifier= and format=onnx), run by onnxruntime on
the CPU behind the interface predict uses of a `PlaneClassifier`: `class_names`, `image_size`, `source` and the
class probabilities of uint8 frames [N, S, S, 1]. The class names and the input size come from the file's
metadata (`downstream/onnx_export.py`), with the known-frame threshold of a classifier exported with its rule; the
preprocessing, the temperature and the score are inside the graph.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any

import numpy as np

from fetalssl_jax.downstream import onnx_export


@dataclasses.dataclass(frozen=True, eq=False)
class OnnxClassifier:
    """An onnxruntime session of an exported classifier, its class names (the probabilities' columns), its input
    size and its path."""

    session: Any  # onnxruntime.InferenceSession
    class_names: tuple[str, ...]
    image_size: int
    source: str
    ood_threshold: float | None = None  # a frame is a known plane where its score is at most this; None: no rule

    def _run(self, frames: np.ndarray) -> list[np.ndarray]:
        frames = frames[..., None] if frames.ndim == 3 else frames
        if frames.dtype != np.uint8 or frames.shape[1:] != (self.image_size, self.image_size, 1):
            raise ValueError(f"{self.source} takes uint8 gray frames [N, {self.image_size}, {self.image_size}, 1]; "
                             f"got {frames.dtype} {frames.shape} (resize them first)")  # fmt: skip
        return self.session.run(None, {onnx_export.INPUT_NAME: np.ascontiguousarray(frames)})

    def probabilities(self, frames: np.ndarray) -> np.ndarray:
        """float32 [N, C] of uint8 frames [N, S, S] or [N, S, S, 1] at the input size (any N)."""
        return self._run(frames)[0]

    def outputs(self, frames: np.ndarray) -> np.ndarray:
        """float32 [N, C + 1]: the probabilities and, in the last column, the score (NaN without a rule)."""
        out = self._run(frames)
        score = out[1] if len(out) > 1 else np.full(len(out[0]), np.nan, np.float32)
        return np.concatenate([out[0], np.asarray(score, np.float32)[:, None]], axis=1)


def load_onnx_classifier(path: str | pathlib.Path, threads: int = 0) -> OnnxClassifier:
    """The classifier in an ONNX file written by the export task; a file of another kind (an exported backbone, a
    model from elsewhere) is a ValueError naming it. `threads`: onnxruntime's intra-op threads (0: its default)."""
    import onnxruntime as ort

    path = pathlib.Path(path)
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only
    options.intra_op_num_threads = threads
    # no busy-waiting between runs: a stream decodes the next frame on the same cores meanwhile
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a file that is not a model
        raise ValueError(f"{path}: not a readable ONNX model ({type(e).__name__}: {e})") from e
    meta = session.get_modelmeta().custom_metadata_map
    kind = meta.get(onnx_export.KIND)
    if kind != "classifier":
        what = f"an exported {kind}" if kind else "no fetalssl_jax metadata (not written by the export task)"
        raise ValueError(f"{path} holds {what}; a classifier file is written by configs/export.py with "
                         "classifier=<a classification run> and format=onnx")  # fmt: skip
    names = tuple(json.loads(meta[onnx_export.CLASS_NAMES]))
    threshold = meta.get(onnx_export.OOD_THRESHOLD)
    return OnnxClassifier(session, names, int(meta[onnx_export.IMAGE_SIZE]), str(path),
                          None if threshold is None else float(threshold))  # fmt: skip
