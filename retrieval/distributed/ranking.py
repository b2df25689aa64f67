"""Exact ranking over gallery shards on Ray: two rounds of shard tasks, the merge on the driver.

Round 1 (``first_pass_task``, one per gallery part): the exact values of the part's true matches
of every query (pairs known from the labels; no distance block); round 2 (``second_pass_task``,
the one pass over the part's distance blocks): for every match of every query, the part's kept
non-matches before it, and the candidates for each query's first items; round 3 (``top_task``,
only when rankings are kept; no block): the exact values and labels of the candidates that can
still be among a query's first items over all parts. The driver sums the counts and orders the
top items (``eval.shards``), then assembles the ``RankingResult`` as one process would
(``eval.evaluate.evaluate_from_ranks``): bit-identical ranks, metrics and tables.

The distances a shard ranks by come from a ``RankSpec``: plain embedding distances, or the
k-reciprocal re-ranked ones (the neighbourhood graph built by ``distributed.rerank``, its rows
for the shard passed beside it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from retrieval.common.progress import ProgressCallback
from retrieval.data.errors import DataError
from retrieval.distributed.shards import GalleryView, part_state
from retrieval.distributed.tasks import fault_point, gather, put, remote
from retrieval.eval import shards as sharded
from retrieval.eval.distances import block_rows_for
from retrieval.labels import LabelledVectors, check_labels, labels_between


# A worker's distance block stays about this size (the candidate arrays built from it up to ~10 times): a
# worker's memory is one part plus one block, whatever the gallery (results do not depend on it).
SHARD_BLOCK_BYTES = 16 << 20


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
    token: str = ""  # one ranking (its rounds share each part's state on a worker)

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
    """Round 1 of one part: its size and its true matches (local columns)."""

    num_gallery: int
    matches: sharded.MatchList


@dataclass(frozen=True)
class ShardTopValues:
    """Round 3 of one part: exact values and labels of its surviving top candidates."""

    values: np.ndarray
    ids: np.ndarray
    is_match: np.ndarray
    is_junk: np.ndarray


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
    """(gallery rows, distance source, labels) of one part, built once per worker for all rounds."""
    def make(gallery: LabelledVectors):
        if len(gallery) == 0:
            return None, None
        check_labels([("gallery", gallery)], spec.protocol)
        if gallery.dim != queries.dim:
            raise DataError(f"dimension mismatch: queries have {queries.dim} dimensions, gallery ({gallery.source}) "
                            f"has {gallery.dim}")
        return spec.source(queries, gallery, shared, extra), labels_between(queries, gallery, spec.protocol,
                                                                            spec.junk_pids)

    gallery, (source, labels) = part_state(part, split, spec.token, make)
    return gallery, source, labels


def first_pass_task(part, split, queries: LabelledVectors, spec: RankSpec, shared, extra) -> ShardFirst:
    """Round 1 on one gallery part (a Ray task): its size and the exact values of its true matches."""
    fault_point("first-pass")
    gallery, source, labels = _shard(part, split, queries, spec, shared, extra)
    if source is None:
        return ShardFirst(0, sharded.gather_matches([]))
    return ShardFirst(len(gallery), sharded.first_pass(source, labels, 0))


def second_pass_task(part, split, queries: LabelledVectors, spec: RankSpec, shared, extra,
                     matches: sharded.MatchList, offset: int) -> sharded.SecondPass:
    """Round 2 on one gallery part (a Ray task): per match, the part's kept non-matches before it,
    and the candidates for each query's first items."""
    fault_point("count")
    _, source, labels = _shard(part, split, queries, spec, shared, extra)
    block_rows = spec.block_rows or block_rows_for(source.num_gallery, SHARD_BLOCK_BYTES)
    return sharded.second_pass(source, labels, matches, offset, spec.keep_top, block_rows)


def top_task(part, split, queries: LabelledVectors, spec: RankSpec, shared, extra, rows: np.ndarray,
             cols: np.ndarray) -> ShardTopValues:
    """Round 3 on one gallery part (a Ray task): exact values and labels of chosen (query, local column) pairs."""
    gallery, source, labels = _shard(part, split, queries, spec, shared, extra)
    return ShardTopValues(np.asarray(source.exact(rows, cols)), gallery.ids[cols], labels.is_match(rows, cols),
                          labels.is_junk(rows, cols))


def rank_shards(view: GalleryView, queries: LabelledVectors, spec: RankSpec, *, shared: Any = None,
                extras: list[Any] | None = None, progress: ProgressCallback | None = None,
                stage: str = "rank") -> ShardedRanks:
    """Both rounds over the parts of ``view``; ``extras[i]`` goes to part i's tasks (e.g. graph rows)."""
    extras = extras if extras is not None else [None] * len(view.parts)
    spec = replace(spec, token=uuid.uuid4().hex)
    queries_ref, shared_ref = put(queries), put(shared)
    extra_refs = [put(extra) for extra in extras]
    rounds = 3 if spec.keep_top else 2
    first_task = remote(first_pass_task)
    firsts: list[ShardFirst] = gather(
        [first_task.remote(part, view.split, queries_ref, spec, shared_ref, extra)
         for part, extra in zip(view.parts, extra_refs)], progress, f"{stage}: shards, round 1 of {rounds}")
    sizes = [f.num_gallery for f in firsts]
    if sum(sizes) == 0:
        raise view.empty_error()
    offsets = sharded.shard_offsets(sizes)
    matches = sharded.gather_matches([_shifted(f.matches, o) for f, o in zip(firsts, offsets)])
    matches_ref = put(matches)
    used = [(part, extra, offset) for part, extra, offset, size in zip(view.parts, extra_refs, offsets, sizes) if size]
    k = min(spec.keep_top, sum(sizes))
    reduced = _SecondRound(len(matches), len(queries), k)
    second = remote(second_pass_task)
    gather([second.remote(part, view.split, queries_ref, spec, shared_ref, extra, matches_ref, offset)
            for part, extra, offset in used], progress, f"{stage}: shards, round 2 of {rounds}", on_result=reduced.take)
    query, rank = sharded.match_ranks_from_counts(matches, [reduced.before])
    top = (None,) * 5
    if spec.keep_top > 0:
        top = _top_items(used, reduced.top, view.split, queries_ref, spec, shared_ref, len(queries), k, progress,
                         stage)
    return ShardedRanks(query, rank, sum(sizes), *top, shards=len(view.parts))


class _SecondRound:
    """Round 2's results reduced as they arrive: the counts summed, the top candidates filtered
    (``eval.shards.reduce_candidates``), so the driver holds O(M + Q·k), however many parts."""

    def __init__(self, num_matches: int, num_queries: int, k: int):
        self.before = np.zeros(num_matches, np.int64)
        self.top: sharded.TopCandidates | None = None
        self.num_queries, self.k = num_queries, k

    def take(self, index: int, done: sharded.SecondPass) -> None:
        self.before += done.before
        if done.top is not None:
            self.top = sharded.reduce_candidates(self.top, done.top, self.num_queries, self.k)


def _shifted(matches: sharded.MatchList, offset: int) -> sharded.MatchList:
    return sharded.MatchList(matches.query, matches.value, matches.col + offset)


def _top_items(used, top: sharded.TopCandidates, split, queries_ref, spec: RankSpec, shared_ref, num_queries: int,
               k: int, progress, stage: str):
    """Round 3: the surviving candidates' exact values and labels (asked of the parts that hold
    them), then each query's first k."""
    starts = np.array([offset for _, _, offset in used])
    part_of = np.searchsorted(starts, top.col, side="right") - 1
    picked = [(top.query[part_of == i], top.col[part_of == i], offset) for i, (_, _, offset) in enumerate(used)]
    asked = [(u, p) for u, p in zip(used, picked) if len(p[0])]
    task = remote(top_task)
    values: list[ShardTopValues] = gather(
        [task.remote(part, split, queries_ref, spec, shared_ref, extra, rows, cols - offset)
         for (part, extra, _), (rows, cols, offset) in asked], progress, f"{stage}: shards, round 3 of 3")
    picked = [p for _, p in asked]
    query = np.concatenate([rows for rows, _, _ in picked])
    col = np.concatenate([cols for _, cols, _ in picked])
    value = np.concatenate([v.values for v in values])
    order = sharded.top_from_exact(query, col, value, num_queries, k)
    cat = lambda name: np.concatenate([getattr(v, name) for v in values])[order]  # noqa: E731
    return col[order], value[order], cat("ids"), cat("is_match"), cat("is_junk")


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
