"""Query–gallery evaluation: blocked distances -> sort-free match ranks -> CMC, mAP, mINP, mAP@R.

``evaluate_ranking`` walks a ``DistanceSource`` one query block at a time and reduces each block
to per-query results at once; ``evaluate_topk`` scores ranked lists returned by an index. Both
return a frozen ``RankingResult``. Conventions (protocols.md §1): junk removed before ranking,
ties ordered by gallery row (a stable sort), queries without a valid match skipped and counted.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from retrieval.eval.average_precision import (
    AP_VARIANTS,
    average_precision,
    average_precision_at_r,
    inverse_negative_penalty,
    r_precision,
)
from retrieval.eval.cmc import CMC_MODES, cmc_curve, first_match_ranks, query_cmc_hits, single_gallery_shot_hits
from retrieval.eval.distances import DistanceSource, block_rows_for
from retrieval.eval.errors import EvaluationError
from retrieval.eval.protocol import PROTOCOLS, RankingLabels
from retrieval.eval.ranking import match_ranks, ranked_list_match_ranks
from retrieval.common.progress import ProgressCallback


KEEP_TOP = 10  # items per query kept in the rankings (each with its exact distance); the CLI's --keep-top

# Top-k mode: what AP@k divides by (see evaluate_topk), and that convention in words.
TOPK_AP_DENOMINATORS = ("in-list", "min-r-k")
TOPK_AP_CONVENTIONS = {
    "in-list": "AP of each top-{k} list over the true matches found in it (0 without one); "
               "not the full-ranking mAP, and higher than it when lists miss matches",
    "min-r-k": "AP of each top-{k} list over min(R, {k}), R = the query's true matches in the whole gallery; "
               "not the full-ranking mAP",
}

PER_QUERY_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("pid", pa.int64()),
        ("camid", pa.int64()),
        ("valid", pa.bool_()),
        ("ap", pa.float64()),
        ("inp", pa.float64()),
        ("first_match_rank", pa.int64()),
        ("num_matches", pa.int64()),
        ("r_precision", pa.float64()),
    ]
)
RANKINGS_SCHEMA = pa.schema(
    [
        ("query_id", pa.string()),
        ("rank", pa.int64()),
        ("gallery_id", pa.string()),
        ("distance", pa.float64()),
        ("is_match", pa.bool_()),
        ("is_junk", pa.bool_()),
        ("kept_rank", pa.int64()),  # the protocol's rank (junk removed); null for junk items
    ]
)


@dataclass(frozen=True)
class RankingResult:
    """Aggregate metrics (fractions) over the valid queries, per-query table and top rankings.

    ``cmc[i]`` is rank-(i+1). In top-k mode (``topk`` = k) ``mAP`` holds AP over the returned
    lists (labelled ``mAP@k`` everywhere it is shown), and mINP / mAP@R are NaN unless every
    valid query's matches (resp. its first R kept items) lie inside its list.
    """

    mAP: float
    mINP: float
    mAP_at_R: float
    R_precision: float
    cmc: np.ndarray
    num_queries: int
    num_valid_queries: int
    num_gallery: int
    protocol: str
    ap_variant: str
    metric: str
    topk: int | None
    cmc_mode: str
    per_query: pa.Table = field(repr=False)
    rankings: pa.Table = field(repr=False)
    topk_ap: str | None = None  # top-k mode: which AP@k denominator (TOPK_AP_DENOMINATORS)

    @property
    def ap_key(self) -> str:
        return "mAP" if self.topk is None else "mAP@k"

    def rank(self, k: int) -> float:
        """CMC rank-k (fraction); an error for k < 1 or beyond the computed curve."""
        if not 1 <= k <= len(self.cmc):
            known = f"1..{len(self.cmc)}"
            why = " (top-k lists shorter than that)" if self.topk is not None else ""
            raise EvaluationError(f"CMC rank-{k} is not available: ranks {known} were computed{why}")
        return float(self.cmc[k - 1])

    def to_dict(self) -> dict[str, Any]:
        """The metric keys of ``retrieve evaluate --json`` (values are fractions)."""
        out: dict[str, Any] = {
            "protocol": self.protocol,
            "ap_variant": self.ap_variant,
            "metric": self.metric,
            "cmc_mode": self.cmc_mode,
            "ties": "gallery row order (stable sort)",
            "num_queries": self.num_queries,
            "num_gallery": self.num_gallery,
            "num_valid_queries": self.num_valid_queries,
        }
        if self.topk is not None:
            out["topk"] = self.topk
            out["topk_ap"] = self.topk_ap
        out[self.ap_key] = _finite_or_none(self.mAP)
        out["mINP"] = _finite_or_none(self.mINP)
        out["mAP_at_R"] = _finite_or_none(self.mAP_at_R)
        out["R_precision"] = _finite_or_none(self.R_precision)
        out["cmc"] = {str(i + 1): float(v) for i, v in enumerate(self.cmc)}
        return out


def _finite_or_none(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


@dataclass
class _Inputs:
    """Labels and ids shared by both evaluation modes (``labels`` None: the gallery's are elsewhere,
    e.g. on the shards of a distributed evaluation)."""

    labels: RankingLabels | None
    query_ids: np.ndarray
    gallery_ids: np.ndarray | None
    query_camid: np.ndarray | None
    query_pid: np.ndarray
    protocol: str


def _prepare(
    num_queries, num_gallery, query_pid, gallery_pid, query_camid, gallery_camid, protocol, junk_pids,
    query_ids, gallery_ids, ap_variant, max_rank,
) -> _Inputs:
    if ap_variant not in AP_VARIANTS:
        raise EvaluationError(f"unknown AP variant {ap_variant!r}; expected one of {', '.join(AP_VARIANTS)}")
    if max_rank < 1:
        raise EvaluationError(f"max_rank must be at least 1, got {max_rank}")
    if num_queries == 0:
        raise EvaluationError("no queries to evaluate (the query set is empty)")
    if num_gallery == 0:
        raise EvaluationError("no gallery items to rank (the gallery is empty)")
    if len(query_pid) != num_queries:
        raise EvaluationError(f"query pid has {len(query_pid)} entries for {num_queries} queries")
    if len(gallery_pid) != num_gallery:
        raise EvaluationError(f"gallery pid has {len(gallery_pid)} entries for {num_gallery} gallery items")
    labels = RankingLabels(
        query_pid, gallery_pid, query_camid, gallery_camid,
        protocol=protocol, junk_pids=junk_pids, query_ids=query_ids, gallery_ids=gallery_ids,
    )
    query_ids = _ids(query_ids, num_queries, "q")
    gallery_ids = _ids(gallery_ids, num_gallery, "g")
    camid = None if query_camid is None else np.asarray(query_camid, dtype=np.int64)
    return _Inputs(labels, query_ids, gallery_ids, camid, labels.query_pid, protocol)


def _ids(ids: np.ndarray | None, count: int, prefix: str) -> np.ndarray:
    if ids is None:
        return np.array([f"{prefix}{i}" for i in range(count)], dtype=object)
    ids = np.asarray(ids, dtype=object)
    if len(ids) != count:
        raise EvaluationError(f"{len(ids)} ids given for {count} items")
    return ids


def evaluate_ranking(
    source: DistanceSource,
    query_pid: np.ndarray,
    gallery_pid: np.ndarray,
    query_camid: np.ndarray | None = None,
    gallery_camid: np.ndarray | None = None,
    *,
    protocol: str = "market",
    junk_pids: Iterable[int] = (-1,),
    ap_variant: str = "standard",
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    max_rank: int = 50,
    keep_top: int = KEEP_TOP,
    cmc_mode: str = "multi-gallery-shot",
    repeats: int = 10,
    seed: int = 0,
    block_rows: int | None = None,
    metric: str | None = None,
    progress: ProgressCallback | None = None,
) -> RankingResult:
    """Evaluate full rankings of every query against the whole gallery.

    ``source`` yields (b, G) distance blocks; pids (Q,) / (G,); camids needed for ``market``;
    ids needed for ``leave-one-out`` (and used to label the tables). ``keep_top`` items per
    query (stable order, junk included and flagged) go to ``rankings``; 0 keeps none.
    """
    if cmc_mode not in CMC_MODES:
        raise EvaluationError(f"unknown CMC mode {cmc_mode!r}; expected one of {', '.join(CMC_MODES)}")
    Q, G = source.num_queries, source.num_gallery
    inputs = _prepare(
        Q, G, query_pid, gallery_pid, query_camid, gallery_camid, protocol, junk_pids,
        query_ids, gallery_ids, ap_variant, max_rank,
    )
    labels = inputs.labels
    source, ranking_labels, columns = _without_junk_columns(source, labels)
    block_rows = block_rows or block_rows_for(source.num_gallery)
    rank_parts: list[tuple[np.ndarray, np.ndarray]] = []
    top_parts: list[tuple[int, np.ndarray, np.ndarray]] = []
    single_shot_parts: list[np.ndarray] = []
    done = 0
    # the GPU path's blocks stay on the device, where ranking selects its few entries; the
    # single-gallery-shot draw reads whole rows, so it takes host blocks
    ranking_blocks = getattr(source, "ranking_blocks", None)
    if ranking_blocks is None or cmc_mode == "single-gallery-shot":
        ranking_blocks = source.blocks
    for block in ranking_blocks(block_rows):
        if block.values.shape[1] != source.num_gallery:
            raise EvaluationError(
                f"distance block has {block.values.shape[1]} columns, expected {source.num_gallery} gallery items"
            )
        ranks = match_ranks(block, ranking_labels, keep_top=keep_top)
        rank_parts.append((ranks.query, ranks.rank))
        if keep_top > 0:
            top_cols = ranks.top_cols if columns is None else columns[ranks.top_cols]
            top_parts.append((block.start, top_cols, source.to_distance(ranks.top_values)))
        if cmc_mode == "single-gallery-shot":
            single_shot_parts.append(
                single_gallery_shot_hits(block, ranking_labels, max_rank=max_rank, repeats=repeats, seed=seed)
            )
        done += block.values.shape[0]
        if progress is not None:
            progress("rank", done, Q)
    query = np.concatenate([p[0] for p in rank_parts]) if rank_parts else np.empty(0, np.int64)
    rank = np.concatenate([p[1] for p in rank_parts]) if rank_parts else np.empty(0, np.int64)
    num_relevant = np.bincount(query, minlength=Q).astype(np.int64)
    single_shot = np.concatenate(single_shot_parts) if single_shot_parts else None
    return _assemble(
        inputs, query, rank, num_relevant, num_gallery=G, ap_variant=ap_variant, max_rank=max_rank,
        metric=metric or getattr(source, "metric", "precomputed"), topk=None, cmc_mode=cmc_mode,
        rankings=_rankings_table(inputs, top_parts), single_shot_hits=single_shot,
    )


# Off: gallery shards on Ray (``retrieval.distributed``) rank over every column, so a one-process
# run keeps junk-pid items in ``rankings`` too (flagged), and both give the same tables.
DROP_JUNK_COLUMNS = False


def _without_junk_columns(source, labels: RankingLabels):
    """The source and labels without the junk-pid gallery items, when the source can drop columns.

    Junk-pid items never count for any query (protocols §1), and every distance is exact, so
    leaving them out of the distance computation changes no rank and no metric; it only saves
    their share of the matrix product (a quarter of Market-1501's gallery). ``columns`` maps the
    remaining columns back to gallery rows (None when nothing was dropped).
    """
    junk = labels.gallery_is_junk_pid
    if not DROP_JUNK_COLUMNS or not junk.any() or junk.all() or not hasattr(source, "gallery_subset"):
        return source, labels, None
    columns = np.flatnonzero(~junk)
    return source.gallery_subset(columns), labels.gallery_subset(columns), columns


def evaluate_topk(
    topk_gallery_rows: np.ndarray,
    topk_distances: np.ndarray,
    query_pid: np.ndarray,
    gallery_pid: np.ndarray,
    query_camid: np.ndarray | None = None,
    gallery_camid: np.ndarray | None = None,
    *,
    protocol: str = "market",
    junk_pids: Iterable[int] = (-1,),
    ap_variant: str = "standard",
    query_ids: np.ndarray | None = None,
    gallery_ids: np.ndarray | None = None,
    max_rank: int = 50,
    keep_top: int = KEEP_TOP,
    metric: str = "index",
    topk_ap: str = "in-list",
    progress: ProgressCallback | None = None,
) -> RankingResult:
    """Evaluate ranked top-k lists (an index's answers): (Q, k) gallery rows, best first.

    Junk entries are dropped from each list; CMC is exact up to the shortest kept list; AP@k is
    Σ P(r)·rel(r) over the list divided by (``topk_ap``) ``in-list``: the true matches found in
    the list (AP of protocols §1 with the returned list as the ranking, as pytorch-metric-learning
    computes it; 0 when the list holds none), or ``min-r-k``: min(R, k), R = the query's true
    matches in the whole gallery (the recommender-systems AP@k).
    """
    if topk_ap not in TOPK_AP_DENOMINATORS:
        raise EvaluationError(f"unknown top-k AP denominator {topk_ap!r}; expected one of {', '.join(TOPK_AP_DENOMINATORS)}")
    rows = np.asarray(topk_gallery_rows, dtype=np.int64)
    dist = np.asarray(topk_distances)
    if rows.ndim != 2 or dist.shape != rows.shape:
        raise EvaluationError(f"top-k rows {rows.shape} and distances {dist.shape} must be equal (Q, k) arrays")
    Q, k = rows.shape
    G = len(gallery_pid)
    inputs = _prepare(
        Q, G, query_pid, gallery_pid, query_camid, gallery_camid, protocol, junk_pids,
        query_ids, gallery_ids, ap_variant, max_rank,
    )
    if k == 0:
        raise EvaluationError("top-k lists are empty (k = 0)")
    query, rank, kept_length = ranked_list_match_ranks(rows, 0, inputs.labels)
    num_relevant = inputs.labels.num_matches()
    if progress is not None:
        progress("rank", Q, Q)
    valid = num_relevant > 0
    shortest = known_cmc_ranks(query, kept_length, valid, k)
    if shortest == 0:
        empty = inputs.query_ids[valid & (kept_length == 0)]
        raise EvaluationError(
            f"the top-{k} lists of {len(empty)} queries (e.g. {empty[0]}) hold only junk items, so not even "
            f"rank-1 is known; use a larger k"
        )
    keep = min(keep_top, k)
    return _assemble(
        inputs, query, rank, num_relevant, num_gallery=G, ap_variant=ap_variant,
        max_rank=max(1, min(max_rank, shortest)), metric=metric, topk=k, cmc_mode="multi-gallery-shot",
        rankings=_rankings_table(inputs, [(0, rows[:, :keep], dist[:, :keep])]) if keep else _empty_rankings(),
        single_shot_hits=None, ap_denominator=_topk_ap_denominator(topk_ap, query, num_relevant, k),
        kept_length=kept_length, topk_ap=topk_ap,
    )


def evaluate_from_ranks(
    query: np.ndarray,
    rank: np.ndarray,
    query_pid: np.ndarray,
    query_camid: np.ndarray | None = None,
    *,
    num_gallery: int,
    protocol: str = "market",
    ap_variant: str = "standard",
    query_ids: np.ndarray | None = None,
    max_rank: int = 50,
    metric: str = "precomputed",
    rankings: pa.Table | None = None,
) -> RankingResult:
    """A full-ranking evaluation from ranks computed elsewhere (e.g. summed over gallery shards,
    ``eval.shards``): the kept rank of every true match, ``query`` grouped by row with ranks
    ascending (as ``evaluate_ranking`` collects them), and the ``rankings`` table if any. The same
    ranks give the same ``RankingResult`` as ``evaluate_ranking`` (multi-gallery-shot CMC)."""
    if protocol not in PROTOCOLS:
        raise EvaluationError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if ap_variant not in AP_VARIANTS:
        raise EvaluationError(f"unknown AP variant {ap_variant!r}; expected one of {', '.join(AP_VARIANTS)}")
    if max_rank < 1:
        raise EvaluationError(f"max_rank must be at least 1, got {max_rank}")
    query_pid = np.asarray(query_pid, dtype=np.int64)
    Q = len(query_pid)
    if Q == 0:
        raise EvaluationError("no queries to evaluate (the query set is empty)")
    if num_gallery == 0:
        raise EvaluationError("no gallery items to rank (the gallery is empty)")
    query = np.asarray(query, dtype=np.int64)
    num_relevant = np.bincount(query, minlength=Q).astype(np.int64)
    camid = None if query_camid is None else np.asarray(query_camid, dtype=np.int64)
    inputs = _Inputs(None, _ids(query_ids, Q, "q"), None, camid, query_pid, protocol)
    return _assemble(
        inputs, query, np.asarray(rank, dtype=np.int64), num_relevant, num_gallery=num_gallery,
        ap_variant=ap_variant, max_rank=max_rank, metric=metric, topk=None, cmc_mode="multi-gallery-shot",
        rankings=rankings if rankings is not None else _empty_rankings(), single_shot_hits=None,
    )


def known_cmc_ranks(query: np.ndarray, kept_length: np.ndarray, valid: np.ndarray, k: int) -> int:
    """The largest r for which every valid query's CMC value at rank r is known from its list.

    A query whose list holds a true match knows its whole curve; one without a match found knows
    only that it misses up to its kept list length (junk removed). Only the latter limit the curve.
    """
    found = np.zeros(len(valid), dtype=bool)
    found[query] = True
    limiting = valid & ~found
    return int(kept_length[limiting].min()) if limiting.any() else k


def _topk_ap_denominator(topk_ap: str, query: np.ndarray, num_relevant: np.ndarray, k: int) -> np.ndarray:
    if topk_ap == "min-r-k":
        return np.minimum(num_relevant, k)
    found = np.bincount(query, minlength=len(num_relevant))
    # a valid query whose list holds no true match scores AP 0 (0 / 1), not "unknown"
    return np.where(num_relevant > 0, np.maximum(found, 1), 0)


def _assemble(
    inputs: _Inputs,
    query: np.ndarray,
    rank: np.ndarray,
    num_relevant: np.ndarray,
    *,
    num_gallery: int,
    ap_variant: str,
    max_rank: int,
    metric: str,
    topk: int | None,
    cmc_mode: str,
    rankings: pa.Table,
    single_shot_hits: np.ndarray | None,
    ap_denominator: np.ndarray | None = None,
    kept_length: np.ndarray | None = None,
    topk_ap: str | None = None,
) -> RankingResult:
    Q = len(inputs.query_pid)
    protocol = inputs.protocol
    valid = num_relevant > 0
    num_valid = int(valid.sum())
    if num_valid == 0:
        raise EvaluationError(
            f"no valid query: none of the {Q} queries has a true match in the gallery under the "
            f"{protocol!r} protocol (check the pids, the splits and --protocol)"
        )
    ap = average_precision(query, rank, num_relevant, variant=ap_variant, denominator=ap_denominator)
    inp = inverse_negative_penalty(query, rank, num_relevant)
    r_prec = r_precision(query, rank, num_relevant)
    ap_at_r = average_precision_at_r(query, rank, num_relevant)
    if kept_length is not None:
        # top-k: R-precision and mAP@R are exact only when the first R kept items were returned
        incomplete = kept_length < num_relevant
        r_prec[incomplete] = np.nan
        ap_at_r[incomplete] = np.nan
    first = first_match_ranks(query, rank, Q)
    if single_shot_hits is not None:
        cmc = cmc_curve(single_shot_hits[valid])
    else:
        cmc = cmc_curve(query_cmc_hits(first[valid], max_rank))
    per_query = pa.table(
        {
            "query_id": pa.array([str(i) for i in inputs.query_ids], pa.string()),
            "pid": pa.array(inputs.query_pid, pa.int64()),
            "camid": pa.array(inputs.query_camid, pa.int64()) if inputs.query_camid is not None else pa.nulls(Q, pa.int64()),
            "valid": pa.array(valid),
            "ap": _nullable_float(ap, valid),
            "inp": _nullable_float(inp, valid),
            "first_match_rank": pa.array(first, pa.int64(), mask=~valid | (first == 0)),
            "num_matches": pa.array(num_relevant, pa.int64()),
            "r_precision": _nullable_float(r_prec, valid),
        },
        schema=PER_QUERY_SCHEMA,
    )
    return RankingResult(
        mAP=float(np.mean(ap[valid])),
        mINP=_mean_or_nan(inp[valid]),
        mAP_at_R=_mean_or_nan(ap_at_r[valid]),
        R_precision=_mean_or_nan(r_prec[valid]),
        cmc=cmc,
        num_queries=Q,
        num_valid_queries=num_valid,
        num_gallery=num_gallery,
        protocol=protocol,
        ap_variant=ap_variant,
        metric=metric,
        topk=topk,
        cmc_mode=cmc_mode,
        per_query=per_query,
        rankings=rankings,
        topk_ap=topk_ap,
    )


def _mean_or_nan(values: np.ndarray) -> float:
    """Mean, or NaN when any value is unknown (a metric is never silently partial)."""
    return float(np.mean(values)) if len(values) and not np.isnan(values).any() else float("nan")


def _nullable_float(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    return pa.array(values, pa.float64(), mask=~valid | np.isnan(values))


def _empty_rankings() -> pa.Table:
    return RANKINGS_SCHEMA.empty_table()


def _ranks_within_groups(counted: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """1-based running count of ``counted`` items, restarting where ``group_start`` is True."""
    running = np.cumsum(counted)
    before_group = (running - counted)[group_start]
    return running - np.repeat(before_group, np.diff(np.r_[np.flatnonzero(group_start), len(counted)]))


def _rankings_table(inputs: _Inputs, parts: list[tuple[int, np.ndarray, np.ndarray]]) -> pa.Table:
    """Top items per query in stable order, junk included and flagged; rank counts every item."""
    if not parts:
        return _empty_rankings()
    labels = inputs.labels
    rows = np.concatenate([np.repeat(np.arange(first, first + len(cols)), cols.shape[1]) for first, cols, _ in parts])
    cols = np.concatenate([c.ravel() for _, c, _ in parts])
    dist = np.concatenate([d.ravel() for _, _, d in parts]).astype(np.float64)
    rank = np.concatenate([np.tile(np.arange(1, c.shape[1] + 1), len(c)) for _, c, _ in parts])
    return rankings_table(inputs.query_ids[rows], rank, inputs.gallery_ids[cols], dist,
                          labels.is_match(rows, cols), labels.is_junk(rows, cols))


def rankings_table(query_ids: np.ndarray, rank: np.ndarray, gallery_ids: np.ndarray, distance: np.ndarray,
                   is_match: np.ndarray, is_junk: np.ndarray) -> pa.Table:
    """``rankings`` from flat per-entry arrays, grouped by query with ``rank`` 1, 2, ... in each group
    (the flags decided by the protocol wherever the gallery's labels are); kept ranks skip junk."""
    if len(rank) == 0:
        return _empty_rankings()
    junk = np.asarray(is_junk, dtype=bool)
    kept_rank = _ranks_within_groups(~junk, np.asarray(rank) == 1)
    return pa.table(
        {
            "query_id": pa.array(np.asarray(query_ids).astype(str), pa.string()),
            "rank": pa.array(rank, pa.int64()),
            "gallery_id": pa.array(np.asarray(gallery_ids).astype(str), pa.string()),
            "distance": pa.array(np.asarray(distance, dtype=np.float64), pa.float64()),
            "is_match": pa.array(np.asarray(is_match, dtype=bool)),
            "is_junk": pa.array(junk),
            "kept_rank": pa.array(kept_rank, pa.int64(), mask=junk),
        },
        schema=RANKINGS_SCHEMA,
    )
