"""Label-budget selection: which N frames of an unlabelled corpus to label.

`STRATEGIES` maps a name to a strategy with one signature (embeddings, budget, *, groups, positions, min_gap, seed)
that returns row indices in order of choice: "typical" (`typical_clusters`, TypiClust; `DEFAULT_STRATEGY`),
"k-center" (`k_center_greedy`, the core set) and "random" (`random_rows`, the baseline). All share the eligibility
rules: no frame within `min_gap` frames of a chosen frame of the same group, picks spread over groups, frames already
`labelled` never returned. Deterministic for a seed. Why these choices: docs/design.md, "Label-budget selection".
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping

import numpy as np
from sklearn.cluster import KMeans, MiniBatchKMeans
from sklearn.neighbors import NearestNeighbors

BLOCK = 1 << 22  # floats per block of a rows x centres distance matrix: no N x N matrix for any N
CENTRES_PER_BLOCK = 4096
KMEANS_ROWS = 20_000  # above this many rows MiniBatchKMeans (docs/design.md, "Label-budget selection")
KMEANS_INITS = 3  # seeded k-means++ starts, the lowest inertia kept


def _points(embeddings: np.ndarray, normalize: bool) -> np.ndarray:
    """Validated embeddings as floats, L2-normalised if asked (an all-zero row stays zero)."""
    x = np.asarray(embeddings)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be 2-D [rows, features], got shape {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise ValueError(f"embeddings must be real numbers, got dtype {x.dtype}")
    x = x.astype(np.result_type(x.dtype, np.float32), copy=False)
    bad = np.flatnonzero(~np.isfinite(x).all(1))
    if len(bad):
        shown = ", ".join(map(str, bad[:10])) + (", ..." if len(bad) > 10 else "")
        raise ValueError(f"embeddings has {len(bad)} rows with NaN or inf values (rows {shown})")
    if normalize:
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return x


def _distances(x: np.ndarray, sq_norms: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """L2 distances [rows, centres] from the expansion |a|^2 - 2 a.b + |b|^2 (clipped at 0 against rounding)."""
    d2 = sq_norms[:, None] - 2.0 * (x @ centres.T) + np.einsum("ij,ij->i", centres, centres)[None, :]
    return np.sqrt(np.maximum(d2, 0.0))


def _nearest(x: np.ndarray, sq_norms: np.ndarray, centres: np.ndarray) -> np.ndarray:
    """Distance of every row of `x` to its nearest centre, in blocks of at most BLOCK distances."""
    out = np.full(len(x), np.inf, dtype=x.dtype)
    for c in range(0, len(centres), CENTRES_PER_BLOCK):
        block = centres[c : c + CENTRES_PER_BLOCK]
        rows = max(1, BLOCK // len(block))
        for lo in range(0, len(x), rows):
            d = _distances(x[lo : lo + rows], sq_norms[lo : lo + rows], block).min(1)
            out[lo : lo + rows] = np.minimum(out[lo : lo + rows], d)
    return out


def _start(embeddings, budget, groups, positions, min_gap, group_tolerance, labelled, normalize):
    """What k-center and typical frames start from: (points, eligibility rules with the labelled rows taken, those
    rows, the validated budget)."""
    x = _points(embeddings, normalize)
    if not 0 <= group_tolerance < 1:
        raise ValueError(f"group_tolerance must be in [0, 1), got {group_tolerance}")
    rules = _Eligibility(len(x), groups, positions, min_gap)
    start = rules.take_labelled(labelled)
    return x, rules, start, rules.check_budget(budget, len(x), len(start))


def patient_rows(
    source_ids: np.ndarray, frame_index: np.ndarray, patients: Mapping[str, str], min_gap: int
) -> tuple[np.ndarray, np.ndarray]:
    """`groups` and `positions` that spread picks over patients while `min_gap` keeps acting within each video:
    the group of a row is its video's patient, and the videos of a patient are laid end to end on the position
    axis, more than `min_gap` apart, so frames of two videos are never each other's neighbours."""
    source_ids = np.asarray(source_ids)
    missing = sorted(set(source_ids.tolist()) - set(patients))
    if missing:
        raise ValueError(f"patients names no patient for {len(missing)} source id(s), e.g. {missing[0]!r}")
    groups = np.array([patients[s] for s in source_ids.tolist()])
    frame_index = np.asarray(frame_index, np.int64)
    _, video = np.unique(source_ids, return_inverse=True)
    span = int(frame_index.max(initial=0)) + int(min_gap) + 1
    return groups, video.reshape(-1) * span + frame_index


class _Eligibility:
    """Which rows may still be chosen: not chosen yet, and not within `min_gap` frames of a chosen frame of the
    same group. Also counts the picks of each group."""

    def __init__(self, num: int, groups: np.ndarray | None, positions: np.ndarray | None, min_gap: int):
        min_gap = operator.index(min_gap)
        if min_gap < 0:
            raise ValueError(f"min_gap must be >= 0 frames, got {min_gap}")
        for name, values in (("groups", groups), ("positions", positions)):
            if values is not None and len(values) != num:
                raise ValueError(f"{name} has {len(values)} entries but embeddings has {num} rows: one per row")
        if min_gap > 0 and positions is None:
            raise ValueError(f"min_gap={min_gap} needs positions (the frame index of each row in its video)")
        # One group (one video) when none are given.
        _, self.group = np.unique(np.zeros(num) if groups is None else np.asarray(groups), return_inverse=True)
        self.group = self.group.reshape(-1)
        self.positions = None if positions is None else np.asarray(positions)
        self.min_gap = min_gap
        self.members = np.split(np.argsort(self.group, kind="stable"), np.cumsum(np.bincount(self.group))[:-1])
        self.picks = np.zeros(len(self.members), np.int64)
        self.eligible = np.ones(num, bool)

    def take(self, row: int) -> None:
        g = self.group[row]
        self.eligible[row] = False
        self.picks[g] += 1
        if self.min_gap > 0:
            members = self.members[g]
            near = np.abs(self.positions[members] - self.positions[row]) <= self.min_gap
            self.eligible[members[near]] = False

    def take_labelled(self, labelled: np.ndarray | None) -> np.ndarray:
        """Takes the rows labelled already (validated, sorted, unique) and returns them."""
        num = len(self.eligible)
        rows = np.unique(np.asarray([] if labelled is None else labelled, dtype=np.int64))
        if len(rows) and (rows.min() < 0 or rows.max() >= num):
            raise ValueError(f"labelled rows must be in [0, {num}), got {rows.min()}..{rows.max()}")
        for row in rows:
            self.take(row)
        return rows

    def spread_pick(self, candidates: np.ndarray, score: np.ndarray, tolerance: float) -> int:
        """Among `candidates` scoring at least (1 - tolerance) x the best `score` (higher is better), the one whose
        group has the fewest picks, then the best scoring, then the lowest row."""
        close = score >= (1.0 - tolerance) * score.max()
        rows, score = candidates[close], score[close]
        # lexsort: last key first.
        return int(rows[np.lexsort((rows, -score, self.picks[self.group[rows]]))[0]])

    def most_choosable(self) -> int:
        """The largest number of eligible rows that can all be chosen (per group, the greedy sweep over sorted
        positions, which is optimal for points on a line)."""
        if self.min_gap == 0:
            return int(self.eligible.sum())
        total = 0
        for members in self.members:
            last = None
            for p in np.sort(self.positions[members[self.eligible[members]]]):
                if last is None or p - last > self.min_gap:
                    total, last = total + 1, p
        return total

    def check_budget(self, budget: int, num: int, labelled: int) -> int:
        budget = operator.index(budget)
        if budget < 1:
            raise ValueError(f"budget must be at least 1 frame, got {budget}")
        most = self.most_choosable()
        if budget > most:
            why = f"embeddings has {num} rows" + (f", {labelled} already labelled" if labelled else "")
            if self.min_gap > 0:
                why += (
                    f"; frames within min_gap={self.min_gap} of a chosen frame of the same video/group are not "
                    f"eligible, so at most {most} can be chosen"
                )
            raise ValueError(f"budget {budget} is more than the {most} frames that can be chosen ({why})")
        return budget

    def ran_out(self, chosen: int, budget: int) -> ValueError:
        return ValueError(
            f"no eligible frame left after {chosen} of budget {budget}: the frames within min_gap={self.min_gap} of "
            "the chosen ones are excluded; choose a smaller budget or min_gap"
        )


def k_center_greedy(
    embeddings: np.ndarray,
    budget: int,
    *,
    groups: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    min_gap: int = 0,
    seed: int = 0,
    group_tolerance: float = 0.1,
    labelled: np.ndarray | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """`budget` row indices of `embeddings` [rows, features] chosen by k-center greedy, in order of choice.

    Args:
      groups: video or patient id of each row; picks spread over groups (see `group_tolerance`) and `min_gap` acts
        within a group. None: all rows are one video.
      positions: frame index of each row in its video (needed when min_gap > 0).
      min_gap: rows within this many frames (|difference| <= min_gap) of a chosen frame of the same group are not
        eligible; 0 turns the rule off.
      seed: draws the first centre among the eligible rows (when `labelled` is empty).
      group_tolerance: candidates at least (1 - tolerance) x the farthest distance count as nearly as far; among
        them the group with the fewest picks wins. 0: plain k-center greedy (groups only break exact ties).
      labelled: rows labelled already: they start as centres (their neighbours within min_gap are excluded, their
        groups counted) and are never returned.
      normalize: L2-normalise the features first (docs/design.md says why).

    Raises ValueError for a budget below 1 or above the number of rows that can be chosen (saying when min_gap is
    the reason), embeddings that are not 2-D or have NaN/inf rows, and groups/positions of another length.
    """
    x, rules, start, budget = _start(
        embeddings, budget, groups, positions, min_gap, group_tolerance, labelled, normalize
    )
    num = len(x)
    sq_norms = np.einsum("ij,ij->i", x, x)
    nearest = _nearest(x, sq_norms, x[start]) if len(start) else np.full(num, np.inf, dtype=x.dtype)
    chosen: list[int] = []
    for _ in range(budget):
        candidates = np.flatnonzero(rules.eligible)
        if not len(candidates):
            raise rules.ran_out(len(chosen), budget)
        if not chosen and not len(start):
            row = int(np.random.default_rng(seed).choice(candidates))
        else:
            row = rules.spread_pick(candidates, nearest[candidates], group_tolerance)
        chosen.append(row)
        rules.take(row)
        nearest = np.minimum(nearest, _distances(x, sq_norms, x[row][None])[:, 0])
    return np.asarray(chosen, dtype=np.int64)


def covering_radius(embeddings: np.ndarray, chosen: np.ndarray, *, normalize: bool = True) -> float:
    """The largest distance of any row to its nearest chosen row (the distance of `k_center_greedy`)."""
    x = _points(embeddings, normalize)
    chosen = np.asarray(chosen, dtype=np.int64).reshape(-1)
    if not len(chosen):
        raise ValueError("covering_radius needs at least one chosen row")
    if chosen.min() < 0 or chosen.max() >= len(x):
        raise ValueError(f"chosen rows must be in [0, {len(x)}), got {chosen.min()}..{chosen.max()}")
    return float(_nearest(x, np.einsum("ij,ij->i", x, x), x[chosen]).max())


def random_selection(
    num: int,
    budget: int,
    seed: int,
    groups: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    min_gap: int = 0,
    labelled: np.ndarray | None = None,
) -> np.ndarray:
    """The baseline: `budget` of `num` rows drawn uniformly without replacement, in order of choice, under the same
    eligibility rule as `k_center_greedy` (rows within min_gap frames of a chosen or `labelled` frame of the same
    group are skipped; labelled rows are never drawn). Same errors for the budget, groups and positions."""
    num = operator.index(num)
    if num < 0:
        raise ValueError(f"num must be >= 0 rows, got {num}")
    rules = _Eligibility(num, groups, positions, min_gap)
    start = rules.take_labelled(labelled)
    budget = rules.check_budget(budget, num, len(start))
    chosen: list[int] = []
    for row in np.random.default_rng(seed).permutation(num):
        if rules.eligible[row]:
            chosen.append(int(row))
            rules.take(row)
            if len(chosen) == budget:
                return np.asarray(chosen, dtype=np.int64)
    raise rules.ran_out(len(chosen), budget)


def _cluster_labels(x: np.ndarray, clusters: int, seed: int) -> np.ndarray:
    """k-means cluster of every row (scikit-learn; MiniBatchKMeans above KMEANS_ROWS rows), seeded."""
    if len(x) > KMEANS_ROWS:
        model = MiniBatchKMeans(clusters, n_init=KMEANS_INITS, batch_size=4096, random_state=seed)
    else:
        model = KMeans(clusters, n_init=KMEANS_INITS, random_state=seed)
    return model.fit_predict(x)


def _mean_neighbour_distance(x: np.ndarray, neighbours: int) -> np.ndarray:
    """Per row, the mean L2 distance to its `neighbours` nearest other rows of `x` (all others if fewer; 0 for a
    single row). scikit-learn's brute-force search reduces the distances in chunks of rows, never a rows x rows
    matrix."""
    k = min(neighbours, len(x) - 1)
    if k == 0:
        return np.zeros(len(x), dtype=x.dtype)
    distances, _ = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(x).kneighbors()
    return distances.mean(1)


def typical_clusters(
    embeddings: np.ndarray,
    budget: int,
    *,
    groups: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    min_gap: int = 0,
    seed: int = 0,
    neighbours: int = 20,
    group_tolerance: float = 0.1,
    labelled: np.ndarray | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """`budget` row indices of `embeddings` [rows, features] chosen by typicality in k-means clusters (TypiClust,
    Hacohen, Dekel & Weinshall 2022), in order of choice.

    k-means (seeded) splits the rows into len(labelled) + budget clusters. Each pick goes to the cluster with the
    fewest labelled or chosen rows, then the largest (then the one whose lowest row is lowest), among those with an
    eligible row, and takes its most typical eligible frame: typicality is the inverse of the mean L2 distance to the
    `neighbours` nearest other rows of the same cluster (all of them counted, eligible or not: it measures the data's
    density). So the budget goes to the dense middles of the largest uncovered regions, not to outliers as k-center's
    farthest points do at small budgets (the paper's low-budget regime).

    Args:
      groups, positions, min_gap, group_tolerance, labelled, normalize: as in `k_center_greedy`; the group spread
        acts among the frames at least (1 - group_tolerance) x as typical as the cluster's most typical eligible one.
      seed: seeds k-means (its k-means++ starts).
      neighbours: K of the typicality (20 in the paper); fewer in a cluster of K rows or less.

    Raises ValueError as `k_center_greedy` does, and for neighbours below 1.
    """
    neighbours = operator.index(neighbours)
    if neighbours < 1:
        raise ValueError(f"neighbours must be at least 1, got {neighbours}")
    x, rules, start, budget = _start(
        embeddings, budget, groups, positions, min_gap, group_tolerance, labelled, normalize
    )
    count = min(len(start) + budget, len(x))
    cluster = _cluster_labels(x, count, seed)
    return _pick_typical(x, cluster, count, rules, start, budget, neighbours, group_tolerance)


def _pick_typical(x, cluster, count: int, rules, start, budget: int, neighbours: int, group_tolerance: float):
    """`typical_clusters`' picks (row indices, int64): each from the open cluster with the fewest labelled or chosen
    rows, then the largest, then the lowest first row, its most typical eligible frame."""
    num = len(x)
    size = np.bincount(cluster, minlength=count)
    lowest_row = np.full(count, num)
    np.minimum.at(lowest_row, cluster, np.arange(num))
    taken = np.bincount(cluster[start], minlength=count)
    spread: dict[int, np.ndarray] = {}  # cluster -> mean distance of its rows to their nearest neighbours in it
    chosen: list[int] = []
    for _ in range(budget):
        open_clusters = np.bincount(cluster[rules.eligible], minlength=count) > 0
        if not open_clusters.any():
            raise rules.ran_out(len(chosen), budget)
        order = np.lexsort((lowest_row, -size, taken))  # lexsort: last key first
        c = int(order[open_clusters[order]][0])
        members = np.flatnonzero(cluster == c)
        if c not in spread:
            spread[c] = _mean_neighbour_distance(x[members], neighbours)
        eligible = rules.eligible[members]
        with np.errstate(divide="ignore"):  # 0: duplicates, typicality inf
            typicality = 1.0 / spread[c][eligible]
        row = rules.spread_pick(members[eligible], typicality, group_tolerance)
        chosen.append(row)
        rules.take(row)
        taken[c] += 1
    return np.asarray(chosen, dtype=np.int64)


def random_rows(
    embeddings: np.ndarray,
    budget: int,
    *,
    groups: np.ndarray | None = None,
    positions: np.ndarray | None = None,
    min_gap: int = 0,
    seed: int = 0,
    labelled: np.ndarray | None = None,
) -> np.ndarray:
    """`random_selection` of the rows of `embeddings` with the strategies' signature (the features are not used)."""
    return random_selection(len(_points(embeddings, False)), budget, seed, groups, positions, min_gap, labelled)


DEFAULT_STRATEGY = "typical"  # measured: docs/design.md, "Label-budget selection"

# name -> strategy; each takes (embeddings, budget, *, groups, positions, min_gap, seed, labelled) and returns row
# indices (never a labelled row).
STRATEGIES: dict[str, Callable[..., np.ndarray]] = {
    "typical": typical_clusters,
    "k-center": k_center_greedy,
    "random": random_rows,
}
