"""`embed` gives exactly the frozen evaluator's features; a streamed input (videos of a folder, image files, a
built dataset) gives, row by row, the evaluator's features of the frames `readers.prepare_video` prepares."""

import csv

import numpy as np
import pytest
from apply_fixtures import SIZE, random_backbone
from conftest import REPO
from PIL import Image
from us_fixtures import moving_frames, write_png, write_video

from fetalssl_jax.apply import Embeddings, embed, embed_input, open_input
from fetalssl_jax.data.build import readers
from fetalssl_jax.eval.frozen import extract_features


@pytest.fixture(scope="module")
def backbone():
    return random_backbone()


def _evaluator(backbone, frames, batch_size=256):
    """The frozen evaluation's path, independently of apply."""
    return extract_features(backbone.module, backbone.variables, frames, backbone.image_size, batch_size)


def _close(streamed, evaluated):
    """A streamed input's batches hold other rows than the evaluator's (which shrinks its batch to a short input and
    so compiles another program): equal to float32 rounding."""
    np.testing.assert_allclose(streamed, evaluated, rtol=1e-5, atol=1e-5)


def test_embed_is_the_evaluators_features(backbone):
    rng = np.random.default_rng(0)
    for shape in ((21, SIZE, SIZE), (5, 48, 40), (7, SIZE, SIZE, 3)):  # any size is resized by the evaluator too
        frames = rng.integers(0, 256, shape, dtype=np.uint8)
        features = embed(backbone, frames, batch_size=8)
        np.testing.assert_array_equal(features, _evaluator(backbone, frames, 8))
        assert features.shape == (shape[0], 8 * 8) and features.dtype == np.float32
    with pytest.raises(ValueError, match="frames must be uint8"):
        embed(backbone, np.zeros((2, 32, 32), np.float32))


def test_a_folder_of_videos_streams_the_prepared_frames_of_each_video(backbone, tmp_path, monkeypatch):
    monkeypatch.setenv("FETALSSL_ID_SALT", "pepper")
    rng = np.random.default_rng(1)
    videos = {
        "a/scan1.npy": rng.integers(0, 256, (23, 40, 52), dtype=np.uint8),  # another size: resized, not refused
        "b/scan2.npy": rng.integers(0, 256, (9, SIZE, SIZE, 3), dtype=np.uint8),  # RGB
        "b/scan3.npy": rng.integers(0, 256, (31, 64, 64), dtype=np.uint8),
    }
    for name, frames in videos.items():
        (tmp_path / name).parent.mkdir(exist_ok=True)
        np.save(tmp_path / name, frames)
    embeddings = embed_input(backbone, open_input(str(tmp_path)), frame_skip=3, batch_size=8, progress=False)
    start = 0
    for name, frames in sorted(videos.items()):
        prepared, kept = readers.prepare_video(frames, name, SIZE, 3)
        rows = slice(start, start + len(kept))
        _close(embeddings.features[rows], _evaluator(backbone, prepared))
        np.testing.assert_array_equal(embeddings.frame_index[rows], np.arange(0, len(frames), 3))
        assert set(embeddings.source_ids[rows]) == {readers.salted_hash(name, "pepper")}
        start += len(kept)
    assert len(embeddings) == start and np.all(embeddings.labels == -1)
    embeddings.save(tmp_path / "out")
    back = Embeddings.load(tmp_path / "out")
    np.testing.assert_array_equal(back.features, embeddings.features)
    np.testing.assert_array_equal(back.source_ids, embeddings.source_ids)
    with open(tmp_path / "out" / "embeddings.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["row", "source_id", "frame_index", "label"] and len(rows) == start
    assert rows[-1]["frame_index"] == "30" and rows[-1]["label"] == ""
    assert not any("scan" in r["source_id"] for r in rows)  # ids, never file names


def test_image_files_of_any_size_are_resized_as_the_plane_builder_does(backbone, tmp_path):
    rng = np.random.default_rng(2)
    images = {"x/1.png": rng.integers(0, 256, (50, 70), dtype=np.uint8),
              "y/2.png": rng.integers(0, 256, (SIZE, SIZE), dtype=np.uint8)}  # fmt: skip
    for name, image in images.items():
        write_png(tmp_path / name, image)
    assert open_input(str(tmp_path)).kind == "video"  # 'auto': sub-folders of images are videos (frame folders)
    write_png(tmp_path / "loose.png", images["y/2.png"])
    assert open_input(str(tmp_path / "loose.png")).kind == "images"
    (tmp_path / "loose.png").unlink()
    data = open_input(str(tmp_path), input_type="images")
    embeddings = embed_input(backbone, data, batch_size=4, progress=False)
    expected = np.stack([readers.resize_frames(im[None], SIZE)[0] for _, im in sorted(images.items())])
    _close(embeddings.features, _evaluator(backbone, expected))
    np.testing.assert_array_equal(
        embed(backbone, [im for _, im in sorted(images.items())]), _evaluator(backbone, expected)
    )


def test_a_built_labelled_dataset_keeps_its_labels_and_class_names(backbone, data_dir):
    from fetalssl_jax.data.tfds_source import labelled_splits_from_tfds

    data = open_input("tfds:fetal_cardiac_planes/tiny", data_dir=str(data_dir), split="test")
    embeddings = embed_input(backbone, data, batch_size=16, progress=False)
    test = labelled_splits_from_tfds("fetal_cardiac_planes/tiny", str(data_dir))["test"]
    np.testing.assert_array_equal(embeddings.labels, test.labels)
    np.testing.assert_array_equal(embeddings.features, _evaluator(backbone, test.images, 16))
    assert embeddings.class_names == ("3VV/3VT", "4CH", "LVOT", "RVOT", "non-heart")


def test_bad_inputs_are_named(backbone, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(readers.DataError, match=r"no videos and no images in .*empty \(looked for .mp4"):
        open_input(str(empty))
    with pytest.raises(readers.DataError, match=r"no videos found in .*empty"):
        open_input(str(empty), input_type="videos")
    with pytest.raises(ValueError, match=r"input '.*missing': no such file or folder"):
        open_input(str(tmp_path / "missing"))
    scans = tmp_path / "scans"
    write_video(scans / "good.mp4", moving_frames(6, 32, 32))
    (scans / "broken.mp4").write_bytes((scans / "good.mp4").read_bytes()[:200])  # truncated
    data = open_input(str(scans))
    with pytest.raises(readers.DataError, match=r"^broken\.mp4: unreadable or truncated video"):
        embed_input(backbone, data, progress=False)


def test_a_built_video_dataset_gives_each_record_its_video_id_and_frame(backbone, data_dir):
    from fetalssl_jax.data.tfds_source import data_source, load_builder

    data = open_input("tfds:fetal_us_video/tiny_pairs", data_dir=str(data_dir), split="train")
    embeddings = embed_input(backbone, data, batch_size=16, progress=False)
    source = data_source(load_builder("fetal_us_video/tiny_pairs", str(data_dir)), "train", "tiny_pairs")
    records = source.__getitems__(list(range(len(source))))
    assert list(embeddings.source_ids) == [r["video_id"].decode() for r in records]
    np.testing.assert_array_equal(embeddings.frame_index, [r["frame_index1"] for r in records])
    frames = np.stack([r["frame1"] for r in records])
    np.testing.assert_array_equal(embeddings.features, _evaluator(backbone, frames, 16))
    assert embeddings.class_names == () and np.all(embeddings.labels == -1)


def test_the_embed_command_and_a_file_of_several_videos(python, tmp_path):
    import os
    import subprocess

    rng = np.random.default_rng(3)
    np.savez(tmp_path / "two.npz", a=rng.integers(0, 256, (4, 32, 32), dtype=np.uint8),
             b=rng.integers(0, 256, (6, 32, 32), dtype=np.uint8))  # fmt: skip
    out = tmp_path / "out"
    cmd = [python, "-m", "fetalssl_jax.main", "--config", f"{REPO / 'configs' / 'embed.py'}:tiny",
           "--config.backbone=random", "--config.model.arch=resnet10", "--config.model.width=8",
           "--config.image_size=32", f"--config.input={tmp_path / 'two.npz'}", "--config.frame_skip=2",
           "--workdir", str(out)]  # fmt: skip
    env = {**os.environ, "FETALSSL_ID_SALT": "pepper"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"5 frames x 64 features of random: {out / 'embeddings.npz'}"
    embeddings = Embeddings.load(out)
    ids = [readers.salted_hash(f"two.npz::{key}", "pepper") for key in "aab" + "bb"]
    assert list(embeddings.source_ids) == ids and list(embeddings.frame_index) == [0, 2, 0, 2, 4]
    with open(out / "sources.csv") as f:
        assert list(csv.reader(f)) == [["source_id", "path"], [ids[0], "two.npz::a"], [ids[2], "two.npz::b"]]


def test_fit_makes_a_screen_capture_square_as_the_builders_do(backbone, tmp_path):
    # a 4:3 capture: bright scan between black bands. With fit="crop_pad" the rows are the evaluator's features of
    # the scan alone (resized by PIL, independently of the readers); the default stretch differs from them
    rng = np.random.default_rng(4)
    scan = rng.integers(40, 256, (4, 48, 48), dtype=np.uint8)
    np.save(tmp_path / "capture.npy", np.pad(scan, ((0, 0), (0, 0), (8, 8))))
    from PIL import Image

    alone = np.stack([np.asarray(Image.fromarray(f).resize((SIZE, SIZE), Image.BILINEAR)) for f in scan])[..., None]
    cropped = embed_input(backbone, open_input(str(tmp_path), fit="crop_pad"), frame_skip=1, batch_size=8,
                          progress=False)  # fmt: skip
    stretched = embed_input(backbone, open_input(str(tmp_path)), frame_skip=1, batch_size=8, progress=False)
    reference = _evaluator(backbone, alone)
    np.testing.assert_allclose(cropped.features, reference, rtol=1e-3, atol=1e-3)
    assert np.abs(stretched.features - reference).max() > 10 * np.abs(cropped.features - reference).max()


def test_a_multi_frame_dicom_given_alone_is_a_video(backbone, tmp_path, monkeypatch):
    """As inside a folder: every `frame_skip`-th frame, numbered, one source; a one-frame DICOM stays an image."""
    from us_fixtures import write_dicom

    monkeypatch.setenv("FETALSSL_ID_SALT", "pepper")
    loop = moving_frames(7, 40, 36, seed=5)
    write_dicom(tmp_path / "loop.dcm", loop)
    write_dicom(tmp_path / "still.dcm", loop[:1])
    data = open_input(str(tmp_path / "loop.dcm"))
    assert data.kind == "video"
    embeddings = embed_input(backbone, data, frame_skip=3, batch_size=8, progress=False)
    np.testing.assert_array_equal(embeddings.frame_index, [0, 3, 6])
    assert set(embeddings.source_ids) == {readers.salted_hash("loop.dcm", "pepper")}
    resized = np.stack([np.asarray(Image.fromarray(f).resize((SIZE, SIZE), Image.BILINEAR)) for f in loop[::3]])
    _close(embeddings.features, _evaluator(backbone, resized[..., None]))  # PIL's resize, independently
    assert open_input(str(tmp_path / "still.dcm")).kind == "images"
    with pytest.raises(readers.DataError, match=r"loop.dcm: a DICOM of 7 images .* read it as a video"):
        embed_input(backbone, open_input(str(tmp_path / "loop.dcm"), input_type="images"), progress=False)


def test_the_frames_embed_sees_and_keeps_carry_no_pixel_of_burned_in_text(tmp_path):
    """Scans with a header of burned-in text: the blocks (network input and the originals that become PNGs) are
    those of the same scans without it; deidentify=False keeps the text."""
    from us_fixtures import BAND, burn_text

    from fetalssl_jax.data import synthetic

    for index in range(2):
        clean = synthetic.generate_video(index, 6, 96, seed=6, frame_skip=5).frames
        texted, text = burn_text(clean)
        np.save(tmp_path / f"text{index}.npy", texted)
        np.save(tmp_path / f"clean{index}.npy", np.pad(clean, ((0, 0), (BAND, 0), (0, 0))))
        for image in ("text", "clean"):
            write_png(tmp_path / "images" / f"{image}{index}.png", np.load(tmp_path / f"{image}{index}.npy")[0])
    blocks = {b.video: b for b in open_input(str(tmp_path), input_type="videos").blocks(SIZE, frame_skip=2)}
    for index in range(2):
        texted, clean = blocks[f"text{index}.npy"], blocks[f"clean{index}.npy"]
        np.testing.assert_array_equal(texted.frames, clean.frames)
        np.testing.assert_array_equal(np.stack(texted.originals), np.stack(clean.originals))
        assert np.stack(texted.originals)[:, :BAND].max() == 0
    images = open_input(str(tmp_path / "images"))
    (block,) = images.blocks(SIZE)
    originals = dict(zip([p.name for p in images.images], block.originals, strict=True))
    for index in range(2):
        np.testing.assert_array_equal(originals[f"text{index}.png"], originals[f"clean{index}.png"])
    raw = next(iter(open_input(str(tmp_path / "text0.npy"), deidentify=False).blocks(SIZE, frame_skip=2)))
    assert np.stack(raw.originals)[:, :BAND].max() == 255  # the opt-out


def test_a_file_name_that_is_not_utf8_stops_the_command_with_one_line_and_status_2(python, tmp_path):
    import os
    import subprocess

    scans = tmp_path / "scans"
    scans.mkdir()
    np.save(scans / "fine.npy", moving_frames(2, 32, 32))
    np.save(scans / os.fsdecode(b"Doe_J\xe9r\xf4me.npy"), moving_frames(2, 32, 32))
    with pytest.raises(readers.DataError, match=r"^Doe_J\\xe9r\\xf4me\.npy: the file name is not UTF-8"):
        open_input(str(scans))
    cmd = [python, "-m", "fetalssl_jax.main", "--config", f"{REPO / 'configs' / 'embed.py'}:tiny",
           "--config.backbone=random", "--config.model.arch=resnet10", "--config.model.width=8",
           "--config.image_size=32", f"--config.input={scans}", "--workdir", str(tmp_path / "out")]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(r"error: Doe_J\xe9r\xf4me.npy: the file name is not UTF-8")
    assert "Traceback" not in proc.stderr
