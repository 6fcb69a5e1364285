"""ONNX export of a backbone (pooled features [N, D]) or of a whole plane classifier (class probabilities [N, C]),
for inference without JAX: onnxruntime on the scanner's CPU (`predict` reads the file: `apply/onnx_model.py`),
C++, C#, a browser.

The graph takes what predict feeds the network, uint8 gray frames [N, S, S, 1] at the trained size S (input
`frames`; N is dynamic), and does the evaluation's preprocessing itself (`data.augment.preprocess_eval` at its own
size: /255, gray to RGB, ImageNet mean and std), then the backbone in inference mode: a ResNet with its BatchNorm
running statistics and global average pooling, or a ViT's class token (position embeddings for the input size); for
a classifier, then the linear head and the softmax of the logits divided by the classifier's temperature, plus its
class biases if it has them (`downstream/trust.py`); a classifier with a known-frame rule gets a second output,
`ood_score` [N] (the distance to the k-th nearest training image's features, its reference a constant of the graph):
a frame is a known plane where it is at most the metadata's `fetalssl_jax.ood_threshold`. It computes in float32
whatever the training dtype. The model's metadata_props (`fetalssl_jax.*`, `METADATA_KEYS`) say what a user needs:
the kind, the input size, the normalisation (already in the graph), the class names, the temperature and class
biases (already in the graph), the threshold, the architecture and the project's version.

Converter: jax2onnx, which lowers the model's own jaxpr (jax2tf in this JAX writes only opaque StableHLO calls that
tf2onnx cannot convert, and tf2onnx pins protobuf 3).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import pathlib
from collections.abc import Callable

import jax
import jax.numpy as jnp

from fetalssl_jax.errors import DataError

INPUT_NAME = "frames"
OPSET = 18  # onnxruntime >= 1.14 runs it; jax2onnx writes opset-18 reductions (axes as inputs)
KIND, IMAGE_SIZE, CLASS_NAMES = "fetalssl_jax.kind", "fetalssl_jax.image_size", "fetalssl_jax.class_names"
ARCH, WIDTH, VERSION = "fetalssl_jax.arch", "fetalssl_jax.width", "fetalssl_jax.version"
INPUT, OUTPUT, NORMALISATION = "fetalssl_jax.input", "fetalssl_jax.output", "fetalssl_jax.normalisation"
BACKBONE = "fetalssl_jax.backbone"  # the backbone's identity as JSON (a ViT: arch, patch_size, reg_tokens, ...)
TEMPERATURE, OOD_THRESHOLD, OOD_K = "fetalssl_jax.temperature", "fetalssl_jax.ood_threshold", "fetalssl_jax.ood_k"
CLASS_BIAS = "fetalssl_jax.class_bias"
METADATA_KEYS = (KIND, IMAGE_SIZE, CLASS_NAMES, ARCH, WIDTH, BACKBONE, VERSION, INPUT, OUTPUT, NORMALISATION,
                 TEMPERATURE, CLASS_BIAS, OOD_THRESHOLD, OOD_K)  # fmt: skip
FEATURES = {"resnet": "the pooled layer4 features", "vit": "the class token after the final norm"}
SCORE_NAME = "ood_score"


def export_backbone(backbone: str | pathlib.Path, out: pathlib.Path, image_size: int | None = None) -> pathlib.Path:
    """The backbone of a pretraining workdir, exported backbone directory, classification run or weights file as an
    ONNX graph frames -> features [N, D] at `out`. `image_size` None: the size the files record (an error where
    none does)."""
    from fetalssl_jax.downstream.backbones import find_backbone, fit_variables
    from fetalssl_jax.eval.frozen import eval_features
    from fetalssl_jax.models.backbone import create_backbone, is_vit

    found = find_backbone(backbone)
    if found is None:
        raise DataError(f"{backbone} holds no backbone (backbone.json) and no classifier (classifier.json)")
    size = int(image_size or found.image_size or 0)
    if not size:
        raise DataError(f"{backbone}: its files record no input size; set image_size (e.g. 224)")
    # XLA's convolution (it converts to one Conv), float32
    model = {**found.identity, "conv_impl": "native", "dtype": "float32"}
    module = create_backbone(model, size)
    variables = fit_variables(found, model, size)  # a ViT's position embeddings for `size`
    features = FEATURES["vit" if is_vit(model["arch"]) else "resnet"]
    metadata = {KIND: "backbone", **_identity_metadata(found.identity),
                OUTPUT: f"features: float32 [N, {module.num_features}], {features}"}  # fmt: skip
    return _export(lambda x: eval_features(module, size, variables, x), size, "features", metadata, out)


def _identity_metadata(identity: dict) -> dict[str, str]:
    """The metadata of a backbone's identity: its arch, a ResNet's width, and the whole identity as JSON."""
    width = {WIDTH: str(identity["width"])} if "width" in identity else {}
    return {ARCH: identity["arch"], **width, BACKBONE: json.dumps(identity)}


def export_classifier(classifier: str | pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """The classifier of a classification run (its workdir or its ``classifier/`` directory) as an ONNX graph
    frames -> calibrated probabilities [N, C] (and, with a known-frame rule, ood_score [N]) at `out`, its class
    names, temperature, class biases and threshold in the metadata."""
    from fetalssl_jax.downstream.classification import load_classifier
    from fetalssl_jax.downstream.trust import load_trust, trusted_outputs

    _, variables, description, spec = load_classifier(classifier)
    trust = load_trust(classifier)
    spec = dataclasses.replace(spec, conv_impl="native", dtype="float32")
    model, names, rule = spec.model(), list(description["classes"]), trust.rule
    metadata = {KIND: "classifier", **_identity_metadata(spec.identity()), CLASS_NAMES: json.dumps(names),
                TEMPERATURE: repr(trust.temperature),
                OUTPUT: f"probabilities: float32 [N, {len(names)}], columns in the order of {CLASS_NAMES}, "
                        f"softmax(logits / {TEMPERATURE}" + (f" + {CLASS_BIAS})" if trust.bias else ")")}  # fmt: skip
    if trust.bias:
        metadata[CLASS_BIAS] = json.dumps(list(trust.bias))
    if rule is not None:
        metadata[OUTPUT] += (f"; {SCORE_NAME}: float32 [N], distance to the k-th nearest training image (k = {rule.k}"
                             f"), a known plane where <= {OOD_THRESHOLD}")  # fmt: skip
        metadata.update({OOD_THRESHOLD: repr(rule.threshold), OOD_K: str(rule.k)})
    reference, k = (None, 0) if rule is None else (jnp.asarray(rule.reference), rule.k)
    bias = trust.bias_vector(len(names))
    fn = lambda x: trusted_outputs(model, spec.image_size, variables, trust.temperature, bias, reference, k, x)  # noqa: E731
    outputs = ("probabilities",) if rule is None else ("probabilities", SCORE_NAME)
    return _export(fn, spec.image_size, outputs, metadata, out)


def _export(
    fn: Callable[[jax.Array], jax.Array | tuple[jax.Array, ...]], image_size: int, outputs: str | tuple[str, ...],
    metadata: dict[str, str], out: pathlib.Path,
) -> pathlib.Path:  # fmt: skip
    """`fn` of uint8 frames [N, S, S, 1] (N symbolic) as an ONNX file at `out` with `metadata` and the common keys;
    `outputs` names its output (or outputs)."""
    import jax2onnx
    import onnx

    import fetalssl_jax
    from fetalssl_jax.data.augment import IMAGENET_MEAN, IMAGENET_STD

    frames = jax.ShapeDtypeStruct((jax.export.symbolic_shape("N")[0], image_size, image_size, 1), jnp.uint8)
    with _quiet("onnx_ir"):  # it warns of the converter's own unnamed constants
        model = jax2onnx.to_onnx(fn, [frames], model_name=f"fetalssl_jax_{metadata[KIND]}", opset=OPSET,
                                 input_names=[INPUT_NAME],
                                 output_names=[outputs] if isinstance(outputs, str) else list(outputs))  # fmt: skip
    # jax2onnx keeps convolutions in NCHW between layers but stamps some of those values with NHWC shapes;
    # onnxruntime infers the shapes itself, so the (partly wrong) annotations go
    del model.graph.value_info[:]
    normalisation = {"scale": "1/255", "clip": [0, 1], "gray_to_rgb": True, "mean": IMAGENET_MEAN, "std": IMAGENET_STD,
                     "applied": "inside the graph: feed raw uint8 frames"}  # fmt: skip
    shape = f"[N, {image_size}, {image_size}, 1]"
    common = {IMAGE_SIZE: str(image_size), VERSION: fetalssl_jax.__version__, NORMALISATION: json.dumps(normalisation),
              INPUT: f"{INPUT_NAME}: uint8 {shape} gray frames at the trained size"}  # fmt: skip
    onnx.helper.set_model_props(model, {**common, **metadata})
    model.doc_string = f"fetalssl_jax {metadata[KIND]}: {common[INPUT]} -> {metadata[OUTPUT]}"
    onnx.checker.check_model(model, full_check=True)
    out = pathlib.Path(out)
    tmp = out.with_name(out.name + ".tmp")
    onnx.save(model, tmp)
    tmp.replace(out)
    return out


@contextlib.contextmanager
def _quiet(logger: str):
    log = logging.getLogger(logger)
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
