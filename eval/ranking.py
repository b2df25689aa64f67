"""Ranks of true matches, found without sorting the gallery row, exact under any arithmetic.

The rank of a true match m is 1 + the number of kept (non-junk) gallery items before it in a
stable ascending sort of the row by *exact* value: items strictly closer, plus items at the same
value with a lower gallery column. Two facts make this cheap:

* only matches against non-matches matter: swapping two matches leaves the set of ranks as it
  is, so rank_j = j + (non-matches before the j-th match), for the matches in that order;
* a block's values are approximations within a bound B of the exact ones (0 for exact data): a
  non-match whose value is below m's by more than 2B is surely before m, one above by more than
  2B surely after; only the few inside the window are compared with exact values.

So each row is cut at its farthest match + 2B, the kept non-matches up to the cut are sorted, the
sure counts come from a binary search, and the windows are resolved with exact values fetched
for the whole block at once, in two passes: the matches whose window holds a non-match get their
exact value first, and then only the non-matches within B of that exact value are refined. The
top items of a row (for ``rankings``) are chosen the same way: every item that can be among the
first k is given its exact value and ordered by (exact value, gallery column). The result equals a full stable sort of the exact values.

Ranks are returned as flat arrays ``(query row, rank)``, grouped by query row, ranks ascending.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.eval.device_values import count_at_most, entries_at_most, kth_smallest_of_columns
from retrieval.eval.distances import DistanceBlock, above, below
from retrieval.eval.errors import EvaluationError
from retrieval.eval.protocol import RankingLabels
from retrieval.indexes.arrays import nonzero_2d


@dataclass(frozen=True)
class BlockRanks:
    """What one distance block reduces to: match ranks, and optionally each row's top items."""

    query: np.ndarray  # (M,) absolute query row of each true match, grouped by row
    rank: np.ndarray  # (M,) kept rank (1-based), ascending within a row
    top_cols: np.ndarray | None = None  # (b, keep_top) gallery columns, stable exact order, junk included
    top_values: np.ndarray | None = None  # (b, keep_top) their exact values
    refined_pairs: int = 0  # pairs whose exact value was needed


class _PairValues:
    """Exact values of chosen (local row, column) pairs of a block, fetched a batch at a time."""

    def __init__(self, block: DistanceBlock, rows: np.ndarray, cols: np.ndarray) -> None:
        self.block = block
        self.num_cols = block.values.shape[1]
        self.keys = np.empty(0, np.int64)
        self.values = np.empty(0, block.values.dtype)
        self.add(rows, cols)

    def add(self, rows: np.ndarray, cols: np.ndarray) -> None:
        """Fetch the pairs not fetched yet (one call for all of them)."""
        keys = np.unique(np.asarray(rows, np.int64) * self.num_cols + np.asarray(cols, np.int64))
        if len(self.keys):
            keys = keys[~np.isin(keys, self.keys, assume_unique=True)]
        if len(keys) == 0:
            return
        rows, cols = keys // self.num_cols, keys % self.num_cols
        values = self.block.values[rows, cols] if self.block.exact_fn is None else self.block.exact(rows, cols)
        keys, values = np.concatenate([self.keys, keys]), np.concatenate([self.values, values])
        order = np.argsort(keys, kind="stable")
        self.keys, self.values = keys[order], values[order]

    def get(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.values[np.searchsorted(self.keys, rows * self.num_cols + cols)]


CANDIDATE_BUDGET = 2_000_000  # candidates sorted at once (~80 bytes each in flight)


def match_ranks(block: DistanceBlock, labels: RankingLabels, keep_top: int = 0) -> BlockRanks:
    """Kept ranks (1-based) of every true match of the block's queries, and their top items.

    ``block`` holds query rows ``block.start ..``; ``keep_top`` > 0 also returns each row's first
    ``keep_top`` gallery columns (junk included) in exact stable order with their exact values.
    Vectorised over groups of rows: one pass selects every candidate, one sort orders them; a
    group holds at most ``CANDIDATE_BUDGET`` candidates (a query whose last match lies deep in a
    large gallery has many), so memory stays bounded whatever the data.
    """
    parts = [_match_ranks_group(group, labels, keep_top) for group in _row_groups(block, labels, keep_top)]
    if len(parts) == 1:
        return parts[0]
    tops = [p.top_cols for p in parts]
    return BlockRanks(
        np.concatenate([p.query for p in parts]), np.concatenate([p.rank for p in parts]),
        None if tops[0] is None else np.concatenate(tops),
        None if tops[0] is None else np.concatenate([p.top_values for p in parts]),
        sum(p.refined_pairs for p in parts),
    )


def _row_groups(block: DistanceBlock, labels: RankingLabels, keep_top: int):
    """Sub-blocks of consecutive rows whose candidates fit the budget (views, no copies)."""
    num_rows = block.values.shape[0]
    if block.values.size <= CANDIDATE_BUDGET or num_rows == 1:
        yield block
        return
    window = 2.0 * np.asarray(block.bound, dtype=np.float64)
    match_rows, match_cols = labels.match_pairs(np.arange(block.start, block.stop))
    match_rows = match_rows - block.start
    threshold = _thresholds(block.values, match_rows, block.values[match_rows, match_cols].astype(np.float64),
                            window, min(keep_top, block.values.shape[1]))
    counts = count_at_most(block.values, threshold)
    first = 0
    while first < num_rows:
        last = first + max(1, int(np.searchsorted(np.cumsum(counts[first:]), CANDIDATE_BUDGET, side="right")))
        yield _sub_block(block, first, min(last, num_rows))
        first = min(last, num_rows)


def _sub_block(block: DistanceBlock, first: int, last: int) -> DistanceBlock:
    exact_fn = None
    if block.exact_fn is not None:
        def exact_fn(rows, cols, _parent=block.exact_fn, _offset=first):
            return _parent(rows + _offset, cols)
    return DistanceBlock(block.start + first, block.values[first:last], block.bound[first:last], exact_fn)


def _thresholds(values, match_rows, match_values, window, keep_top: int) -> np.ndarray:
    """Per row: every entry up to here may matter (a match's window, or the top-k's)."""
    threshold = np.full(values.shape[0], -np.inf)
    np.maximum.at(threshold, match_rows, above(match_values, window[match_rows]))
    if keep_top:
        np.maximum(threshold, above(_kth_upper_bound(values, keep_top), window), out=threshold)
    return threshold


def _match_ranks_group(block: DistanceBlock, labels: RankingLabels, keep_top: int) -> BlockRanks:
    """Ranks by two passes of exact values. A match with no kept non-match within 2B of its
    approximate value has its rank already; the others get their exact value first (with the top
    candidates), and then only the non-matches within B of that exact value are settled exactly
    (half the window the approximate value needs)."""
    num_rows, num_cols = block.values.shape
    keep_top = min(keep_top, num_cols)
    bound = np.asarray(block.bound, dtype=np.float64)
    window = 2.0 * bound
    match_rows, match_cols = labels.match_pairs(np.arange(block.start, block.stop))
    match_rows = match_rows - block.start
    approx_match = block.values[match_rows, match_cols].astype(np.float64)
    cands = _Candidates(block, match_rows, approx_match, window, keep_top)
    plan = _match_windows(cands, labels, block.start, match_rows, match_cols, approx_match, window)
    before = plan.sure_before.copy()
    unsure = np.unique(plan.pair_match)  # matches with a non-match in their approximate window
    top = cands.top(keep_top, window) if keep_top else (np.empty(0, np.int64), np.empty(0, np.int64))
    exact = _PairValues(block, np.concatenate([match_rows[unsure], top[0]]),
                        np.concatenate([match_cols[unsure], top[1]]))
    if len(unsure):
        rows, cols = match_rows[unsure], match_cols[unsure]
        values = exact.get(rows, cols).astype(np.float64)
        # every entry within B of an exact match value is within 2B of its approximation: among cands
        near = _match_windows(cands, labels, block.start, rows, cols, values, bound)
        exact.add(near.pair_rows, near.pair_cols)
        other = exact.get(near.pair_rows, near.pair_cols).astype(np.float64)
        before[unsure] = near.sure_before + _before_in_windows(near, other, values, cols)
    query, rank = _ranks_from_counts(match_rows, before)
    top_cols = top_values = None
    if keep_top:
        top_cols, top_values = _first_k(exact, top[0], top[1], num_rows, keep_top)
    refined = len(exact.keys) if block.exact_fn is not None else 0
    return BlockRanks(query + block.start, rank, top_cols, top_values, refined)


class _Candidates:
    """Every entry a row's ranks or top items can depend on, sorted by (row, approximate value).

    A row's entries up to its farthest match + 2B (any of them may precede a match), and up to a
    bound on its k-th smallest + 2B (any of them may be among its first k). The sort key
    row·span + (value − offset) is a float64 that keeps rows apart; it is monotone in the value
    within a row, so a comparison it cannot separate only ever lands in a window, never decided.
    """

    def __init__(self, block: DistanceBlock, match_rows, match_values, window, keep_top: int) -> None:
        values = block.values
        num_rows = values.shape[0]
        threshold = _thresholds(values, match_rows, match_values, window, keep_top)
        rows, cols, vals = entries_at_most(values, threshold)
        vals = vals.astype(np.float64)
        finite = threshold[np.isfinite(threshold)]
        low = min([float(vals.min(initial=0.0)), float(below(match_values, window[match_rows]).min(initial=0.0))])
        high = float(finite.max(initial=0.0))
        self.offset, self.span = low, 2.0 * (high - low) + 1.0
        keys = rows * self.span + (vals - self.offset)
        order = np.argsort(keys, kind="stable")
        self.rows, self.cols, self.vals, self.keys = rows[order], cols[order], vals[order], keys[order]
        self.row_start = np.searchsorted(self.rows, np.arange(num_rows + 1), side="left")

    def key(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        return rows * self.span + (values - self.offset)

    def top(self, k: int, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the entries within 2B of each row's approximate k-th smallest."""
        rows = np.arange(len(self.row_start) - 1)
        kth = self.vals[self.row_start[:-1] + k - 1]  # every row holds ≥ k candidates
        end = np.searchsorted(self.keys, self.key(rows, above(kth, window)), side="right")
        lengths = end - self.row_start[:-1]
        positions = _ranges(self.row_start[:-1], lengths)
        return self.rows[positions], self.cols[positions]


def _kth_upper_bound(values: np.ndarray, k: int) -> np.ndarray:
    """Per row, a value ≥ its k-th smallest: the k-th smallest of an evenly spaced column sample."""
    n = values.shape[1]
    sample = max(64 * k, 2048)
    return kth_smallest_of_columns(values, k, 1 if 2 * sample >= n else n // sample)


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges starts[i] .. starts[i] + lengths[i]."""
    return np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths) + np.repeat(starts, lengths)


@dataclass
class _Windows:
    """Per match: kept non-matches surely before it, and the (row, column) pairs to settle exactly."""

    sure_before: np.ndarray  # (M,)
    pair_match: np.ndarray  # (P,) index of the match each uncertain pair belongs to
    pair_rows: np.ndarray  # (P,) local row of the non-match
    pair_cols: np.ndarray  # (P,) its column


def _match_windows(cands: _Candidates, labels: RankingLabels, start: int, match_rows, match_cols, match_values,
                   window) -> _Windows:
    absolute = cands.rows + start
    negative = ~labels.is_junk(absolute, cands.cols) & ~labels.is_match(absolute, cands.cols)
    rows, cols, keys = cands.rows[negative], cands.cols[negative], cands.keys[negative]
    # the key is monotone in the value: key(x) < key(t) implies x < t, and x ≤ t implies key(x) ≤ key(t)
    lo = np.searchsorted(keys, cands.key(match_rows, below(match_values, window[match_rows])), side="left")
    hi = np.searchsorted(keys, cands.key(match_rows, above(match_values, window[match_rows])), side="right")
    sure_before = lo - np.searchsorted(rows, match_rows, side="left")
    lengths = hi - lo
    positions = _ranges(lo, lengths)
    pair_match = np.repeat(np.arange(len(match_rows)), lengths)
    return _Windows(sure_before.astype(np.int64), pair_match, rows[positions], cols[positions])


def _before_in_windows(plan: _Windows, other: np.ndarray, match_values: np.ndarray, match_cols: np.ndarray,
                       col_offset: int = 0) -> np.ndarray:
    """Per match: its window's non-matches before it in exact (value, column) order.

    ``other``: the exact values of the window pairs (``plan.pair_rows``, ``plan.pair_cols``);
    ``match_values``: the matches' exact values; ``col_offset``: where the block's columns start
    in the whole gallery (a shard's), to which ``match_cols`` refer.
    """
    if len(plan.pair_match) == 0:
        return np.zeros(len(match_values), np.int64)
    mine = match_values[plan.pair_match]
    before = (other < mine) | ((other == mine) & (plan.pair_cols + col_offset < match_cols[plan.pair_match]))
    return np.bincount(plan.pair_match, weights=before, minlength=len(match_values)).astype(np.int64)


def _ranks_from_counts(match_rows: np.ndarray, before: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rank_j = j + (non-matches before the j-th match), matches ordered by that count per row."""
    order = np.lexsort((before, match_rows))
    rows, before = match_rows[order], before[order]
    first = np.searchsorted(rows, rows, side="left")
    ordinal = np.arange(len(rows)) - first + 1
    return rows, (before + ordinal).astype(np.int64)


def _first_k(exact: _PairValues, rows: np.ndarray, cols: np.ndarray, num_rows: int, k: int):
    vals = exact.get(rows, cols)
    order = np.lexsort((cols, vals, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    position = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
    first = position < k
    return cols[first].reshape(num_rows, k), vals[first].reshape(num_rows, k)


def block_top_k(block: DistanceBlock, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first ``k`` columns (junk included) in exact stable order, and their exact values:
    (b, min(k, G)) arrays, the ``top_cols`` / ``top_values`` of :func:`match_ranks` without the ranks."""
    num_rows, num_cols = block.values.shape
    k = min(k, num_cols)
    if k == 0:
        return np.empty((num_rows, 0), np.int64), np.empty((num_rows, 0), np.float64)
    window = 2.0 * np.asarray(block.bound, dtype=np.float64)
    none = np.empty(0, np.int64)
    cands = _Candidates(block, none, np.empty(0, np.float64), window, k)
    rows, cols = cands.top(k, window)
    return _first_k(_PairValues(block, rows, cols), rows, cols, num_rows, k)


def block_top_candidates(block: DistanceBlock, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every entry that can be among its row's first ``k`` (the entries within 2B of the approximate
    k-th): (local rows, cols, approximate values, their bounds), all float64 values; no exact value
    is computed. The row's first k by exact (value, column) are among them (see ``block_top_k``)."""
    num_rows, num_cols = block.values.shape
    k = min(k, num_cols)
    if k == 0:
        empty = np.empty(0, np.int64)
        return empty, empty, np.empty(0, np.float64), np.empty(0, np.float64)
    bound = np.asarray(block.bound, dtype=np.float64)
    cands = _Candidates(block, np.empty(0, np.int64), np.empty(0, np.float64), 2.0 * bound, k)
    rows, cols = cands.top(k, 2.0 * bound)
    return rows, cols, block.values[rows, cols].astype(np.float64), bound[rows]


def count_before_exact(block: DistanceBlock, labels: RankingLabels, match_rows: np.ndarray, match_values: np.ndarray,
                       match_cols: np.ndarray, col_offset: int = 0) -> np.ndarray:
    """Per given match: the block's kept non-matches before it in exact (value, column) order.

    For one gallery shard of a distributed evaluation: ``block`` (and ``labels``) cover this
    shard's columns, which are columns ``col_offset ..`` of the whole gallery; each match is given
    by its absolute query row, its *exact* value and its column in the whole gallery (it may lie
    in another shard). Since the match values are exact, a block value within the bound B (not 2B)
    of one is the only kind compared exactly. Summed over the shards, the counts are the
    ``before`` counts of :func:`match_ranks` for the whole gallery.
    """
    match_rows = np.asarray(match_rows, dtype=np.int64) - block.start
    match_values = np.asarray(match_values, dtype=np.float64)
    match_cols = np.asarray(match_cols, dtype=np.int64)
    if len(match_rows) == 0:
        return np.zeros(0, np.int64)
    window = np.asarray(block.bound, dtype=np.float64)
    cands = _Candidates(block, match_rows, match_values, window, 0)
    plan = _match_windows(cands, labels, block.start, match_rows, match_cols, match_values, window)
    if len(plan.pair_match) == 0:
        return plan.sure_before
    other = _PairValues(block, plan.pair_rows, plan.pair_cols).get(plan.pair_rows, plan.pair_cols).astype(np.float64)
    return plan.sure_before + _before_in_windows(plan, other, match_values, match_cols, col_offset)


def ranks_from_before_counts(match_rows: np.ndarray, before: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query row, rank) of every match from its count of kept non-matches before it: grouped by
    row, ranks ascending (rank_j = j + before_j, matches ordered by their counts)."""
    return _ranks_from_counts(np.asarray(match_rows, dtype=np.int64), np.asarray(before, dtype=np.int64))


def ranked_list_match_ranks(
    gallery_cols: np.ndarray, first_row: int, labels: RankingLabels
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Kept ranks of the true matches inside given ranked lists (top-k mode).

    ``gallery_cols`` (b, k): each query's list, best first. Junk entries are removed from the
    list before ranking. Returns (query row, rank) flat arrays and each row's kept list length.
    """
    num_rows, k = gallery_cols.shape
    if gallery_cols.size and (gallery_cols.min() < 0 or gallery_cols.max() >= labels.num_gallery):
        raise EvaluationError(
            f"top-k lists hold gallery rows outside 0..{labels.num_gallery - 1} (an index returned missing results?)"
        )
    rows = np.repeat(np.arange(first_row, first_row + num_rows), k).reshape(num_rows, k)
    kept = ~labels.is_junk(rows.ravel(), gallery_cols.ravel()).reshape(num_rows, k)
    is_match = labels.is_match(rows.ravel(), gallery_cols.ravel()).reshape(num_rows, k)
    kept_rank = np.cumsum(kept, axis=1)
    return rows[is_match], kept_rank[is_match].astype(np.int64), kept.sum(axis=1).astype(np.int64)


def top_k_columns(distances: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` columns of each row in a stable ascending sort, and their distances.

    Exact under ties: the k-th smallest value is found by partition, then every item up to it
    is ordered by (distance, column) and the first k kept.
    """
    num_rows, num_cols = distances.shape
    k = min(k, num_cols)
    if k == 0:
        return np.empty((num_rows, 0), np.int64), np.empty((num_rows, 0), distances.dtype)
    if k >= num_cols // 2:
        cols = np.argsort(distances, axis=1, kind="stable")[:, :k]
        return cols.astype(np.int64), np.take_along_axis(distances, cols, axis=1)
    kth = np.partition(distances, k - 1, axis=1)[:, k - 1]
    rows, cols = nonzero_2d(distances <= kth[:, None])
    dist = distances[rows, cols]
    order = np.lexsort((cols, dist, rows))
    rows, cols, dist = rows[order], cols[order], dist[order]
    position = np.arange(len(rows)) - np.searchsorted(rows, np.arange(num_rows))[rows]
    first_k = position < k
    return cols[first_k].reshape(num_rows, k).astype(np.int64), dist[first_k].reshape(num_rows, k)
