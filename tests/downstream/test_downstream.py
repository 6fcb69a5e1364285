"""Downstream plane classification: label subsets, loss, fine-tune vs linear probe, outputs, Grad-CAM, t-SNE,
the experiment grid and the PyTorch export (the last three as tasks of the command line)."""

import csv
import json
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from fetalssl_jax.config_lib import load_config
from fetalssl_jax.downstream.backbones import resolve_backbone
from fetalssl_jax.downstream.classification import load_classifier, run_classification
from fetalssl_jax.downstream.labels import class_weights, label_subset
from fetalssl_jax.models.classifier import Classifier, weighted_cross_entropy
from fetalssl_jax.models.resnet import create_resnet
from fetalssl_jax.train.monitor import read_metrics

CLASSES = ("a", "b", "c", "d", "e")


def records(workdir):
    """metrics.jsonl without the wall-clock speed: what two runs of one config must write alike."""
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "images_per_s"} for line in lines]


def classify_config(repo, arg=""):
    return load_config(f"{repo / 'configs' / 'classify.py'}:tiny{',' + arg if arg else ''}")


# ---- label subsets and the loss ----------------------------------------------------------------------------------
def test_label_subset_is_stratified_seeded_and_complete():
    labels = np.repeat(np.arange(5), [100, 50, 30, 12, 8])  # imbalanced, 200 images
    subset = label_subset(labels, 0.25, seed=0, class_names=CLASSES)
    assert len(subset) == 50 and len(np.unique(subset)) == 50
    counts = np.bincount(labels[subset], minlength=5)
    np.testing.assert_allclose(counts, 0.25 * np.array([100, 50, 30, 12, 8]), atol=1)  # proportional per class
    np.testing.assert_array_equal(subset, label_subset(labels, 0.25, seed=0, class_names=CLASSES))
    assert not np.array_equal(subset, label_subset(labels, 0.25, seed=1, class_names=CLASSES))
    np.testing.assert_array_equal(label_subset(labels, 1.0, 0, CLASSES), np.arange(200))
    small = label_subset(labels, 0.1, seed=3, class_names=CLASSES)  # 20 images: every class still present
    assert set(labels[small]) == set(range(5))


def test_label_subset_refuses_to_drop_a_class():
    labels = np.repeat(np.arange(5), [100, 50, 30, 12, 8])
    with pytest.raises(ValueError, match="fewer than the 5 classes"):
        label_subset(labels, 0.01, seed=0, class_names=CLASSES)  # 2 images
    with pytest.raises(ValueError, match=r"5% subset \(10 images\) leaves class\(es\) \['e'\]"):
        label_subset(labels, 0.05, seed=0, class_names=CLASSES)  # 8 x 5% = 0.4 images of class e
    with pytest.raises(ValueError, match=r"no sample of class\(es\) \['e'\]"):
        label_subset(labels[labels < 4], 0.5, seed=0, class_names=CLASSES)


def test_class_weights_and_weighted_cross_entropy_match_hand_computation():
    np.testing.assert_allclose(class_weights(np.array([0, 0, 0, 1, 2, 2]), 3), [2.0, 6.0, 3.0])
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 3)).astype(np.float32)
    labels = np.array([0, 2, 1, 1, 0, 2])
    weights = np.array([0.5, 2.0, 1.5], np.float32)
    # PyTorch CrossEntropyLoss(weight=w), reduction 'mean', written out
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = sum(-weights[y] * log_softmax[i, y] for i, y in enumerate(labels)) / sum(weights[y] for y in labels)
    got = weighted_cross_entropy(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights))
    np.testing.assert_allclose(float(got), expected, rtol=1e-6)


# ---- one classification run --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def finetune_run(repo, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("finetune")
    return workdir, run_classification(classify_config(repo, "num_epochs=3"), workdir)


@pytest.fixture(scope="module")
def linear_run(repo, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("linear")
    return workdir, run_classification(classify_config(repo, "mode=linear,head.batch_norm=True"), workdir)


def test_run_outputs_agree_with_each_other(finetune_run):
    workdir, results = finetune_run
    with open(workdir / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    names = list(results["test"]["class_names"])
    true = np.array([names.index(r["label"]) for r in rows])
    pred = np.array([names.index(r["prediction"]) for r in rows])
    probs = np.array([[float(r[f"p_{n}"]) for n in names] for r in rows])
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(1), pred)
    assert results["test"]["macro_f1"] == pytest.approx(f1_score(true, pred, average="macro", zero_division=0))
    assert results["test"]["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(true, pred))
    matrix = np.array(json.loads((workdir / "confusion_matrix.json").read_text())["matrix"])
    assert matrix.sum() == len(rows) and np.trace(matrix) == np.sum(true == pred)
    assert (workdir / "confusion_matrix.png").stat().st_size > 1000
    epochs = read_metrics(workdir, kind="eval")
    assert len(epochs) == 3
    valid = [e["valid_balanced_accuracy"] for e in epochs]
    assert results["best_epoch"] == int(np.argmax(valid)) + 1  # first epoch with the best validation score
    chosen = json.loads((workdir / "label_indices.json").read_text())
    assert len(chosen["indices"]) == results["num_train_images"] == sum(chosen["class_counts"])


def test_finished_run_is_not_repeated(repo, finetune_run):
    workdir, results = finetune_run
    before = (workdir / "metrics.jsonl").stat().st_mtime_ns
    again = run_classification(classify_config(repo, "num_epochs=3"), workdir)
    assert again == results and (workdir / "metrics.jsonl").stat().st_mtime_ns == before


def test_same_seed_same_losses(repo, finetune_run, tmp_path):
    workdir, _ = finetune_run
    run_classification(classify_config(repo, "num_epochs=3"), tmp_path)
    assert records(tmp_path) == records(workdir)


def _flat(tree):
    return {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_linear_probe_freezes_the_backbone_and_fine_tuning_does_not(repo, finetune_run, linear_run):
    start = resolve_backbone("random", {"arch": "resnet10", "width": 8}, 32, seed=0).variables
    for (workdir, _), frozen in ((linear_run, True), (finetune_run, False)):
        _, variables, description, _ = load_classifier(workdir)
        backbone = {k: variables[k]["backbone"] for k in ("params", "batch_stats")}
        equal = [np.array_equal(a, b) for a, b in zip(_flat(start).values(), _flat(backbone).values(), strict=True)]
        assert all(equal) if frozen else not any(equal[:3]), description["mode"]
        assert set(variables["params"]) == {"backbone", "head"}
        assert set(variables["params"]["head"]) == {"kernel"}  # Linear without bias
    _, variables, _, _ = load_classifier(linear_run[0])
    assert set(variables["batch_stats"]["head_norm"]) == {"mean", "var"}  # non-affine BN: statistics only


# ---- Grad-CAM ----------------------------------------------------------------------------------------------------
def test_grad_cam_on_layer4_is_the_class_activation_map():
    from fetalssl_jax.downstream.gradcam import grad_cam

    backbone = create_resnet("resnet10", width=8, zero_init_residual=False)
    model = Classifier(backbone, 5)
    x = jax.random.normal(jax.random.key(1), (3, 96, 96, 3))
    variables = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(x)
    cams, logits = jax.jit(lambda v, x: grad_cam(model, v, x, stage=4))(variables, x)
    # GAP + linear head: Grad-CAM weights are W[:, c] / (h w), so the map is ReLU(sum_k W_kc A_k) (Zhou et al.)
    backbone_vars = {k: variables[k]["backbone"] for k in ("params", "batch_stats")}
    _, fmap = backbone.apply(backbone_vars, x, train=False, return_map=True)
    w = np.asarray(variables["params"]["head"]["kernel"])
    target = np.asarray(logits).argmax(1)
    cam = np.maximum(np.einsum("bhwk,kb->bhw", np.asarray(fmap), w[:, target]), 0)
    assert cam.shape[1:] == (3, 3)
    expected = np.array(jax.image.resize(cam, (3, 96, 96), "bilinear"))
    expected /= expected.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(np.asarray(cams), expected, atol=1e-5)
    other_target = jnp.array([(t + 1) % 5 for t in target])
    other, _ = jax.jit(lambda v, x: grad_cam(model, v, x, stage=4, target=other_target))(variables, x)
    assert not np.allclose(np.asarray(other), np.asarray(cams))
    with pytest.raises(ValueError, match="stage must be 1..4"):
        grad_cam(model, variables, x, stage=5)


def test_gradcam_command_writes_the_grid(python, repo, finetune_run):
    workdir, _ = finetune_run
    out = workdir / "cam" / "gradcam.png"
    cmd = [python, "-m", "fetalssl_jax.main", "--config", f"{repo / 'configs' / 'gradcam.py'}:tiny",
           f"--config.classifier={workdir}", "--config.stage=3", "--workdir", str(out.parent)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert out.stat().st_size > 5000 and f"wrote {out}" in proc.stdout


# ---- t-SNE -------------------------------------------------------------------------------------------------------
def test_tsne_keeps_separated_clusters_apart(tmp_path):
    from fetalssl_jax.downstream.embedding import plot_embedding, tsne_embedding

    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    features = rng.standard_normal((90, 16)) + 8.0 * np.eye(16)[labels]
    points = tsne_embedding(features, seed=0)
    assert points.shape == (90, 2)
    distances = np.linalg.norm(points[:, None] - points[None], axis=-1) + np.eye(90) * 1e9
    assert np.mean(labels[distances.argmin(1)] == labels) > 0.95  # 1-NN in 2-D recovers the clusters
    plot_embedding(points, labels, ("x", "y", "z"), tmp_path / "t.png")
    assert (tmp_path / "t.png").stat().st_size > 5000


def test_tsne_task_writes_the_points_of_the_split(repo, tmp_path):
    from fetalssl_jax.data import sources
    from fetalssl_jax.downstream.embedding import run as run_tsne

    config = load_config(f"{repo / 'configs' / 'tsne.py'}:tiny,split=valid")
    assert run_tsne(config, tmp_path) == f"wrote {tmp_path / 'tsne_valid.png'}"
    saved = np.load(tmp_path / "tsne_valid.npz")
    valid = sources.labelled_splits(config)["valid"]
    assert saved["points"].shape == (len(valid.labels), 2)
    np.testing.assert_array_equal(saved["labels"], valid.labels)


# ---- export for PyTorch ------------------------------------------------------------------------------------------
def test_export_of_a_fine_tuned_backbone_round_trips(python, repo, finetune_run, tmp_path):
    from fetalssl_jax.models import torch_io

    workdir, _ = finetune_run
    out = tmp_path / "backbone.safetensors"
    cmd = [python, "-m", "fetalssl_jax.main", "--config", str(repo / "configs" / "export.py"),
           f"--config.backbone={workdir}", "--workdir", str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out}"
    sd = torch_io.load_state_dict_file(out)
    assert torch_io.infer_resnet(sd) == ("resnet10", 8)
    _, variables, _, _ = load_classifier(workdir)
    backbone = {k: variables[k]["backbone"] for k in ("params", "batch_stats")}
    back = torch_io.from_torch_state_dict(sd, backbone, str(out))
    for (path, a), b in zip(_flat(backbone).items(), _flat(back).values(), strict=True):
        np.testing.assert_array_equal(a, b, err_msg=path)


# ---- command line and errors -------------------------------------------------------------------------------------
def test_cli_names_a_missing_backbone_and_an_impossible_fraction(python, repo, tmp_path):
    base = [python, "-m", "fetalssl_jax.main", "--config", f"{repo / 'configs' / 'classify.py'}:tiny"]
    proc = subprocess.run([*base, f"--config.init={tmp_path / 'nowhere'}", "--workdir", str(tmp_path / "a")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "nowhere" in proc.stderr and "no such file" in proc.stderr, proc.stderr
    proc = subprocess.run([*base, "--config.label_fraction=0.01", "--workdir", str(tmp_path / "b")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 2 and "fewer than the 5 classes" in proc.stderr, proc.stderr


def test_interrupted_run_resumes_with_the_same_losses(repo, finetune_run, tmp_path):
    workdir, results = finetune_run
    config = classify_config(repo, "num_epochs=3,checkpoint_every_epochs=1")
    assert run_classification(config, tmp_path, stop_after_epochs=2) == {}
    assert not (tmp_path / "results.json").exists() and len(read_metrics(tmp_path, kind="eval")) == 2
    resumed = run_classification(config, tmp_path)
    assert records(tmp_path) == records(workdir)
    assert resumed["test"] == results["test"]
    assert not (tmp_path / "checkpoints").exists()  # removed once results.json is written
    other = classify_config(repo, "num_epochs=3,checkpoint_every_epochs=1,seed=5")
    run_classification(other, tmp_path / "b", stop_after_epochs=1)
    with pytest.raises(ValueError, match="made by another config"):
        run_classification(classify_config(repo, "num_epochs=3,checkpoint_every_epochs=1"), tmp_path / "b")


def test_cosmetic_keys_never_block_reuse_or_resume_and_other_keys_are_named(repo, finetune_run, tmp_path):
    from fetalssl_jax.train.fingerprint import WorkdirMismatchError

    workdir, results = finetune_run
    # a finished run: reused despite another progress bar or checkpoint interval, refused for another length
    assert run_classification(classify_config(repo, "num_epochs=3,progress_bar=True,checkpoint_every_epochs=1"),
                              workdir) == results  # fmt: skip
    with pytest.raises(WorkdirMismatchError, match="finished classification run in .* made by another config") as info:
        run_classification(classify_config(repo, "num_epochs=4"), workdir)
    assert "\n  num_epochs: finished run has 3, config has 4" in str(info.value)
    # an interrupted run: resumed with the progress bar on, and the losses are those of the uninterrupted run
    run_classification(classify_config(repo, "num_epochs=3,checkpoint_every_epochs=1"), tmp_path, stop_after_epochs=1)
    resumed = run_classification(classify_config(repo, "num_epochs=3,progress_bar=True"), tmp_path)
    assert records(tmp_path) == records(workdir)
    assert resumed["test"] == results["test"]
    other = tmp_path / "other"
    run_classification(
        classify_config(repo, "num_epochs=3,checkpoint_every_epochs=1,seed=5"), other, stop_after_epochs=1
    )
    with pytest.raises(WorkdirMismatchError, match="made by another config") as info:
        run_classification(classify_config(repo, "num_epochs=3,checkpoint_every_epochs=1"), other)
    assert "\n  seed: checkpoint has 5, config has 0" in str(info.value)


def test_ctrl_c_stops_a_classifier_after_the_round_with_a_checkpoint_it_resumes_from(python, repo, tmp_path):
    import os
    import signal
    import threading
    import time

    workdir, arg = tmp_path / "run", "num_epochs=200,checkpoint_every_epochs=0"
    cmd = [python, "-m", "fetalssl_jax.main", "--config", f"{repo / 'configs' / 'classify.py'}:tiny,{arg}",
           "--workdir", str(workdir)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": f"{repo}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stderr = []
    reader = threading.Thread(target=lambda: stderr.extend(iter(proc.stderr.readline, "")), daemon=True)
    reader.start()
    metrics = workdir / "metrics.jsonl"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline and not (metrics.exists() and metrics.read_text()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    out = proc.stdout.read()
    proc.wait(timeout=120)
    reader.join(timeout=10)
    stderr = "".join(stderr)
    assert proc.returncode == 0, stderr
    assert out.strip() == f"preempted; run again to resume; workdir: {workdir}"
    assert "Traceback" not in stderr and stderr.count("Ctrl-C: stopping") == 1
    rounds = read_metrics(workdir, kind="eval")
    assert f"stopped after step {rounds[-1]['step']}; checkpoint saved" in stderr
    steps_per_epoch = rounds[0]["step"]
    assert [r["step"] for r in rounds] == [steps_per_epoch * (k + 1) for k in range(len(rounds))]
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [str(rounds[-1]["step"])]
    config = classify_config(repo, arg)
    assert run_classification(config, workdir, stop_after_epochs=len(rounds) + 1) == {}  # resumed: one more round
    assert run_classification(config, tmp_path / "reference", stop_after_epochs=len(rounds) + 1) == {}
    assert records(workdir) == records(tmp_path / "reference")
