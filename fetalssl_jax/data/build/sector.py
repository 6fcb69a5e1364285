"""Where the ultrasound image is in a frame, and what is not image: the content box (`fit='crop_pad'`), the scan
sector (the fan) outside which everything is blanked to de-identify the pixels, and colour-Doppler overlays.

Scanners and screen captures print the institution, the patient's name, dates and ids as text around the image
(the header band). Text, calipers' labels and logos are thin strokes in small regions; the scan is one large solid
region (or a few, split by dark fluid). Both the box and the sector are found from the bright connected regions of
a gray image (for a video: its maximum over frames, so every frame gets the same one).
"""

from __future__ import annotations

import numpy as np

# A pixel brighter than this (of 255) is image content; compressed black bands of screen captures stay below it.
CONTENT_THRESHOLD = 8
# Colour Doppler: pixels whose chroma (max - min of R, G, B) exceeds this, in solid patches covering this fraction
# of the scan. Gray scans decoded from YBR JPEG stay far below the chroma; calipers and coloured text are thin.
CHROMA_THRESHOLD = 48
DOPPLER_FRACTION = 0.01
# The scan sector: regions whose solid part is at least this share of the largest one's (logos and text, even blurred
# into blobs by heavy compression, stay far below); burned-in marks: this bright, in this many pixels of one region.
SOLID_SHARE = 0.2
MARK_LEVEL = 64
MARK_PIXELS = 12
_SQUARE = np.ones((3, 3), bool)


def _regions(mask: np.ndarray, join: int) -> np.ndarray:
    """Labels of the connected regions of `mask` after joining pixels up to 2 * `join` apart (8-connected)."""
    from scipy import ndimage

    joined = ndimage.binary_dilation(mask, iterations=join) if join else mask
    return ndimage.label(joined, structure=_SQUARE)[0]


def _large(labels: np.ndarray, weights: np.ndarray, share: float) -> np.ndarray:
    """Labels of the regions whose weight (pixel count of `weights` in them) is at least `share` of the largest's."""
    areas = np.bincount(labels[weights], minlength=labels.max() + 1)[1:]
    if not areas.size or areas.max() == 0:
        return np.zeros(0, int)
    return np.flatnonzero(areas >= share * areas.max()) + 1


def content_box(image: np.ndarray, threshold: int = CONTENT_THRESHOLD) -> tuple[int, int, int, int]:
    """(top, bottom, left, right), bottom/right exclusive: the bounding box of the image's content in a gray
    uint8 [H, W] image (for a video: its maximum over frames, so every frame gets the same box).

    Content is the pixels above `threshold` in the large connected regions: the scan sector. Small regions (text,
    calipers, logos in the black bands of a screen capture) are ignored: a region counts when its area, after
    joining pixels two apart, is at least a fifth of the largest one's. An image without content, or whose
    content covers less than 5 % of it, gets the whole image.
    """
    h, w = image.shape
    mask = image > threshold
    # Speckle and dark chambers break the sector into pieces: join pixels two apart before labelling.
    labels = _regions(mask, 2)
    keep = _large(labels, labels > 0, 0.2)
    if not keep.size:
        return 0, h, 0, w
    rows, cols = np.nonzero(mask & np.isin(labels, keep))
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    if (bottom - top) * (right - left) < 0.05 * h * w:
        return 0, h, 0, w
    return int(top), int(bottom), int(left), int(right)


def scan_sector(image: np.ndarray, floor: np.ndarray | None = None) -> np.ndarray:
    """bool [H, W]: the scan sector of a gray uint8 image [H, W] (for a video: its maximum over frames, and `floor`
    its minimum; a single image is its own floor).

    Pixels brighter than CONTENT_THRESHOLD, joined one pixel apart, form regions; the scan is the regions whose
    solid part (what survives an opening by a 3 x 3 square: text strokes, calipers and specks vanish in it) is at
    least SOLID_SHARE of the largest one's, and the sector is the convex hull of their pixels (dark chambers and
    fluid inside it included). Text more than two pixels from the scan stays outside.

    Where the image's corners are clean black (a DICOM, a PNG export, a generated scan; not a noisy compressed
    capture), the same is done with every pixel above 0, so that dim fluid at the sector's edge stays in it, unless
    that takes in a mark (`_marks`: burned-in text that compression noise bridged to the scan). An image without
    any bright pixel is all sector (nothing to blank); one whose bright pixels are all thin strokes has none.
    """
    found = _sector(image, CONTENT_THRESHOLD)
    if not _clean_corners(image):
        return found
    wider = _sector(image, 0)
    return found if (wider & _marks(image, image if floor is None else floor, ~found)).any() else wider


def _clean_corners(image: np.ndarray) -> bool:
    """Whether the dark pixels of the image's four corner squares (8 % of its side) are exactly 0 (1 % may not)."""
    k = max(2, round(0.08 * min(image.shape)))
    corners = np.concatenate([image[:k, :k], image[:k, -k:], image[-k:, :k], image[-k:, -k:]], axis=None)
    dark = corners[corners <= CONTENT_THRESHOLD]
    return dark.size >= 0.5 * corners.size and np.count_nonzero(dark) <= 0.01 * dark.size


def _marks(peak: np.ndarray, floor: np.ndarray, outside: np.ndarray) -> np.ndarray:
    """bool [H, W]: the pixels of `outside` that are at least MARK_LEVEL and change by at most CONTENT_THRESHOLD
    over the frames (`floor` to `peak`), in regions (as `_sector`'s) holding at least MARK_PIXELS of them: text and
    marks burned into every frame. Speckle changes from frame to frame; in a single image every bright region is
    one."""
    marks = outside & (floor >= MARK_LEVEL) & (peak.astype(np.int16) - floor <= CONTENT_THRESHOLD)
    if not marks.any():
        return marks
    labels = _regions(peak > CONTENT_THRESHOLD, 1)
    counts = np.bincount(labels[marks], minlength=labels.max() + 1)
    return marks & (labels > 0) & (counts[labels] >= MARK_PIXELS)


def _sector(image: np.ndarray, threshold: int) -> np.ndarray:
    from scipy import ndimage

    mask = image > threshold
    if not mask.any():
        return np.ones(image.shape, bool)
    labels = _regions(mask, 1)
    keep = _large(labels, ndimage.binary_opening(mask, _SQUARE), SOLID_SHARE)
    if not keep.size:
        return np.zeros(image.shape, bool)
    return convex_hull_mask(np.argwhere(mask & np.isin(labels, keep)), image.shape)


def convex_hull_mask(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool `shape`: the pixels (row, col) inside or on the convex hull of `points` [N, 2] (scipy's Qhull); the
    bounding box of points that span no area (a line)."""
    from scipy.spatial import ConvexHull, QhullError

    out = np.zeros(shape, bool)
    (top, left), (bottom, right) = points.min(0), points.max(0) + 1
    try:
        equations = ConvexHull(points.astype(np.float64)).equations  # rows: a * row + b * col + c <= 0 inside
    except (QhullError, ValueError):
        out[top:bottom, left:right] = True
        return out
    rows, cols = np.mgrid[top:bottom, left:right]
    inside = np.ones(rows.shape, bool)
    for a, b, c in equations:
        inside &= a * rows + b * cols + c <= 1e-9
    out[top:bottom, left:right] = inside
    return out


def box_mask(shape: tuple[int, int], boxes) -> np.ndarray:
    """bool `shape`: the union of (top, bottom, left, right) boxes."""
    out = np.zeros(shape, bool)
    for top, bottom, left, right in boxes:
        out[top:bottom, left:right] = True
    return out


def blank_outside(frames: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """`frames` [T, H, W(, C)] with every pixel outside the bool [H, W] `keep` set to 0 (all channels)."""
    if keep.all():
        return frames
    keep = keep if frames.ndim == 3 else keep[..., None]
    return np.where(keep, frames, np.zeros((), frames.dtype))


def deidentify(frames: np.ndarray) -> np.ndarray:
    """`frames` uint8 [T, H, W(, C)] blanked outside the scan sector of their maximum over frames (and channels),
    with their minimum as its floor (`scan_sector`)."""
    gray = frames if frames.ndim == 3 else frames.max(axis=-1)
    return blank_outside(frames, scan_sector(gray.max(axis=0), gray.min(axis=0)))


def colour_doppler(frames: np.ndarray) -> np.ndarray:
    """bool [T]: the frames of uint8 [T, H, W(, C)] with a colour-Doppler overlay: solid patches (a 3 x 3
    opening) of coloured pixels (chroma > CHROMA_THRESHOLD) covering at least DOPPLER_FRACTION of the scan (the
    pixels not black in every frame). Gray frames have none."""
    from scipy import ndimage

    out = np.zeros(len(frames), bool)
    if frames.ndim == 3 or frames.shape[-1] < 3:
        return out
    rgb = frames[..., :3]
    scan = max(1, int(np.count_nonzero(rgb.max(axis=(0, -1)))))
    for t, frame in enumerate(rgb):
        coloured = frame.max(axis=-1) - frame.min(axis=-1) > CHROMA_THRESHOLD  # uint8: max >= min, no wrap
        if coloured.sum() >= DOPPLER_FRACTION * scan:  # cheap test first: the opening only shrinks the count
            out[t] = ndimage.binary_opening(coloured, _SQUARE).sum() >= DOPPLER_FRACTION * scan
    return out
