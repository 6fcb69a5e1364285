"""The product as an outside user meets it: scans in files, our builders, our default config, a probe that is not ours.

  python benchmarks/external_check.py --workdir /tmp/external --steps 300,900

1. Writes scans of patients the embedded data never uses (generator seed `--seed`) in the file formats of a
   hospital export: unlabelled videos at 25 fps as mp4 (in a 4:3 frame with black margins, as a scanner's screen
   capture) and as DICOM cine loops, and labelled plane images as PNG files with a `labels.csv`
   (`image_name`, `class`, `patient_id`).
2. Builds them with the TFDS builders (`fetal_us_video --config pairs`, frame skip 5, and
   `fetal_cardiac_planes --config csv`; `--fit crop_pad`: both cropped to the scan's content, for the captures).
3. Pretrains the default Barlow Twins config (`configs/barlow.py`) on the built videos for each number of
   `--steps`, and reads its own end-of-run table (kNN, 10-per-class probe vs both random baselines).
4. Exports each backbone with torchvision names (`.safetensors`) and probes it with code that shares nothing with
   the package: a PyTorch forward pass assembled from the state dict's shapes (`torch.nn.functional`), the PNG
   files read with PIL, scikit-learn's logistic regression on 10 labelled images per class over 20 draws, test
   patients only; the baseline is the same network with torchvision's default initialisation.

Prints one table: per run, the package's own kNN / probe difference to random init and the outside probe's
difference, each with a 95 % interval. Needs the `data` and `bench` extras (PyAV, pydicom, torch).
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
SHOTS = 10


# ---- 1. files -----------------------------------------------------------------------------------------------------
def write_scans(root: pathlib.Path, seed: int, num_videos: int, num_patients: int, size: int, margin: float) -> None:
    """Videos (mp4 / DICOM alternately) and labelled PNG planes of patients from generator seed `seed`; the mp4s
    have black bands of `margin` x size left and right (a screen capture)."""
    sys.path.insert(0, str(REPO / "tests"))
    from us_fixtures import write_dicom, write_png, write_video

    from fetalssl_jax.data import synthetic

    videos, planes = root / "videos", root / "planes"
    if not (videos / "done").exists():
        for i in range(num_videos):
            # 64 kept frames after the builder's frame skip of 5: 320 raw frames at 25 fps
            frames = synthetic.generate_video(i, 320, size, seed=seed, frame_skip=1).frames
            if i % 2 == 0:
                band = round(margin * size)  # 1/6: a 4:3 screen capture, black bands beside the square image
                frames = np.pad(frames, ((0, 0), (0, 0), (band, band)))
                write_video(videos / "mp4" / f"scan_{i:03d}.mp4", frames)
            else:
                write_dicom(videos / "dicom" / f"scan_{i:03d}.dcm", frames, jpeg=True)
        (videos / "done").touch()
    if not (planes / "labels.csv").exists():
        sets = synthetic.generate_labelled_frames(num_patients, 20, size, seed=seed)
        rows = []
        for split in ("train", "valid", "test"):
            s = sets[split]
            for j, (image, label, patient) in enumerate(zip(s.images, s.labels, s.patient_ids, strict=True)):
                name = f"{split}_{j:05d}.png"
                write_png(planes / "images" / name, image)
                rows.append({"image_name": f"images/{name}", "class": synthetic.PLANES[label], "patient_id": patient})
        with open(planes / "labels.csv.tmp", "w", newline="") as f:
            writer = csv.DictWriter(f, ["image_name", "class", "patient_id"])
            writer.writeheader()
            writer.writerows(rows)
        (planes / "labels.csv.tmp").rename(planes / "labels.csv")


# ---- 2. builders ----------------------------------------------------------------------------------------------------
def build(root: pathlib.Path, fit: str) -> tuple[pathlib.Path, str, str]:
    """Builds fetal_us_video/pairs and fetal_cardiac_planes/csv (with `fit`: configs pairs_<fit>, csv_<fit> unless
    it is the default) into root/tfds; returns that data_dir and the two dataset names."""
    import tensorflow_datasets as tfds

    sys.path.insert(0, str(REPO / "data_builders"))
    from fetal_cardiac_planes.fetal_cardiac_planes_dataset_builder import FetalCardiacPlanes, FetalCardiacPlanesConfig
    from fetal_us_video.fetal_us_video_dataset_builder import FetalUsVideo, FetalUsVideoConfig

    data_dir, names = root / "tfds", []
    suffix = "" if fit == "stretch" else f"_{fit}"
    videos = FetalUsVideoConfig(name=f"pairs{suffix}", fit=fit)
    planes = FetalCardiacPlanesConfig(name=f"csv{suffix}", fit=fit)
    for cls, config, manual in ((FetalUsVideo, videos, "videos"), (FetalCardiacPlanes, planes, "planes")):
        builder = cls(config=config, data_dir=str(data_dir))
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(root / manual)))
        names.append(f"{builder.name}/{config.name}")
    return data_dir, names[0], names[1]


# ---- 4. a probe that shares nothing with the package ----------------------------------------------------------------
def torch_resnet_features(state: dict, images: np.ndarray, size: int) -> np.ndarray:
    """Pooled features of a torchvision-named BasicBlock ResNet state dict, widths read from the weights."""
    import torch
    import torch.nn.functional as F

    def bn(x, prefix):
        return F.batch_norm(x, state[f"{prefix}.running_mean"], state[f"{prefix}.running_var"],
                            state[f"{prefix}.weight"], state[f"{prefix}.bias"], False, 0.0, 1e-5)  # fmt: skip

    stages = sorted({int(k.split(".")[0][5:]) for k in state if k.startswith("layer")})
    x = torch.from_numpy(images).float().div(255.0)[:, None]
    x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    mean = torch.tensor([0.485, 0.456, 0.406])[None, :, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[None, :, None, None]
    x = (x.repeat(1, 3, 1, 1) - mean) / std
    with torch.no_grad():
        x = F.relu(bn(F.conv2d(x, state["conv1.weight"], stride=2, padding=3), "bn1"))
        x = F.max_pool2d(x, 3, 2, 1)
        for s in stages:
            blocks = sorted({int(k.split(".")[1]) for k in state if k.startswith(f"layer{s}.")})
            for b in blocks:
                p = f"layer{s}.{b}"
                stride = 2 if (s > 1 and b == 0) else 1
                y = F.relu(bn(F.conv2d(x, state[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
                y = bn(F.conv2d(y, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
                if f"{p}.downsample.0.weight" in state:
                    x = bn(F.conv2d(x, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
                x = F.relu(y + x)
        return x.mean(dim=(2, 3)).numpy()


def torchvision_default_init(state: dict, seed: int) -> dict:
    """The same shapes with torchvision's ResNet init: kaiming-normal (fan_out, relu) convs, BN weight 1, bias 0."""
    import torch

    torch.manual_seed(seed)
    out = {}
    for k, v in state.items():
        if k.endswith("conv1.weight") or k.endswith("conv2.weight") or k.endswith("downsample.0.weight"):
            out[k] = torch.nn.init.kaiming_normal_(torch.empty_like(v), mode="fan_out", nonlinearity="relu")
        elif k.endswith("running_var") or (k.endswith(".weight") and v.ndim == 1):
            out[k] = torch.ones_like(v)
        elif k.endswith("num_batches_tracked"):
            out[k] = v
        else:
            out[k] = torch.zeros_like(v)
    return out


def outside_probe(planes: pathlib.Path, states: dict[str, dict], size: int, draws: int = 20) -> dict:
    """Macro-F1 of a 10-per-class logistic regression on each state's features (same draws for all), trained
    on the CSV's training patients and scored on test patients (a patient split of its own, 60/20/20)."""
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import f1_score
    from sklearn.preprocessing import StandardScaler

    with open(planes / "labels.csv") as f:
        rows = list(csv.DictReader(f))
    patients = sorted({r["patient_id"] for r in rows})
    order = np.random.default_rng(123).permutation(len(patients))
    test_patients = {patients[i] for i in order[: len(patients) // 5]}
    images = np.stack([np.asarray(Image.open(planes / r["image_name"]).convert("L")) for r in rows])
    classes = sorted({r["class"] for r in rows})
    y = np.array([classes.index(r["class"]) for r in rows])
    is_test = np.array([r["patient_id"] in test_patients for r in rows])
    train_idx, test_idx = np.nonzero(~is_test)[0], np.nonzero(is_test)[0]
    rng = np.random.default_rng(0)
    picks = [
        np.concatenate([rng.choice(train_idx[y[train_idx] == c], SHOTS, replace=False) for c in range(len(classes))])
        for _ in range(draws)
    ]
    scores = {}
    for name, state in states.items():
        feats = np.concatenate(
            [torch_resnet_features(state, images[i : i + 256], size) for i in range(0, len(images), 256)]
        )
        scaler = StandardScaler().fit(feats[train_idx])
        x = scaler.transform(feats)
        scores[name] = np.array([
            f1_score(y[test_idx], LogisticRegression(max_iter=2000).fit(x[p], y[p]).predict(x[test_idx]),
                     average="macro")
            for p in picks
        ])  # fmt: skip
    return scores


def _format(interval, signed: bool = True) -> str:
    sign = "+" if signed else ""
    return f"{interval.mean:{sign}.3f} [{interval.low:{sign}.3f}, {interval.high:{sign}.3f}]"


def _interval(values: np.ndarray) -> str:
    lo, hi = np.percentile(values, [2.5, 97.5])
    return f"{values.mean():+.3f} [{lo:+.3f}, {hi:+.3f}]"


COLUMNS = ("steps", "knn", "knn_random", "knn_minus_random", "probe_minus_random", "probe_minus_ssl_start",
           "outside_probe", "outside_random", "outside_minus_random")  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="workdirs/external_check")
    parser.add_argument("--steps", default="300,900", help="comma-separated pretraining lengths")
    parser.add_argument("--seed", type=int, default=2027, help="generator seed of the outside patients")
    parser.add_argument("--videos", type=int, default=48)
    parser.add_argument("--patients", type=int, default=150)
    parser.add_argument("--size", type=int, default=128, help="side of the written scans in pixels")
    parser.add_argument("--config", default=str(REPO / "configs" / "barlow.py"))
    parser.add_argument("--screen_margin", type=float, default=1 / 6, help="black band beside each mp4, x size")
    parser.add_argument("--fit", default="stretch", help="the builders' fit: stretch (default), crop_pad or pad")
    return parser.parse_args(argv)


def pretrain_and_probe(args, root: pathlib.Path, data_dir, videos_name: str, planes_name: str, steps: int) -> dict:
    """One row: the config pretrained `steps` steps on the built videos, evaluated on the built planes, its export
    probed by the outside code."""
    from safetensors.torch import load_file

    from fetalssl_jax.config_lib import load_config
    from fetalssl_jax.downstream.export import export_torch
    from fetalssl_jax.eval.evaluator import SSL_START, random_init_name
    from fetalssl_jax.train.loop import train

    config = load_config(args.config)
    with config.unlocked():
        config.num_steps = steps
        config.progress_bar = False
        config.eval.shots = (SHOTS,)
        config.data.source, config.data.name, config.data.data_dir = "tfds", videos_name, str(data_dir)
        config.eval.dataset, config.eval.data_dir = planes_name, str(data_dir)
    run = root / f"barlow_{steps}"
    ev = train(config, run).evaluation
    name, random_init = next(iter(ev.knn)), random_init_name(config.model)
    state = load_file(str(export_torch(run, root / f"barlow_{steps}.safetensors")))
    outside = outside_probe(root / "planes", {"ssl": state, "random": torchvision_default_init(state, 0)},
                            config.data.image_size)  # fmt: skip
    return {
        "steps": steps,
        "knn": _format(ev.knn[name], False), "knn_random": _format(ev.knn[random_init], False),
        "knn_minus_random": _format(ev.knn_differences[random_init][name]),
        "probe_minus_random": _format(ev.few_label.differences[random_init][name][SHOTS]),
        "probe_minus_ssl_start": _format(ev.few_label.differences[SSL_START][name][SHOTS]),
        "outside_probe": f"{outside['ssl'].mean():.3f}", "outside_random": f"{outside['random'].mean():.3f}",
        "outside_minus_random": _interval(outside["ssl"] - outside["random"]),
    }  # fmt: skip


def main() -> None:
    args = parse_args()
    root = pathlib.Path(args.workdir)

    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")
    write_scans(root, args.seed, args.videos, args.patients, args.size, args.screen_margin)
    data_dir, videos_name, planes_name = build(root, args.fit)
    rows = []
    for steps in (int(s) for s in args.steps.split(",")):
        rows.append(pretrain_and_probe(args, root, data_dir, videos_name, planes_name, steps))
        print(json.dumps(rows[-1]), flush=True)
    print(f"\nOutside patients (seed {args.seed}), mp4 + DICOM videos, PNG + CSV planes, {args.config}:\n")
    print("| steps | kNN | kNN random | kNN - random | probe 10/class - random | probe - SSL start | "
          "outside probe | outside random | outside - random (draws) |")  # fmt: skip
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in COLUMNS) + " |")


if __name__ == "__main__":
    main()
