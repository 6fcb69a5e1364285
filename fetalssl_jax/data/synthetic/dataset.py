"""The embedded datasets from integer seeds: unlabelled scan videos (a patient's videos share its anatomy) and
labelled plane images split by patient."""

from __future__ import annotations

import numpy as np

from fetalssl_jax.data.synthetic.rendering import check_int, render_frames, render_patient
from fetalssl_jax.data.synthetic.scene import NUM_PLANES, SWEEP_ORDER, sample_patient, sample_scene
from fetalssl_jax.data.types import LabelledFrames, Video

# Random-stream tags, so that the streams of videos, patients and labelled sets never coincide.
_TAG_VIDEO = 101
_TAG_PATIENT = 202
_TAG_LABELLED = 303
_TAG_SPLIT = 404


def generate_videos(
    num_videos: int,
    num_frames: int,
    image_size: int,
    seed: int,
    frame_skip: int = 5,
    videos_per_patient: int = 2,
) -> list[Video]:
    """Unlabelled scan videos (``num_frames`` kept frames each, after frame skip).

    Video ``i`` belongs to patient ``i // videos_per_patient`` (ids ``"P0000"``, ``"P0001"``, ...); videos of a
    patient share its anatomy traits. Each video has its own random stream, so the first ``k`` videos do not
    depend on ``num_videos``.
    """
    check_int("num_videos", num_videos, 1)
    check_int("num_frames", num_frames, 1)
    check_int("image_size", image_size, 16)
    check_int("seed", seed, 0)
    check_int("frame_skip", frame_skip, 1)
    check_int("videos_per_patient", videos_per_patient, 1)
    return [generate_video(i, num_frames, image_size, seed, frame_skip, videos_per_patient) for i in range(num_videos)]


def generate_video(
    index: int, num_frames: int, image_size: int, seed: int, frame_skip: int = 5, videos_per_patient: int = 2
) -> Video:
    """Video `index` of :func:`generate_videos` with the same arguments, rendered alone (for builders that make
    one video per worker)."""
    check_int("index", index, 0)
    pat, k = divmod(index, videos_per_patient)
    patient = sample_patient(np.random.default_rng([seed, _TAG_PATIENT, pat]))
    rng = np.random.default_rng([seed, _TAG_VIDEO, index])
    frames, planes = render_patient(rng, patient, num_frames, image_size, frame_skip, None)
    pid = f"P{pat:04d}"
    return Video(frames=frames, planes=planes, patient_id=pid, video_id=f"{pid}-v{k}")


def _split_counts(num_patients: int, fractions: tuple[float, float, float]) -> list[int]:
    raw = np.asarray(fractions, np.float64) * num_patients
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: num_patients - counts.sum()]:
        counts[i] += 1
    return [int(c) for c in counts]


def generate_labelled_frames(
    num_patients: int,
    frames_per_patient: int,
    image_size: int,
    seed: int,
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
) -> dict[str, LabelledFrames]:
    """Labelled plane images for 'train', 'valid', 'test', split BY PATIENT (no patient in two splits).

    Patients (ids ``"L0000"``, ...) are disjoint from those of :func:`generate_videos` with any seed. Each
    patient's frames are drawn from two rendered sweep videos of that patient covering all five planes; every
    patient contributes frames of every class (counts as equal as possible, so ``frames_per_patient >= 5``),
    and only frames whose dominant plane has crossfade weight >= 0.9 are used. Patients are assigned to splits
    by a seeded permutation in proportions ``split_fractions``.
    """
    check_int("num_patients", num_patients, 3)
    check_int("frames_per_patient", frames_per_patient, NUM_PLANES)
    check_int("image_size", image_size, 16)
    check_int("seed", seed, 0)
    fr = tuple(float(f) for f in split_fractions)
    if len(fr) != 3 or any(not f > 0 for f in fr) or abs(sum(fr) - 1.0) > 1e-6:
        raise ValueError(f"split_fractions must be three positive numbers summing to 1, got {split_fractions!r}")
    counts = _split_counts(num_patients, fr)
    if min(counts) < 1:
        raise ValueError(
            f"num_patients={num_patients} is too small to give every split a patient with "
            f"split_fractions={split_fractions!r}"
        )
    order = np.random.default_rng([seed, _TAG_SPLIT]).permutation(num_patients)
    split_of = np.empty(num_patients, int)
    split_of[order[: counts[0]]] = 0
    split_of[order[counts[0] : counts[0] + counts[1]]] = 1
    split_of[order[counts[0] + counts[1] :]] = 2

    images: list[list[np.ndarray]] = [[], [], []]
    labels: list[list[np.ndarray]] = [[], [], []]
    pids: list[list[str]] = [[], [], []]
    num_videos = 2
    for pat in range(num_patients):
        rng = np.random.default_rng([seed, _TAG_LABELLED, pat])
        patient = sample_patient(rng)
        # Per class frame counts (as equal as possible), then spread over the videos.
        per_class = np.full(NUM_PLANES, frames_per_patient // NUM_PLANES)
        per_class[rng.permutation(NUM_PLANES)[: frames_per_patient % NUM_PLANES]] += 1
        per_video = np.zeros((num_videos, NUM_PLANES), int)
        for cls in range(NUM_PLANES):
            first = int(rng.integers(num_videos))
            for j in range(per_class[cls]):
                per_video[(first + j) % num_videos, cls] += 1
        for v in range(num_videos):
            if per_video[v].sum() == 0:
                continue
            frame_skip = int(rng.integers(2, 6))
            need = int(per_video[v].max())
            timeline = 12 * need + 80  # only the chosen frames are rendered, so a long timeline is cheap
            seq = list(SWEEP_ORDER) if rng.random() < 0.5 else list(SWEEP_ORDER[::-1])
            sc = sample_scene(rng, patient, timeline, image_size, frame_skip, seq)
            dominant = np.argmax(sc.weights, axis=1)
            purity = sc.weights.max(axis=1)
            chosen = []
            for cls in range(NUM_PLANES):
                if per_video[v, cls] == 0:
                    continue
                cand = np.nonzero((dominant == cls) & (purity >= 0.9))[0]
                if len(cand) == 0:
                    cand = np.nonzero(dominant == cls)[0]
                replace = len(cand) < per_video[v, cls]
                chosen.append(rng.choice(cand, per_video[v, cls], replace=replace))
            idx = np.sort(np.concatenate(chosen))
            sp = split_of[pat]
            images[sp].append(render_frames(sc, rng, idx))
            labels[sp].append(dominant[idx].astype(np.int32))
            pids[sp] += [f"L{pat:04d}"] * len(idx)

    result = {}
    for sp, name in enumerate(("train", "valid", "test")):
        result[name] = LabelledFrames(
            images=np.concatenate(images[sp], 0),
            labels=np.concatenate(labels[sp], 0),
            patient_ids=np.asarray(pids[sp]),
        )
    return result
