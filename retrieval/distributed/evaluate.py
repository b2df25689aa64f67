"""The evaluate job's stages on a Ray cluster: plain ranks, then (when asked) re-ranked ranks.

``retrieval.jobs.evaluate`` calls ``evaluate_on_cluster`` with the queries (read by the driver)
and a ``GalleryView`` (read by the workers); the results are the ``RankingResult`` objects one
process gives for the same data, bit for bit.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from retrieval.common.progress import ProgressCallback, no_progress
from retrieval.distributed import ranking
from retrieval.distributed.shards import GalleryView
from retrieval.labels import LabelledVectors


@dataclass(frozen=True)
class EvaluationPlan:
    """The evaluation options the shards need (a subset of ``jobs.evaluate.EvaluateOptions``)."""

    metric: str
    protocol: str
    junk_pids: tuple[int, ...]
    ap_variant: str
    max_rank: int
    keep_top: int
    device: str = "cpu"
    block_rows: int | None = None
    rerank: dict | None = None  # k1, k2, lambda_, distance, exclude_junk


@dataclass
class ClusterEvaluation:
    plain: object  # eval.evaluate.RankingResult
    final: object
    rerank_params: dict | None
    timings: dict = field(default_factory=dict)


def evaluate_on_cluster(queries: LabelledVectors, view: GalleryView, plan: EvaluationPlan,
                        progress: ProgressCallback | None = None) -> ClusterEvaluation:
    progress = progress or no_progress
    spec = ranking.RankSpec(plan.protocol, plan.junk_pids, plan.keep_top, plan.metric, plan.device, plan.block_rows)
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    plain = _result(ranking.rank_shards(view, queries, spec, progress=progress, stage="rank"), queries, spec, plan)
    timings["distances_and_rank"] = time.perf_counter() - clock
    if plan.rerank is None:
        return ClusterEvaluation(plain, plain, None, timings)
    final, params, stage_times = _reranked(queries, view, plan, spec, progress)
    timings.update(stage_times)
    return ClusterEvaluation(plain, final, params, timings)


def _reranked(queries, view, plan: EvaluationPlan, spec: ranking.RankSpec, progress):
    from retrieval.distributed.rerank import build_graph

    options = plan.rerank
    clock = time.perf_counter()
    graph = build_graph(
        queries, view, k1=options["k1"], k2=options["k2"], power=2 if options["distance"] == "toolkit" else 1,
        metric=plan.metric, exclude_pids=tuple(plan.junk_pids) if options["exclude_junk"] else None,
        progress=progress,
    )
    graph_seconds = time.perf_counter() - clock
    clock = time.perf_counter()
    rerank_spec = ranking.RankSpec(
        plan.protocol, plan.junk_pids, plan.keep_top, plan.metric, plan.device, plan.block_rows,
        rerank=ranking.RerankShardSpec(options["lambda_"], options["distance"], plan.metric))
    ranks = ranking.rank_shards(view, queries, rerank_spec, shared=graph.shared, extras=graph.gallery_rows,
                                progress=progress, stage="re-ranked rank")
    final = _result(ranks, queries, rerank_spec, plan)
    params = {"k1": options["k1"], "k2": options["k2"], "lambda": options["lambda_"], "distance": options["distance"]}
    return final, params, {"rerank_graph": graph_seconds, "rerank_rank": time.perf_counter() - clock}


def _result(ranks, queries, spec, plan: EvaluationPlan):
    return ranking.ranking_result(ranks, queries, spec, ap_variant=plan.ap_variant, max_rank=plan.max_rank,
                                  metric_name=plan.metric)
