"""Exact ranking over gallery shards on Ray: two rounds of shard tasks, the merge on the driver.

Round 1 (``first_pass_task``, one per gallery part): the exact values of the part's true matches
of every query and each query's first items in the part; round 2 (``count_task``): for every match
of every query, the part's kept non-matches before it. The driver sums the counts and merges the
top lists (``eval.shards``), then assembles the ``RankingResult`` as one process would
(``eval.evaluate.evaluate_from_ranks``): bit-identical ranks, metrics and tables.

The distances a shard ranks by come from a ``RankSpec``: plain embedding distances, or the
k-reciprocal re-ranked ones (the neighbourhood graph built by ``distributed.rerank``, its rows
for the shard passed beside it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.common.progress import ProgressCallback
from retrieval.data.errors import DataError
from retrieval.distributed.shards import GalleryView, load_part
from retrieval.distributed.tasks import fault_point, gather, put, remote
from retrieval.eval import shards as sharded
from retrieval.labels import LabelledVectors, check_labels, labels_between


@dataclass(frozen=True)
class RerankShardSpec:
    """What a shard needs to compute re-ranked distances besides the graph's rows."""

    lambda_: float
    distance: str  # squared | toolkit
    metric: str


@dataclass(frozen=True)
class RankSpec:
    """How every shard ranks: the protocol, the distances, how many top items to keep."""

    protocol: str
    junk_pids: tuple[int, ...]
    keep_top: int
    metric: str
    device: str = "cpu"
    block_rows: int | None = None
    rerank: RerankShardSpec | None = None

    def source(self, queries: LabelledVectors, gallery: LabelledVectors, shared: Any, extra: Any):
        """The shard's distance source: queries × this shard's gallery."""
        if self.rerank is None:
            from retrieval.eval.distances import EmbeddingDistances

            return EmbeddingDistances(queries.vectors, gallery.vectors, metric=self.metric, device=self.device)
        from retrieval.eval.rerank import RerankedDistances

        return RerankedDistances.from_graph_rows(
            queries.vectors, gallery.vectors, shared.query_rows, extra, shared.query_row_max,
            lambda_=self.rerank.lambda_, distance=self.rerank.distance, metric=self.rerank.metric, device=self.device)

    def to_distance(self, values: np.ndarray) -> np.ndarray:
        if self.rerank is not None:
            return values
        from retrieval.indexes.distance import key_to_distance

        return key_to_distance(values, self.metric)


@dataclass(frozen=True)
class ShardFirst:
    """Round 1 of one part: its size, its matches and its top items (local columns), their labels."""

    num_gallery: int
    matches: sharded.MatchList
    top: sharded.ShardTop | None
    top_ids: np.ndarray | None  # (Q, k_s) gallery ids of the top items
    top_match: np.ndarray | None
    top_junk: np.ndarray | None


@dataclass(frozen=True)
class ShardedRanks:
    """What the rounds give the driver: the ranks of every match and the merged top lists."""

    query: np.ndarray
    rank: np.ndarray
    num_gallery: int
    top_cols: np.ndarray | None
    top_values: np.ndarray | None
    top_ids: np.ndarray | None
    top_match: np.ndarray | None
    top_junk: np.ndarray | None
    shards: int


def _shard(part, split, queries: LabelledVectors, spec: RankSpec, shared, extra):
    gallery = load_part(part, split)
    if len(gallery) == 0:
        return gallery, None, None
    check_labels([("gallery", gallery)], spec.protocol)
    if gallery.dim != queries.dim:
        raise DataError(f"dimension mismatch: queries have {queries.dim} dimensions, gallery ({gallery.source}) "
                        f"has {gallery.dim}")
    labels = labels_between(queries, gallery, spec.protocol, spec.junk_pids)
    return gallery, spec.source(queries, gallery, shared, extra), labels


def first_pass_task(part, split, queries: LabelledVectors, spec: RankSpec, shared, extra) -> ShardFirst:
    """Round 1 on one gallery part (a Ray task)."""
    fault_point("first-pass")
    gallery, source, labels = _shard(part, split, queries, spec, shared, extra)
    if source is None:
        return ShardFirst(0, sharded.gather_matches([]), None, None, None, None)
    first = sharded.first_pass(source, labels, 0, spec.keep_top, spec.block_rows)
    if first.top is None:
        return ShardFirst(first.num_gallery, first.matches, None, None, None, None)
    rows = np.repeat(np.arange(len(queries)), first.top.cols.shape[1])
    cols = first.top.cols.ravel()
    shape = first.top.cols.shape
    return ShardFirst(first.num_gallery, first.matches, first.top, gallery.ids[cols].reshape(shape),
                      labels.is_match(rows, cols).reshape(shape), labels.is_junk(rows, cols).reshape(shape))


def count_task(part, split, queries: LabelledVectors, spec: RankSpec, shared, extra, matches: sharded.MatchList,
               offset: int) -> np.ndarray:
    """Round 2 on one gallery part (a Ray task): per match, the part's kept non-matches before it."""
    fault_point("count")
    _, source, labels = _shard(part, split, queries, spec, shared, extra)
    if source is None:
        return np.zeros(len(matches), np.int64)
    return sharded.count_pass(source, labels, matches, offset, spec.block_rows)


def rank_shards(view: GalleryView, queries: LabelledVectors, spec: RankSpec, *, shared: Any = None,
                extras: list[Any] | None = None, progress: ProgressCallback | None = None,
                stage: str = "rank") -> ShardedRanks:
    """Both rounds over the parts of ``view``; ``extras[i]`` goes to part i's tasks (e.g. graph rows)."""
    extras = extras if extras is not None else [None] * len(view.parts)
    queries_ref, shared_ref = put(queries), put(shared)
    extra_refs = [put(extra) for extra in extras]
    first_task = remote(first_pass_task)
    firsts: list[ShardFirst] = gather(
        [first_task.remote(part, view.split, queries_ref, spec, shared_ref, extra)
         for part, extra in zip(view.parts, extra_refs)], progress, f"{stage}: shards, round 1 of 2")
    sizes = [f.num_gallery for f in firsts]
    if sum(sizes) == 0:
        raise view.empty_error()
    offsets = sharded.shard_offsets(sizes)
    matches = sharded.gather_matches([_shifted(f.matches, o) for f, o in zip(firsts, offsets)])
    matches_ref = put(matches)
    count = remote(count_task)
    counts = gather(
        [count.remote(part, view.split, queries_ref, spec, shared_ref, extra, matches_ref, offset)
         for part, extra, offset, size in zip(view.parts, extra_refs, offsets, sizes) if size],
        progress, f"{stage}: shards, round 2 of 2")
    query, rank = sharded.match_ranks_from_counts(matches, counts)
    top = _merged_top(firsts, offsets, spec.keep_top)
    return ShardedRanks(query, rank, sum(sizes), *top, shards=len(view.parts))


def _shifted(matches: sharded.MatchList, offset: int) -> sharded.MatchList:
    return sharded.MatchList(matches.query, matches.value, matches.col + offset)


def _merged_top(firsts: list[ShardFirst], offsets: list[int], keep_top: int):
    with_top = [(f, o) for f, o in zip(firsts, offsets) if f.top is not None]
    if keep_top <= 0 or not with_top:
        return None, None, None, None, None
    tops = [sharded.ShardTop(f.top.cols + o, f.top.values) for f, o in with_top]
    order = sharded.merge_order(tops, keep_top)
    cat = lambda arrays: np.take_along_axis(np.concatenate(arrays, axis=1), order, axis=1)  # noqa: E731
    return (cat([t.cols for t in tops]), cat([t.values for t in tops]), cat([f.top_ids for f, _ in with_top]),
            cat([f.top_match for f, _ in with_top]), cat([f.top_junk for f, _ in with_top]))


def ranking_result(ranks: ShardedRanks, queries: LabelledVectors, spec: RankSpec, *, ap_variant: str, max_rank: int,
                   metric_name: str):
    """The ``RankingResult`` of the merged ranks, as ``eval.evaluate.evaluate_ranking`` gives it."""
    from retrieval.eval.evaluate import evaluate_from_ranks, rankings_table

    table = None
    if ranks.top_cols is not None:
        num_queries, k = ranks.top_cols.shape
        rows = np.repeat(np.arange(num_queries), k)
        table = rankings_table(queries.ids[rows], np.tile(np.arange(1, k + 1), num_queries), ranks.top_ids.ravel(),
                               spec.to_distance(ranks.top_values).ravel(), ranks.top_match.ravel(),
                               ranks.top_junk.ravel())
    market = spec.protocol == "market"
    return evaluate_from_ranks(
        ranks.query, ranks.rank, queries.pid, queries.camid if market else None, num_gallery=ranks.num_gallery,
        protocol=spec.protocol, ap_variant=ap_variant, query_ids=queries.ids, max_rank=max_rank,
        metric=metric_name, rankings=table,
    )
