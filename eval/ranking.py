"""Ranks of true matches, found without sorting the gallery row.

The rank of a true match is 1 + the number of kept (non-junk) gallery items before it in a
stable ascending sort of the row: items strictly closer, plus items at the same distance with a
lower gallery column. Only items at most as far as the query's last true match can come before
any match, so each row is cut at that distance and only that short candidate list is ordered
(row by row: the row and its candidates stay in cache, which beats one big vectorised sort).
The result equals a full stable sort of the same array exactly, ties included.

Ranks are returned as flat arrays ``(query row, rank)``, grouped by query row, ranks ascending.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.eval.errors import EvaluationError
from retrieval.eval.protocol import RankingLabels


@dataclass(frozen=True)
class BlockRanks:
    """What one distance block reduces to: match ranks, and optionally each row's top items."""

    query: np.ndarray  # (M,) absolute query row of each true match, grouped by row
    rank: np.ndarray  # (M,) kept rank (1-based), ascending within a row
    top_cols: np.ndarray | None = None  # (b, keep_top) gallery columns, stable order, junk included
    top_dist: np.ndarray | None = None  # (b, keep_top) their distances


def match_ranks(
    distances: np.ndarray, first_row: int, labels: RankingLabels, keep_top: int = 0
) -> BlockRanks:
    """Kept ranks (1-based) of every true match of the block's queries, and their top items.

    ``distances`` is the (b, G) block for query rows ``first_row .. first_row + b``. Each row is
    cut at its farthest true match (and, when ``keep_top`` > 0, at its ``keep_top``-th smallest
    distance); only the items up to the cut are ordered, by a stable sort on distance of the
    column-ordered candidates, i.e. by (distance, gallery column).
    """
    num_rows, num_cols = distances.shape
    keep_top = min(keep_top, num_cols)
    match_rows, match_cols = labels.match_pairs(np.arange(first_row, first_row + num_rows))
    cutoff = np.full(num_rows, -np.inf, dtype=np.float64)
    np.maximum.at(cutoff, match_rows - first_row, distances[match_rows - first_row, match_cols])
    has_match = np.bincount(match_rows - first_row, minlength=num_rows) > 0
    top_cols = np.empty((num_rows, keep_top), np.int64) if keep_top else None
    top_dist = np.empty((num_rows, keep_top), distances.dtype) if keep_top else None
    query_parts, rank_parts = [], []
    for local in range(num_rows):
        row = distances[local]
        if not has_match[local] and not keep_top:
            continue
        limit = cutoff[local] if has_match[local] else -np.inf
        candidates = np.flatnonzero(row <= limit) if has_match[local] else np.empty(0, np.int64)
        if len(candidates) < keep_top:
            kth = np.partition(row, keep_top - 1)[keep_top - 1]
            candidates = np.flatnonzero(row <= max(kth, limit))
        ordered = candidates[np.argsort(row[candidates], kind="stable")]  # ties stay in column order
        if keep_top:
            top_cols[local] = ordered[:keep_top]
            top_dist[local] = row[ordered[:keep_top]]
        if has_match[local]:
            kept, match = labels.row_flags(first_row + local, ordered)
            ranks = np.flatnonzero(match[kept]) + 1
            query_parts.append(np.full(len(ranks), first_row + local, np.int64))
            rank_parts.append(ranks)
    if not rank_parts:
        return BlockRanks(np.empty(0, np.int64), np.empty(0, np.int64), top_cols, top_dist)
    return BlockRanks(np.concatenate(query_parts), np.concatenate(rank_parts).astype(np.int64), top_cols, top_dist)


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
    rows, cols = np.nonzero(distances <= kth[:, None])
    dist = distances[rows, cols]
    order = np.lexsort((cols, dist, rows))
    rows, cols, dist = rows[order], cols[order], dist[order]
    position = np.arange(len(rows)) - np.searchsorted(rows, np.arange(num_rows))[rows]
    first_k = position < k
    return cols[first_k].reshape(num_rows, k).astype(np.int64), dist[first_k].reshape(num_rows, k)
