"""Label-budget selection against brute force and hand-worked cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from fetalssl_jax.apply import selection
from fetalssl_jax.apply.selection import (
    STRATEGIES,
    covering_radius,
    k_center_greedy,
    patient_rows,
    random_rows,
    random_selection,
    typical_clusters,
)


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _radius(x, chosen, normalize=True):
    """Covering radius by the full distance matrix (scipy), independent of the module."""
    x = _unit(x) if normalize else x
    return cdist(x, x[chosen]).min(1).max()


def _optimal_radius(x, k, normalize=True):
    """The smallest covering radius of any k rows: every subset tried."""
    x = _unit(x) if normalize else x
    d = cdist(x, x)
    return min(d[:, list(subset)].min(1).max() for subset in itertools.combinations(range(len(x)), k))


def _circle(degrees):
    a = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(a), np.sin(a)], 1)


def _clusters(sizes, dim=16, spread=0.02, seed=0):
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(len(sizes), dim)))
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return centres[labels] + spread * rng.normal(size=(len(labels), dim)), labels


def test_covering_radius_matches_brute_force_also_in_small_blocks(monkeypatch):
    x = np.random.default_rng(0).normal(size=(50, 6))
    chosen = np.array([3, 17, 41, 8, 22])
    assert covering_radius(x, chosen) == pytest.approx(_radius(x, chosen), abs=1e-9)
    assert covering_radius(x, chosen, normalize=False) == pytest.approx(_radius(x, chosen, False), abs=1e-9)
    monkeypatch.setattr(selection, "BLOCK", 7)
    monkeypatch.setattr(selection, "CENTRES_PER_BLOCK", 2)
    assert covering_radius(x, chosen) == pytest.approx(_radius(x, chosen), abs=1e-9)
    picked = k_center_greedy(x, 4, labelled=[0, 1, 2, 5, 9])  # the labelled start goes through the blocks too
    monkeypatch.undo()
    np.testing.assert_array_equal(picked, k_center_greedy(x, 4, labelled=[0, 1, 2, 5, 9]))


@pytest.mark.parametrize("normalize", [True, False])
def test_k_center_greedy_is_within_twice_the_brute_force_optimum(normalize):
    for case in range(12):
        rng = np.random.default_rng(case)
        x = rng.normal(size=(10, 3)) + 3 * rng.integers(0, 2, size=(10, 3))
        for k in (2, 3, 4):
            best = _optimal_radius(x, k, normalize)
            for seed in range(3):
                chosen = k_center_greedy(x, k, seed=seed, normalize=normalize)
                assert len(set(chosen.tolist())) == k
                assert _radius(x, chosen, normalize) <= 2 * best + 1e-9
            # With groups, each pick is a (1 - tolerance)-approximate farthest point: the bound is 2 / (1 - tol).
            groups = rng.integers(0, 3, 10)
            chosen = k_center_greedy(x, k, groups=groups, group_tolerance=0.3, normalize=normalize)
            assert _radius(x, chosen, normalize) <= 2 / 0.7 * best + 1e-9


def test_k_center_greedy_is_farthest_first_traversal():
    """Without groups and tolerance: each pick is the row farthest from all centres so far (naive loop)."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5))
    z = _unit(x)
    centres = [7]
    for _ in range(6):
        centres.append(int(np.argmax(cdist(z, z[centres]).min(1))))
    np.testing.assert_array_equal(k_center_greedy(x, 6, labelled=[7], group_tolerance=0.0), centres[1:])


def test_k_center_greedy_covers_clustered_data_better_than_random():
    x, labels = _clusters([300, 100, 50, 30, 20])
    random_radii = [_radius(x, random_selection(len(x), 5, seed)) for seed in range(50)]
    for seed in range(5):
        chosen = k_center_greedy(x, 5, seed=seed)
        assert sorted(labels[chosen]) == [0, 1, 2, 3, 4]  # one frame of every cluster, however small
        assert _radius(x, chosen) < 0.5 * np.mean(random_radii)


def test_min_gap_hand_worked():
    # One video, frames 0..5; frame 0 is labelled. Unconstrained, frame 1 (180 deg) is the farthest.
    x = _circle([0, 180, 175, 90, 270, 200])
    assert k_center_greedy(x, 1, labelled=[0], group_tolerance=0.0)[0] == 1
    # min_gap=1: frame 1 is next to frame 0, so frame 2 (175 deg) goes; it excludes frame 3; then frame 4 (270 deg,
    # sqrt(2) from frame 0) beats frame 5 (200 deg, 0.43 from frame 2).
    chosen = k_center_greedy(x, 2, positions=np.arange(6), min_gap=1, labelled=[0], group_tolerance=0.0)
    np.testing.assert_array_equal(chosen, [2, 4])
    # Frames 2..5 are left; no 3 of them are 2 frames apart.
    with pytest.raises(ValueError, match=r"budget 3 is more than the 2 frames .*1 already labelled.*min_gap=1"):
        k_center_greedy(x, 3, positions=np.arange(6), min_gap=1, labelled=[0])


def test_min_gap_respected_within_groups_only():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 8))
    groups = np.repeat([10, 20, 30], 40)
    positions = np.tile(np.arange(40), 3)
    for seed in range(4):
        rules = dict(groups=groups, positions=positions, min_gap=3)
        for chosen in [strategy(x, 20, seed=seed, **rules) for strategy in STRATEGIES.values()] + [
            random_selection(120, 20, seed, **rules)
        ]:
            assert len(set(chosen.tolist())) == 20
            for a, b in itertools.combinations(chosen, 2):
                assert groups[a] != groups[b] or abs(positions[a] - positions[b]) > 3


def test_selection_runs_out_when_min_gap_excludes_the_rest():
    # Frames 0..4 of one video, frame 0 labelled: 2..4 are eligible and frames 2 and 4 could both be chosen, but
    # k-center takes frame 3 (the farthest), which excludes both.
    x = _circle([0, 10, 20, 180, 30])
    with pytest.raises(ValueError, match="no eligible frame left after 1 of budget 2"):
        k_center_greedy(x, 2, positions=np.arange(5), min_gap=1, labelled=[0])


def test_random_selection_runs_out_or_keeps_the_gap():
    # Frames 0, 1, 2 of one video with min_gap=1: {0, 2} is the only pair; a draw that starts with frame 1 is stuck.
    outcomes = set()
    for seed in range(20):
        try:
            outcomes.add(tuple(sorted(random_selection(3, 2, seed, positions=np.arange(3), min_gap=1))))
        except ValueError as error:
            assert "no eligible frame left after 1 of budget 2" in str(error)
            outcomes.add("ran out")
    assert outcomes == {(0, 2), "ran out"}


def test_spread_over_groups_hand_worked():
    # Row 0 (group A, 0 deg) is labelled. Row 1 (A, 180 deg) is the farthest (2.0), row 2 (B, 170 deg) nearly as
    # far (1.992): within the 10 % tolerance B, with no pick yet, wins; then row 3 (B, 60 deg, distance 1.0 from
    # row 0) is the farthest by far (row 1 is 0.17 from row 2).
    x = _circle([0, 180, 170, 60])
    groups = np.array(["A", "A", "B", "B"])
    np.testing.assert_array_equal(k_center_greedy(x, 2, groups=groups, labelled=[0]), [2, 3])
    np.testing.assert_array_equal(k_center_greedy(x, 2, groups=groups, labelled=[0], group_tolerance=0.0), [1, 3])
    # Rows 1 and 2 in one group: among the nearly-as-far, the farthest wins.
    np.testing.assert_array_equal(k_center_greedy(x, 2, groups=np.array(["A", "B", "B", "B"]), labelled=[0]), [1, 3])


def test_spread_over_patients_with_the_same_frames():
    # Three patients show the same three frames (0, 120, 240 deg): three picks take each angle from another patient.
    x = np.tile(_circle([0, 120, 240]), (3, 1))
    patients = np.repeat(["p0", "p1", "p2"], 3)
    for seed in range(10):
        chosen = k_center_greedy(x, 3, groups=patients, seed=seed)
        assert sorted(patients[chosen]) == ["p0", "p1", "p2"]
        assert sorted(chosen % 3) == [0, 1, 2]


def test_deterministic_for_a_seed():
    x = np.random.default_rng(1).normal(size=(200, 16)).astype(np.float32)
    groups, positions = np.repeat(np.arange(10), 20), np.tile(np.arange(20), 10)
    kwargs = dict(groups=groups, positions=positions, min_gap=2)
    runs = {seed: k_center_greedy(x, 15, seed=seed, **kwargs) for seed in range(5)}
    for seed, chosen in runs.items():
        np.testing.assert_array_equal(k_center_greedy(x, 15, seed=seed, **kwargs), chosen)
        typical = typical_clusters(x, 15, seed=seed, **kwargs)
        np.testing.assert_array_equal(typical_clusters(x.copy(), 15, seed=seed, **kwargs), typical)
        again = random_selection(200, 15, seed, **kwargs)
        np.testing.assert_array_equal(random_selection(200, 15, seed, **kwargs), again)
    assert len({tuple(c) for c in runs.values()}) > 1  # the seed draws the first centre
    assert len({tuple(random_selection(200, 15, s)) for s in range(5)}) == 5


def test_random_selection_is_uniform():
    counts = np.bincount(np.concatenate([random_selection(10, 3, seed) for seed in range(3000)]), minlength=10)
    assert np.all(np.abs(counts / 3000 - 0.3) < 0.04)  # each row with probability 3/10 (binomial sd 0.008)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda x: k_center_greedy(x, 0), "budget must be at least 1 frame, got 0"),
        (lambda x: k_center_greedy(x, 11), r"budget 11 is more than the 10 frames .*10 rows\)"),
        (lambda x: k_center_greedy(x[None], 2), r"embeddings must be 2-D \[rows, features\], got shape \(1, 10, 3\)"),
        (lambda x: k_center_greedy(np.where(np.arange(10)[:, None] == 4, np.nan, x), 2), r"1 rows with NaN.*rows 4\)"),
        (lambda x: k_center_greedy(np.where(np.arange(10)[:, None] == 7, np.inf, x), 2), r"NaN or inf.*rows 7\)"),
        (lambda x: k_center_greedy(x, 2, groups=np.zeros(9)), "groups has 9 entries but embeddings has 10 rows"),
        (lambda x: k_center_greedy(x, 2, positions=np.zeros(11), min_gap=1), "positions has 11 entries"),
        (lambda x: k_center_greedy(x, 2, min_gap=2), "min_gap=2 needs positions"),
        (lambda x: k_center_greedy(x, 2, positions=np.arange(10), min_gap=-1), "min_gap must be >= 0"),
        (lambda x: k_center_greedy(x, 2, group_tolerance=1.0), r"group_tolerance must be in \[0, 1\)"),
        (lambda x: k_center_greedy(x, 2, labelled=[10]), r"labelled rows must be in \[0, 10\)"),
        (
            lambda x: k_center_greedy(x, 5, positions=np.arange(10), min_gap=2),
            r"budget 5 is more than the 4 frames .*min_gap=2 of a chosen frame",  # frames 0, 3, 6, 9
        ),
        (lambda x: random_selection(10, 11, 0), r"budget 11 is more than the 10 frames"),
        (lambda x: random_selection(10, 0, 0), "budget must be at least 1"),
        (lambda x: random_selection(10, 2, 0, groups=np.zeros(3)), "groups has 3 entries"),
        (
            lambda x: random_selection(10, 5, 0, groups=np.zeros(10), positions=np.arange(10), min_gap=2),
            "budget 5 is more than the 4 frames",
        ),
        (lambda x: typical_clusters(x, 0), "budget must be at least 1 frame, got 0"),
        (lambda x: typical_clusters(x, 11), r"budget 11 is more than the 10 frames .*10 rows\)"),
        (lambda x: typical_clusters(x, 10, labelled=[3]), r"budget 10 is more than the 9 frames .*1 already labelled"),
        (lambda x: typical_clusters(x[None], 2), r"embeddings must be 2-D"),
        (lambda x: typical_clusters(np.where(np.arange(10)[:, None] == 4, np.nan, x), 2), r"NaN or inf.*rows 4\)"),
        (lambda x: typical_clusters(x, 2, groups=np.zeros(9)), "groups has 9 entries but embeddings has 10 rows"),
        (lambda x: typical_clusters(x, 2, min_gap=2), "min_gap=2 needs positions"),
        (lambda x: typical_clusters(x, 2, positions=np.arange(10), min_gap=-1), "min_gap must be >= 0"),
        (lambda x: typical_clusters(x, 2, neighbours=0), "neighbours must be at least 1, got 0"),
        (lambda x: typical_clusters(x, 2, group_tolerance=-0.1), r"group_tolerance must be in \[0, 1\)"),
        (lambda x: typical_clusters(x, 2, labelled=[-1]), r"labelled rows must be in \[0, 10\)"),
        (
            lambda x: typical_clusters(x, 5, positions=np.arange(10), min_gap=2),
            r"budget 5 is more than the 4 frames .*min_gap=2 of a chosen frame",
        ),
        (lambda x: random_rows(x, 11), r"budget 11 is more than the 10 frames"),
        (lambda x: random_rows(x[None], 2), r"embeddings must be 2-D"),
        (lambda x: covering_radius(x, []), "at least one chosen row"),
        (lambda x: covering_radius(x, [10]), r"chosen rows must be in \[0, 10\)"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    x = np.random.default_rng(0).normal(size=(10, 3))
    with pytest.raises(ValueError, match=message):
        call(x)


def _densest(x, rows, k):
    """Brute force: the row of `rows` with the smallest mean distance to its k nearest other rows of `rows`."""
    z = _unit(x[rows])
    d = np.sort(cdist(z, z), axis=1)[:, 1 : min(k, len(rows) - 1) + 1]  # column 0: the row itself
    return rows[np.argmin(d.mean(1))]


def _grid_blobs(sizes, seed=0):
    """Well-separated blobs (rows shuffled), each a 5 x 5 grid of spacing 0.01 and a sparse tail of the other rows
    from 0.2 to 1.5 away along one direction. The grid's middle row is the densest by hand: its 20 nearest
    neighbours are 4 at 1, 4 at sqrt 2, 4 at 2 and 8 at sqrt 5 spacings; the next grid row's 12 nearest are 1.3 %
    farther than its 12 (one at sqrt 5 instead of 2). The tail pulls the centroid off the grid."""
    rng = np.random.default_rng(seed)
    grid = np.zeros((25, 8))
    grid[:, 6:] = 0.01 * np.stack(np.meshgrid(np.arange(-2, 3), np.arange(-2, 3)), -1).reshape(25, 2)
    parts, labels, middles = [], [], []
    for b, size in enumerate(sizes):
        centre, direction = 3 * np.eye(8)[b], np.eye(8)[b + 3]
        tail = np.linspace(0.2, 1.5, size - 25)[:, None] * direction + 0.05 * rng.normal(size=(size - 25, 8))
        middles.append(sum(sizes[:b]) + len(tail) + 12)  # grid row 12 is (0, 0)
        parts += [centre + tail, centre + grid]
        labels += [b] * size
    order = rng.permutation(sum(sizes))
    return np.concatenate(parts)[order], np.asarray(labels)[order], np.argsort(order)[middles]


@pytest.mark.parametrize("neighbours", [20, 12])
@pytest.mark.parametrize("minibatch", [False, True])
def test_typical_clusters_takes_the_densest_row_of_each_blob_largest_first(neighbours, minibatch, monkeypatch):
    if minibatch:
        monkeypatch.setattr(selection, "KMEANS_ROWS", 50)
    x, labels, middles = _grid_blobs([80, 55, 35])
    blobs = [np.flatnonzero(labels == b) for b in range(3)]
    expected = [_densest(x, rows, neighbours) for rows in blobs]
    np.testing.assert_array_equal(expected, middles)  # brute force agrees with the hand-worked grid middles
    z = _unit(x)
    nearest_centroid = [rows[np.argmin(cdist(z[rows], z[rows].mean(0, keepdims=True))[:, 0])] for rows in blobs]
    assert not set(expected) & set(nearest_centroid)  # the case tells typicality from the centroid rule
    for seed in range(3):
        np.testing.assert_array_equal(typical_clusters(x, 3, seed=seed, neighbours=neighbours), expected)
    # The largest blob labelled already: its cluster is covered, the other two get the picks.
    np.testing.assert_array_equal(typical_clusters(x, 2, labelled=[blobs[0][0]], neighbours=neighbours), expected[1:])


def test_typical_clusters_skips_frames_near_a_chosen_one():
    # One video. Frames 0..8 around 0 deg (frame 8 at the median angle: the most typical), frames 9..15 around
    # 120 deg (frame 9 at 120: summed distances 27 deg; frame 12 at 118: 29; frame 13 at 123: 30).
    x = _circle([-8, -6, -4, -2, 2, 4, 6, 8, 0, 120, 114, 116, 118, 123, 125, 127])
    np.testing.assert_array_equal(typical_clusters(x, 2), [8, 9])
    # min_gap=1: frame 9 is next to frame 8, so the most typical eligible frame of the second cluster is frame 12.
    np.testing.assert_array_equal(typical_clusters(x, 2, positions=np.arange(16), min_gap=1), [8, 12])


def test_typical_clusters_spreads_near_ties_over_groups():
    # Row 0 (group A, 180 deg) is labelled: its cluster is covered. In the other cluster row 1 (A, 0 deg) is the most
    # typical (31 deg summed to the others) and row 2 (B, 2 deg: 33) within 10 % of it: B, with no pick yet, wins;
    # without tolerance row 1 does.
    x = _circle([180, 0, 2, -9, -5, 4, 8, -3])
    groups = np.array(list("AABAAAAA"))
    z = _unit(x)[1:]
    mean_distance = np.sort(cdist(z, z), 1)[:, 1:].mean(1)  # all 6 others (fewer than 20)
    assert np.argmin(mean_distance) == 0 and mean_distance[1] <= mean_distance[0] / 0.9
    np.testing.assert_array_equal(typical_clusters(x, 1, groups=groups, labelled=[0]), [2])
    np.testing.assert_array_equal(typical_clusters(x, 1, groups=groups, labelled=[0], group_tolerance=0.0), [1])
    # Three patients show the same three frames: one frame of each angle from each patient (exact ties).
    x = np.tile(_circle([0, 120, 240]), (3, 1))
    patients = np.repeat(["p0", "p1", "p2"], 3)
    chosen = typical_clusters(x, 3, groups=patients)
    assert sorted(patients[chosen]) == ["p0", "p1", "p2"]
    assert sorted(chosen % 3) == [0, 1, 2]


def test_strategies_share_one_signature():
    x = np.random.default_rng(2).normal(size=(60, 4))
    groups, positions = np.repeat(np.arange(3), 20), np.tile(np.arange(20), 3)
    for name, strategy in STRATEGIES.items():
        chosen = strategy(x, 7, groups=groups, positions=positions, min_gap=1, seed=3)
        assert chosen.dtype == np.int64 and len(set(chosen.tolist())) == 7, name
    np.testing.assert_array_equal(random_rows(x, 7, seed=3), random_selection(60, 7, 3))
    assert selection.DEFAULT_STRATEGY in STRATEGIES


def test_patient_rows_group_by_patient_and_keep_videos_apart():
    # two videos of patient A (frames 0, 2, 4) and one of B: groups are patients; positions keep each video's
    # frame numbers and lay the videos more than min_gap apart (hand-worked: span = 4 + 4 + 1 = 9)
    source = np.array(["a1", "a1", "a1", "a2", "a2", "a2", "b1", "b1", "b1"])
    frames = np.array([0, 2, 4] * 3)
    groups, positions = patient_rows(source, frames, {"a1": "A", "a2": "A", "b1": "B"}, min_gap=4)
    assert groups.tolist() == ["A"] * 6 + ["B"] * 3
    assert positions.tolist() == [0, 2, 4, 9, 11, 13, 18, 20, 22]
    # with min_gap 4, one frame of each video can be chosen, and only so: a1's frame 4 leaves a2's frame 0
    for seed in range(5):
        chosen = random_selection(9, 3, seed, groups=groups, positions=positions, min_gap=4)
        assert sorted(source[chosen].tolist()) == ["a1", "a2", "b1"]
    with pytest.raises(ValueError, match=r"patients names no patient for 1 source id\(s\), e.g. 'b1'"):
        patient_rows(source, frames, {"a1": "A", "a2": "A"}, min_gap=4)
