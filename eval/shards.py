"""Exact evaluation over a gallery cut into shards: per-shard passes and the merge.

The gallery's columns are split into contiguous shards (shard s holds columns
``offset_s .. offset_s + G_s``); every shard sees all queries. Because every distance is defined
exactly (``indexes.distance``), any worker computes the same exact value for a pair, so shards
never need the same arithmetic, only the same definitions:

1. ``first_pass`` (each shard): the exact values of its own true matches of every query (the
   pairs are known from the labels) and each query's first ``keep_top`` columns of the shard in
   exact (value, column) order;
2. the driver gathers every match's exact value and global column (``MatchList``);
3. ``count_pass`` (each shard): for every match of every query, the shard's kept non-matches
   before it in exact (value, global column) order (``ranking.count_before_exact``);
4. the driver sums the counts per match: rank_j = j + Σ_shards before_j, matches ordered by their
   sums (swapping two matches leaves the set of ranks as it is: ``ranking.ranks_from_before_counts``),
   and merges the shards' top lists by (exact value, global column) (``merge_top``).

The ranks, the top lists and therefore every metric and per-query value equal those of
``evaluate.evaluate_ranking`` over the whole gallery, bit for bit, for any number of shards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.eval.distances import DistanceSource, block_rows_for
from retrieval.eval.errors import EvaluationError
from retrieval.eval.protocol import RankingLabels
from retrieval.eval.ranking import block_top_k, count_before_exact, ranks_from_before_counts


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


@dataclass(frozen=True)
class ShardTop:
    """One shard's first items per query: global columns and exact values, (Q, k_s)."""

    cols: np.ndarray
    values: np.ndarray


@dataclass(frozen=True)
class FirstPass:
    """What one shard sends after its first pass."""

    matches: MatchList  # its own true matches (global columns)
    top: ShardTop | None
    num_gallery: int


def first_pass(source: DistanceSource, labels: RankingLabels, col_offset: int, keep_top: int,
               block_rows: int | None = None) -> FirstPass:
    """Exact values of the shard's true matches and each query's first ``keep_top`` shard columns.

    ``source`` / ``labels``: all queries × this shard's gallery (local columns 0 .. G_s − 1).
    """
    _check(source, labels)
    block_rows = block_rows or block_rows_for(source.num_gallery)
    queries, values, cols, top_cols, top_values = [], [], [], [], []
    for block in source.blocks(block_rows):
        rows, local_cols = labels.match_pairs(np.arange(block.start, block.stop))
        queries.append(rows)
        cols.append(local_cols + col_offset)
        values.append(block.exact(rows - block.start, local_cols))
        if keep_top > 0:
            c, v = block_top_k(block, keep_top)
            top_cols.append(c + col_offset)
            top_values.append(v)
    matches = MatchList(_cat(queries, np.int64), _cat(values, np.float64), _cat(cols, np.int64))
    top = ShardTop(np.concatenate(top_cols), np.concatenate(top_values)) if keep_top > 0 else None
    return FirstPass(matches, top, source.num_gallery)


def count_pass(source: DistanceSource, labels: RankingLabels, matches: MatchList, col_offset: int,
               block_rows: int | None = None) -> np.ndarray:
    """(M,) per match of ``matches`` (all shards'): this shard's kept non-matches before it."""
    _check(source, labels)
    block_rows = block_rows or block_rows_for(source.num_gallery)
    before = np.zeros(len(matches), np.int64)
    for block in source.blocks(block_rows):
        part = matches.rows(block.start, block.stop)
        before[part] = count_before_exact(block, labels, matches.query[part], matches.value[part],
                                          matches.col[part], col_offset)
    return before


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


def merge_order(parts: list[ShardTop], k: int) -> np.ndarray:
    """(Q, k) positions, in the shards' lists placed side by side, of each query's first ``k`` items
    over all shards by (exact value, global column): take anything carried beside the lists with it."""
    cols = np.concatenate([p.cols for p in parts], axis=1)
    values = np.concatenate([p.values for p in parts], axis=1)
    return np.lexsort((cols, values), axis=1)[:, :min(k, cols.shape[1])]


def merge_top(parts: list[ShardTop], k: int) -> ShardTop:
    """Each query's first ``k`` items over all shards, by (exact value, global column)."""
    order = merge_order(parts, k)
    cols = np.concatenate([p.cols for p in parts], axis=1)
    values = np.concatenate([p.values for p in parts], axis=1)
    return ShardTop(np.take_along_axis(cols, order, axis=1), np.take_along_axis(values, order, axis=1))


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
