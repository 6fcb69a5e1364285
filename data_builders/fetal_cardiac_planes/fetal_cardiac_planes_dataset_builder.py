"""fetal_cardiac_planes: labelled fetal cardiac plane images, split by patient into train/validation/test.

  tfds build data_builders/fetal_cardiac_planes --config synthetic --data_dir ~/tensorflow_datasets
  tfds build data_builders/fetal_cardiac_planes --config csv --manual_dir /path/to/images   # labels.csv
  tfds build data_builders/fetal_cardiac_planes --config folders --manual_dir /path/to/images  # <class>/*.png

CSV layout (the reference's): columns `image_name` (relative to the folder, or to its `<class>/` sub-folder),
`class`, optional `patient_id`. With patient ids no patient is in two splits; without them images are split
one by one (a warning is logged: frames of one patient can then fall in two splits). Classes default to
3VV/3VT, 4CH, LVOT, RVOT, non-heart (folder names "3VV", "3VT" or "3VV_3VT" name 3VV/3VT). Records carry salted
hashes of the patient id and of the image path, never a name or a DICOM tag.

A DICOM of several frames (a cine loop of the plane) or image regions gives every frame of every region as an
image of its row's class and patient (`readers.read_images`); the images of one file always share a split. Pixels
are de-identified (`deidentify_pixels`, default on: DICOM image regions cropped out, other images blanked outside
the scan sector) and colour-Doppler images left out (`doppler`), counted in `metadata.json`
(`skipped_doppler_images_<split>`).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from fetalssl_jax.data import synthetic
from fetalssl_jax.data.build import readers, sector
from fetalssl_jax.data.build.tfds_build import BeamOrLocalBuilder, Made, SkipItem, SkippingExamples

log = logging.getLogger("fetalssl_jax.data")

SPLITS = ("train", "validation", "test")


@dataclasses.dataclass(eq=False)
class FetalCardiacPlanesConfig(tfds.core.BuilderConfig):
    """layout: 'csv' (`csv_name` in the manual folder) or 'folders' (class sub-folders); synthetic: the embedded
    generated labelled set. on_error: 'raise' or 'skip' (bad rows/images logged and counted). fit: how an image
    becomes a square (`readers.resize_frames`): 'stretch' (the reference's resize), 'crop_pad' (content box, then
    black padding) or 'pad'; use the fit the videos were built with. deidentify_pixels and doppler: as the
    fetal_us_video builder's ('skip': a colour overlay is a cue of some planes (outflow tracts, 3VT) that a classifier
    would learn instead of the anatomy)."""

    layout: str = "csv"
    csv_name: str = "labels.csv"
    classes: tuple[str, ...] = synthetic.PLANES
    aliases: dict = dataclasses.field(default_factory=lambda: dict(readers.DEFAULT_CLASS_ALIASES))
    image_size: int = 256
    split_fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    split_seed: int = 0
    on_error: str = "raise"
    fit: str = "stretch"
    deidentify_pixels: bool = True
    doppler: str = "skip"
    synthetic: bool = False
    synthetic_patients: int = 60
    synthetic_frames_per_patient: int = 20


def _image_records(item: tuple[readers.LabelledImage, str, str], root: str, c: FetalCardiacPlanesConfig) -> Made:
    """The records of one row: its image, or every frame of every image region of a DICOM (keyed by the row's id
    salted with the part's name, as irreversible as the row's), colour-Doppler ones left out with doppler='skip'."""
    image, image_id, patient = item
    parts = readers.read_images(pathlib.Path(root) / image.relpath, image.relpath, c.deidentify_pixels)
    records = []
    for part, pixels in parts:
        if c.doppler == "skip" and sector.colour_doppler(pixels[None])[0]:
            continue
        pixels = readers.resize_frames(readers.to_grayscale(pixels[None]), c.image_size, c.fit)[0][..., None]
        key = readers.salted_hash(part, image_id) if part else image_id
        records.append((key, {"image": pixels, "label": image.label, "patient_id": patient, "image_id": key}))
    if not records:
        raise SkipItem("doppler_images", f"{image.relpath}: colour Doppler (doppler='skip')", len(parts))
    return Made(records, {"doppler_images": len(parts) - len(records)})


def _synthetic_record(item: tuple[np.ndarray, int, str, str]) -> list[tuple[str, dict]]:
    pixels, label, patient, image_id = item
    return [(image_id, {"image": pixels[..., None], "label": label, "patient_id": patient, "image_id": image_id})]


class FetalCardiacPlanes(BeamOrLocalBuilder):
    """Labelled fetal cardiac plane images (5 classes by default), split by patient."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "Pixels de-identified (deidentify_pixels); colour-Doppler images left out (doppler); a DICOM gives "
        "every frame of every image region; DICOM read through its palette, modality and VOI LUTs and signed values; "
        "an image listed twice, a non-UTF-8 table and an emptied split are one-line errors.",
    }
    BUILDER_CONFIGS = [
        FetalCardiacPlanesConfig(name="csv",
                                 description="Images listed in labels.csv (image_name, class[, patient_id])."),
        FetalCardiacPlanesConfig(name="folders", layout="folders", description="Images in class sub-folders."),
        FetalCardiacPlanesConfig(name="synthetic", synthetic=True, image_size=64,
                                 description="The embedded generated labelled set (60 patients x 20 images, 64 px)."),
    ]  # fmt: skip
    DEFAULT_CONFIG_NAME = "synthetic"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Put the labelled images (PNG/JPEG/BMP/TIFF, .npy or DICOM) in a folder with labels.csv (columns image_name,
    class, optional patient_id) for --config csv, or in one sub-folder per class for --config folders.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        if c.layout not in ("csv", "folders"):
            raise ValueError(f"fetal_cardiac_planes config {c.name!r}: layout must be 'csv' or 'folders'")
        for key, allowed in (("fit", readers.FITS), ("doppler", readers.DOPPLER), ("deidentify_pixels", (True, False))):
            if getattr(c, key) not in allowed or not isinstance(getattr(c, key), type(allowed[0])):
                raise ValueError(
                    f"fetal_cardiac_planes config {c.name!r}: {key} must be one of {allowed}, got {getattr(c, key)!r}"
                )
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(
                        shape=(c.image_size, c.image_size, 1), dtype=np.uint8, encoding_format="png"
                    ),
                    "label": tfds.features.ClassLabel(names=list(c.classes)),
                    "patient_id": tfds.features.Text(),
                    "image_id": tfds.features.Text(),
                }
            ),  # fmt: skip
            supervised_keys=("image", "label"),
            metadata=tfds.core.MetadataDict(image_size=c.image_size, classes=list(c.classes)),
            homepage="https://github.com/fetalssl/fetalssl_jax",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        c = self.builder_config
        if c.synthetic:
            return self._synthetic_splits(c)
        root = pathlib.Path(dl_manager.manual_dir)
        salt = readers.id_salt(root)
        problems: list[str] = []
        if c.layout == "csv":
            if not (root / c.csv_name).is_file():
                raise readers.DataError(f"{c.csv_name} not found in {root} (config 'csv'; use 'folders' for "
                                        "class sub-folders)")  # fmt: skip
            images, problems = readers.read_label_csv(root, c.csv_name, c.classes, c.aliases, c.on_error)
        else:
            images = readers.list_class_folders(root, c.classes, c.aliases)
        for p in problems:
            log.warning("skipped row: %s", p)
        self.info.metadata["skipped_rows"] = len(problems)
        has_patients = all(im.patient for im in images)
        if not has_patients:
            log.warning("no patient_id for every image: splitting image by image, so one patient's images can be "
                        "in two splits; add a patient_id column to split by patient")  # fmt: skip
        items = [
            (im, readers.salted_hash(im.relpath, salt), readers.salted_hash(im.patient, salt) if im.patient else "")
            for im in images
        ]
        groups = [patient if has_patients else image_id for _, image_id, patient in items]
        split = readers.split_groups(groups, dict(zip(SPLITS, c.split_fractions, strict=True)), c.split_seed)
        make = functools.partial(_image_records, root=str(root), c=c)
        return {
            s: self._generate_examples([it for it, g in zip(items, groups, strict=True) if split[g] == s],
                                       SkippingExamples(make, c.on_error, "images", ("doppler_images",)), s)
            for s in SPLITS
            if any(v == s for v in split.values())
        }  # fmt: skip

    def _synthetic_splits(self, c: FetalCardiacPlanesConfig):
        sets = synthetic.generate_labelled_frames(
            c.synthetic_patients, c.synthetic_frames_per_patient, c.image_size, seed=0
        )  # already split by patient
        result = {}
        for name, split in zip(SPLITS, ("train", "valid", "test"), strict=True):
            s = sets[split]
            items = [
                (s.images[i], int(s.labels[i]), readers.salted_hash(str(s.patient_ids[i]), "synthetic"),
                 readers.salted_hash(f"{split}/{i}", "synthetic"))
                for i in range(len(s.images))
            ]  # fmt: skip
            result[name] = self._generate_examples(
                items, SkippingExamples(_synthetic_record, c.on_error, "images"), name
            )
        return result

    def _generate_examples(self, items, examples: SkippingExamples, split: str):
        return self._emit(items, examples, split)
