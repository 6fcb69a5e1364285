"""patchify / unpatchify against hand-indexed patches (MAE's layout)."""

import numpy as np
import pytest

from fetalssl_jax.models.patches import patchify, unpatchify


def test_patchify_layout_and_inverse():
    images = np.random.default_rng(5).normal(size=(2, 12, 8, 3))
    patches = np.asarray(patchify(images, 4))
    assert patches.shape == (2, 6, 48)
    for i in range(3):  # patch (row i, column j) is patch index i * 2 + j, flattened (row, column, channel)
        for j in range(2):
            np.testing.assert_array_equal(
                patches[1, i * 2 + j], images[1, 4 * i : 4 * i + 4, 4 * j : 4 * j + 4].ravel()
            )
    np.testing.assert_array_equal(np.asarray(unpatchify(patches, 4, (3, 2))), images)
    square = np.asarray(patchify(images[:, :8], 4))
    np.testing.assert_array_equal(np.asarray(unpatchify(square, 4)), images[:, :8])
    with pytest.raises(ValueError, match="not a multiple of the patch size 5"):
        patchify(images, 5)
