"""Exact evaluation over a gallery cut into shards: per-shard passes and the merge.

The gallery's columns are split into contiguous shards (shard s holds columns
``offset_s .. offset_s + G_s``); every shard sees all queries. Because every distance is defined
exactly (``indexes.distance``), any worker computes the same exact value for a pair, so shards
never need the same arithmetic, only the same definitions:

1. ``first_pass`` (each shard): the exact values of its own true matches of every query (the
   pairs are known from the labels: no distance block is computed);
2. the driver gathers every match's exact value and global column (``MatchList``);
3. ``second_pass`` (each shard, its one pass over its distance blocks): for every match of every
   query, the shard's kept non-matches before it in exact (value, global column) order
   (``ranking.count_before_exact``), and the candidates for each query's first ``keep_top``
   items: approximate values with their bounds (``ranking.block_top_candidates``);
4. the driver sums the counts per match: rank_j = j + Σ_shards before_j, matches ordered by their
   sums (swapping two matches leaves the set of ranks as it is: ``ranking.ranks_from_before_counts``),
   and keeps the candidates that can still be among a query's first ``keep_top`` over all shards
   (``top_survivors``: about keep_top per query, however many shards);
5. each shard gives the exact values of its survivors (``source.exact``, no block), and the driver
   orders them by (exact value, global column) (``top_from_exact``).

The ranks, the top lists and therefore every metric and per-query value equal those of
``evaluate.evaluate_ranking`` over the whole gallery, bit for bit, for any number of shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.eval.distances import DistanceSource, above, below, block_rows_for
from retrieval.eval.errors import EvaluationError
from retrieval.eval.protocol import RankingLabels
from retrieval.eval.ranking import block_top_candidates, count_before_exact, ranks_from_before_counts


@dataclass(frozen=True)
class MatchList:
    """True matches over the whole gallery: query row, exact value, global column; sorted by
    (query row, global column)."""

    query: np.ndarray  # (M,) int64
    value: np.ndarray  # (M,) exact values (float32 keys or float64)
    col: np.ndarray  # (M,) int64 global gallery columns

    def __len__(self) -> int:
        return len(self.query)

    def rows(self, start: int, stop: int) -> slice:
        lo, hi = np.searchsorted(self.query, [start, stop], side="left")
        return slice(int(lo), int(hi))


def first_pass(source: DistanceSource, labels: RankingLabels, col_offset: int) -> MatchList:
    """Exact values of the shard's true matches of every query (global columns).

    ``source`` / ``labels``: all queries × this shard's gallery (local columns 0 .. G_s − 1); the
    source gives exact values of chosen pairs (``source.exact(query rows, columns)``).
    """
    _check(source, labels)
    rows, cols = labels.match_pairs(np.arange(source.num_queries))
    values = source.exact(rows, cols) if len(rows) else np.empty(0, np.float64)
    return MatchList(rows.astype(np.int64), np.asarray(values, np.float64), cols.astype(np.int64) + col_offset)


@dataclass(frozen=True)
class TopCandidates:
    """Entries that may be among their query's first items: query row, global column, approximate
    value and its bound (|value − exact| ≤ bound)."""

    query: np.ndarray
    col: np.ndarray
    value: np.ndarray
    bound: np.ndarray


@dataclass(frozen=True)
class SecondPass:
    """What one shard sends after its pass over its distance blocks."""

    before: np.ndarray  # (M,) per match of all shards: this shard's kept non-matches before it
    top: TopCandidates | None  # candidates for each query's first items (global columns)


def second_pass(source: DistanceSource, labels: RankingLabels, matches: MatchList, col_offset: int,
                keep_top: int = 0, block_rows: int | None = None) -> SecondPass:
    """One pass over the shard's blocks: the counts for every match of ``matches`` (all shards'),
    and the candidates for each query's first ``keep_top`` items."""
    _check(source, labels)
    block_rows = block_rows or block_rows_for(source.num_gallery)
    before = np.zeros(len(matches), np.int64)
    parts: list[tuple] = []
    for block in source.blocks(block_rows):
        part = matches.rows(block.start, block.stop)
        before[part] = count_before_exact(block, labels, matches.query[part], matches.value[part],
                                          matches.col[part], col_offset)
        if keep_top > 0:
            rows, cols, values, bounds = block_top_candidates(block, keep_top)
            parts.append((rows + block.start, cols + col_offset, values, bounds))
    top = None
    if keep_top > 0:
        top = TopCandidates(*(_cat([p[i] for p in parts], t) for i, t in
                              enumerate((np.int64, np.int64, np.float64, np.float64))))
    return SecondPass(before, top)


def top_survivors(parts: list[TopCandidates], num_queries: int, k: int) -> list[np.ndarray]:
    """Per part, a mask of its candidates that can be among their query's first ``k`` over all parts.

    The k-th smallest exact value of a query is at most T, the k-th smallest upper end
    (value + bound) of its candidates; a candidate whose lower end exceeds T cannot be among its
    first k (ties at T survive). Every part gives each query at least min(k, its columns) candidates.
    """
    query = _cat([p.query for p in parts], np.int64)
    upper = above(_cat([p.value for p in parts], np.float64), _cat([p.bound for p in parts], np.float64))
    lower = below(_cat([p.value for p in parts], np.float64), _cat([p.bound for p in parts], np.float64))
    order = np.lexsort((upper, query))
    first = np.searchsorted(query[order], np.arange(num_queries), side="left")
    counts = np.bincount(query, minlength=num_queries)
    kth = np.full(num_queries, np.inf)
    has = counts >= k
    kth[has] = upper[order[first[has] + k - 1]]
    keep = lower <= kth[query]
    sizes = np.cumsum([0] + [len(p.query) for p in parts])
    return [keep[a:b] for a, b in zip(sizes[:-1], sizes[1:])]


def reduce_candidates(kept: TopCandidates | None, new: TopCandidates, num_queries: int, k: int) -> TopCandidates:
    """The candidates of ``kept`` and ``new`` that can still be among their query's first ``k``:
    applied as the parts' candidates arrive, it keeps about k per query (any T over a subset of
    the candidates is at least the T over all of them, so nothing of the final top k is lost)."""
    both = new if kept is None else TopCandidates(*(np.concatenate([getattr(kept, f), getattr(new, f)])
                                                    for f in ("query", "col", "value", "bound")))
    keep = top_survivors([both], num_queries, k)[0]
    return TopCandidates(both.query[keep], both.col[keep], both.value[keep], both.bound[keep])


def top_from_exact(query: np.ndarray, col: np.ndarray, value: np.ndarray, num_queries: int, k: int) -> np.ndarray:
    """(num_queries, k) positions into the survivors of each query's first ``k`` by (exact value,
    global column): take the columns, values and anything carried beside them with it."""
    order = np.lexsort((col, value, query))
    position = np.arange(len(order)) - np.searchsorted(query[order], query[order], side="left")
    chosen = order[position < k]
    if len(chosen) != num_queries * k:
        raise EvaluationError(f"internal error: {len(chosen)} top items for {num_queries} queries × {k}")
    return chosen.reshape(num_queries, k)


def gather_matches(parts: list[MatchList]) -> MatchList:
    """All shards' matches in one list sorted by (query row, global column)."""
    query = _cat([p.query for p in parts], np.int64)
    col = _cat([p.col for p in parts], np.int64)
    values = [p.value for p in parts if len(p.value)]
    value = np.concatenate(values) if values else np.empty(0, np.float64)
    order = np.lexsort((col, query))
    return MatchList(query[order], value[order], col[order])


def match_ranks_from_counts(matches: MatchList, counts: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """(query row, rank) of every match: the shards' counts summed per match."""
    before = np.sum(counts, axis=0) if counts else np.zeros(len(matches), np.int64)
    return ranks_from_before_counts(matches.query, before)


def shard_offsets(sizes: list[int]) -> list[int]:
    """The first global column of each shard, from the shard sizes in gallery order."""
    return [int(x) for x in np.concatenate([[0], np.cumsum(sizes)[:-1]])] if sizes else []


def _check(source: DistanceSource, labels: RankingLabels) -> None:
    if (source.num_queries, source.num_gallery) != (labels.num_queries, labels.num_gallery):
        raise EvaluationError(
            f"distances are {source.num_queries} × {source.num_gallery} but the labels describe "
            f"{labels.num_queries} queries × {labels.num_gallery} gallery items"
        )


def _cat(parts: list[np.ndarray], dtype) -> np.ndarray:
    return np.concatenate(parts).astype(dtype, copy=False) if parts else np.empty(0, dtype)
