"""The evaluate job: options -> plain stage (embeddings or an index's top-k lists) -> optional
query expansion / DBA (the plain stage is kept as ``before_expansion``) -> optional k-reciprocal
re-ranking -> optional bootstrap intervals -> a run folder. Multi-query pooling, when asked,
replaces the query vectors first (``retrieval.jobs.expand``).

Both doors call it: ``retrieve evaluate`` (``retrieval.cli.eval_commands``) and the notebook API
(``retrieval.evaluate``, ``Gallery.evaluate``, ``EvaluationResult.save``). They differ only in how
they gather inputs and show the result; the numbers, the run record and the run tables come from
here, so the same evaluation gives the same run folder through either door.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.common.metrics import ALIGNED, RANKING_METRICS
from retrieval.eval.evaluate import KEEP_TOP
from retrieval.indexes.distance import metric_from_name
from retrieval.common.progress import ProgressCallback, no_progress
from retrieval.errors import OptionError
from retrieval.jobs.expand import expanded_sets, pooled_queries
from retrieval.labels import DEFAULT_JUNK_PIDS, LabelledVectors, check_dimensions, check_labels
from retrieval.run_schema import input_paths, ranking_tables, run_record

MAX_RANK = 50  # the CMC curve is always stored up to rank 50 (further when cmc_ranks asks)
TABLE_RANKS = (1, 5, 10, 20)
METRICS = RANKING_METRICS
MULTI_QUERY = ("mean", "max")
DEFAULT_CMC_MODE = "multi-gallery-shot"


# ------------------------------------------------------------------------------------- options


@dataclass(frozen=True)
class RerankOptions:
    """k-reciprocal re-ranking (Zhong et al. 2017): k1, k2, λ, the distance it starts from."""

    k1: int = 20
    k2: int = 6
    lambda_: float = 0.3
    distance: str = "squared"  # squared (the paper) | toolkit
    exclude_junk: bool = False  # leave junk-pid items out of the graph

    def check(self) -> None:
        if self.k1 < 1:
            raise OptionError(f"k1 must be ≥ 1, got {self.k1}", "--k1")
        if self.k2 < 1:
            raise OptionError(f"k2 must be ≥ 1, got {self.k2}", "--k2")
        if self.k2 > self.k1:
            raise OptionError(f"k2 must not exceed k1 (k2 = {self.k2}, k1 = {self.k1})", "--k2")
        if not 0.0 <= self.lambda_ <= 1.0:
            raise OptionError(f"lambda must be within [0, 1], got {self.lambda_}", "--lambda", "lambda_")


@dataclass(frozen=True)
class IndexOptions:
    """Top-k mode: score an index's answers (AP labelled mAP@k)."""

    path: Path
    k: int = 100
    nprobe: int | None = None
    topk_ap: str = "in-list"  # in-list | min-r-k


@dataclass(frozen=True)
class EvaluateOptions:
    """Everything an evaluation depends on besides its inputs (the run's ``parameters``)."""

    metric: str | None = None  # None: euclidean (with an index: the index's metric, unchecked)
    protocol: str = "market"
    junk_pids: tuple[int, ...] = DEFAULT_JUNK_PIDS
    ap: str = "standard"
    cmc_ranks: tuple[int, ...] = TABLE_RANKS
    cmc_mode: str | None = DEFAULT_CMC_MODE  # None: the data's default (a layout's metadata), else multi
    repeats: int = 10
    seed: int = 0
    device: str = "auto"
    rerank: RerankOptions | None = None
    index: IndexOptions | None = None
    ci: float | None = None
    keep_top: int = KEEP_TOP
    max_rank: int | None = None  # None: 50, or the largest of cmc_ranks when that is more
    block_rows: int | None = None
    expand: Any = None  # eval.expansion.Expansion (jobs.expand.expansion_option): before ranking and re-ranking
    multi_query: str | None = None  # mean | max: queries pooled over (pid, camid)
    local_weight: float | None = None  # metric aligned: w of global + w · local (None: 1)

    @property
    def distance(self) -> str:
        return self.metric or "euclidean"

    @property
    def aligned_weight(self) -> float | None:
        """w of the aligned distance (global + w · local); None for the other metrics."""
        if self.metric != ALIGNED:
            return None
        from retrieval.eval.aligned import DEFAULT_LOCAL_WEIGHT

        return DEFAULT_LOCAL_WEIGHT if self.local_weight is None else float(self.local_weight)

    @property
    def stored_ranks(self) -> int:
        """How far the CMC curve goes: ``max_rank`` when given, else 50 or further when a table rank asks."""
        return self.max_rank if self.max_rank is not None else max(MAX_RANK, max(self.cmc_ranks, default=1))

    def check(self) -> None:
        if not self.cmc_ranks or min(self.cmc_ranks) < 1:
            raise OptionError(f"ranks must be integers ≥ 1, got {list(self.cmc_ranks)}", "--cmc-ranks")
        if self.max_rank is not None and self.max_rank < 1:
            raise OptionError(f"must be at least 1, got {self.max_rank}", "--max-rank")
        if self.ci is not None and not 0.0 < self.ci < 1.0:
            raise OptionError(f"the confidence level must be within (0, 1), got {self.ci}", "--ci")
        if self.metric is not None and self.metric not in METRICS:
            raise OptionError(f"unknown metric {self.metric!r}; expected one of {', '.join(METRICS)}", "--metric")
        if self.index is not None and self.index.k < 1:
            raise OptionError(f"must be at least 1, got {self.index.k}", "--k")
        if self.rerank is not None:
            self.rerank.check()
        if self.expand is not None:
            if self.index is not None:
                raise OptionError("--expand needs the embeddings' full rankings, not an index's top-k lists", "--expand")
        if self.multi_query is not None and self.multi_query not in MULTI_QUERY:
            raise OptionError(f"unknown multi-query pooling {self.multi_query!r}; expected mean or max", "--multi-query")
        self._check_aligned()

    def check_on_cluster(self) -> None:
        """What a Ray evaluation cannot do (checked before a cluster is started)."""
        if self.index is not None:
            return  # a sharded index is searched on the cluster; the rest runs here
        if self.expand is not None or self.multi_query is not None:
            raise OptionError("query expansion, DBA and multi-query pooling need the whole gallery in one process; "
                              "they are not available with --ray", "--expand" if self.expand is not None else "--multi-query")
        if self.metric == ALIGNED:
            raise OptionError("the aligned distance ranks in one process; it is not available with --ray", "--metric")

    def _check_aligned(self) -> None:
        if self.metric != ALIGNED:
            if self.local_weight is not None:
                raise OptionError("the local weight is the aligned distance's (--metric aligned)", "--local-weight")
            return
        if self.local_weight is not None and not (math.isfinite(self.local_weight) and self.local_weight >= 0):
            raise OptionError(f"must be a finite number ≥ 0, got {self.local_weight}", "--local-weight")
        for given, flag, what in ((self.index, "--index", "an index's top-k lists hold global distances only"),
                                  (self.expand, "--expand", "expansion averages the global embeddings, not the parts"),
                                  (self.multi_query, "--multi-query", "pooling averages the global embeddings, "
                                                                      "not the parts")):
            if given is not None:
                raise OptionError(f"not available with --metric aligned: {what}", flag)

    def parameters(self, compute_device: str, splits: dict[str, str | None]) -> dict[str, Any]:
        """The run.json ``parameters`` of this evaluation."""
        rerank = self.rerank or RerankOptions()
        index, expand = self.index, self.expand
        return {
            **splits,
            "metric": self.distance, "protocol": self.protocol, "junk_pids": list(self.junk_pids), "ap": self.ap,
            "cmc_ranks": list(self.cmc_ranks), "cmc_mode": self.cmc_mode, "repeats": self.repeats,
            "device": self.device, "compute_device": compute_device, "rerank": self.rerank is not None,
            "k1": rerank.k1, "k2": rerank.k2, "lambda": rerank.lambda_, "rerank_distance": rerank.distance,
            "rerank_exclude_junk": rerank.exclude_junk,
            "index": None if index is None else str(Path(index.path).absolute()),
            "k": None if index is None else index.k, "nprobe": None if index is None else index.nprobe,
            "topk_ap": None if index is None else index.topk_ap, "ci": self.ci, "seed": self.seed,
            "max_rank": self.stored_ranks, "keep_top": self.keep_top,
            "expand": None if expand is None else list(expand.methods),
            "qe_k": None if expand is None else expand.qe_k, "qe_alpha": None if expand is None else expand.qe_alpha,
            "dba_k": None if expand is None else expand.dba_k, "multi_query": self.multi_query,
            "local_weight": self.aligned_weight,
        }


# ------------------------------------------------------------------------------------- the result


@dataclass(frozen=True)
class Evaluation:
    """One evaluation: the final stage (re-ranked when asked), the stage before re-ranking (``plain``:
    after expansion when expanded), the stage before expansion, and how it was made."""

    final: Any  # eval.evaluate.RankingResult
    plain: Any  # the same object when not re-ranked
    options: EvaluateOptions
    compute_device: str
    rerank_params: dict | None = None
    ci: dict | None = None
    splits: dict = field(default_factory=lambda: {"query_split": None, "gallery_split": None})
    inputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    unexpanded: Any = None  # the ranking before expansion (None: not expanded)
    expansion: dict | None = None  # eval.expansion.Expansion.to_dict() of the expansion that ran
    multi_query: dict | None = None  # eval.multi_query.PooledQueries.to_dict() of the pooling
    cluster: dict | None = None  # where it ran, when on a Ray cluster (run.json "cluster")

    @property
    def reranked(self) -> bool:
        return self.final is not self.plain

    def summary(self) -> dict[str, Any]:
        """The ``--json`` object (``run_dir`` is added when the run is saved): the final stage's metrics."""
        result = self.final.to_dict()
        result["rerank"] = self.rerank_params
        result["expansion"] = self.expansion
        result["multi_query"] = self.multi_query
        if self.reranked:
            result["before_rerank"] = _headline(self.plain)
        if self.unexpanded is not None:
            result["before_expansion"] = _headline(self.unexpanded)
        if self.ci is not None:
            result["ci"] = self.ci
        return result

    def parameters(self) -> dict[str, Any]:
        return self.options.parameters(self.compute_device, self.splits)

    def tables(self):
        return ranking_tables(self.final, self.plain, self.options.cmc_ranks, unexpanded=self.unexpanded)


def _headline(result) -> dict[str, Any]:
    """The metrics of an earlier stage kept in the ``--json`` object (``before_rerank`` / ``before_expansion``)."""
    values = result.to_dict()
    out = {key: values[key] for key in (result.ap_key, "mINP", "mAP_at_R", "cmc")}
    if result.topk is not None:
        out["topk"] = result.topk
    return out


# ------------------------------------------------------------------------------------- the stages


def evaluate(queries: LabelledVectors, gallery: LabelledVectors | None, options: EvaluateOptions, *,
             index_handle=None, splits: dict | None = None, inputs: dict | None = None,
             progress: ProgressCallback | None = None, cluster=None) -> Evaluation:
    """Run the evaluation ``options`` describe on labelled queries and gallery.

    ``gallery`` may be None in top-k mode when only the index holds it (no re-ranking then).
    ``index_handle``: an opened index (else ``options.index.path`` is opened when given; a sharded
    one searched on ``cluster`` when given).
    """
    from retrieval.eval.distances import resolve_device

    options.check()
    if options.cmc_mode is None:
        options = replace(options, cmc_mode=DEFAULT_CMC_MODE)
    progress = progress or no_progress
    check_labels([("queries", queries), ("gallery", gallery)], options.protocol)
    check_dimensions(queries, gallery)
    if (options.index is None or options.rerank is not None) and gallery is None:
        raise OptionError("the gallery's vectors are needed (no index top-k mode, or re-ranking)", "--gallery")
    compute_device = resolve_device(options.device)
    timings: dict[str, float] = {}
    notes: list[str] = []
    if options.metric == ALIGNED and compute_device != "cpu":
        notes.append("the aligned distance is computed on the CPU (float64 exact values and a float32 BLAS filter)")
        compute_device = "cpu"
    queries, multi_query = _pooled(queries, gallery, options, notes)
    clock = time.perf_counter()
    if options.index is not None or index_handle is not None:
        if options.expand is not None:
            raise OptionError("--expand needs the embeddings' full rankings, not an index's top-k lists", "--expand")
        plain = _index_stage(queries, gallery, options, index_handle, notes, progress, cluster)
        timings["index_search_and_rank"] = time.perf_counter() - clock
    else:
        plain = _ranking_stage(embedding_source(queries, gallery, options, compute_device), queries, gallery, options,
                               progress)
        timings["distances_and_rank"] = time.perf_counter() - clock
    unexpanded = None
    if options.expand is not None:
        clock = time.perf_counter()
        unexpanded, (queries, gallery, plain) = plain, _expansion_stage(queries, gallery, options, compute_device,
                                                                        progress)
        timings["expansion"] = time.perf_counter() - clock
    final, rerank_params = plain, None
    if options.rerank is not None:
        if options.index is not None or index_handle is not None:
            notes.append("re-ranking uses the embeddings (it needs query-query and gallery-gallery neighbourhoods), "
                         "not the index")
        clock = time.perf_counter()
        source = rerank_source(queries, gallery, options, compute_device, progress)
        final, rerank_params = _ranking_stage(source, queries, gallery, options, progress), source.params
        timings["rerank"] = time.perf_counter() - clock
    ci = confidence_intervals(final, options.ci, options.seed, notes) if options.ci is not None else None
    return Evaluation(final=final, plain=plain, options=options, compute_device=compute_device,
                      rerank_params=rerank_params, ci=ci, splits=dict(splits or {"query_split": None, "gallery_split": None}),
                      inputs=dict(inputs or default_inputs(queries, gallery)), timings=timings, notes=tuple(notes),
                      unexpanded=unexpanded, expansion=options.expand.to_dict() if options.expand else None,
                      multi_query=multi_query, cluster=None if cluster is None else cluster.describe())


def _pooled(queries: LabelledVectors, gallery, options: EvaluateOptions, notes: list[str]):
    """The queries after multi-query pooling (when asked) and the pooling's record."""
    if options.multi_query is None:
        return queries, None
    if gallery is not None and options.protocol == "leave-one-out":
        notes.append("multi-query under leave-one-out: the gallery keeps the unpooled vectors")
    return pooled_queries(queries, options.multi_query)


def _expansion_stage(queries, gallery, options: EvaluateOptions, device: str, progress):
    """The expanded sets and their ranking (query expansion / DBA, ``jobs.expand``)."""
    queries, gallery = expanded_sets(queries, gallery, options.expand, device, options.block_rows)
    ranking = _ranking_stage(embedding_source(queries, gallery, options, device), queries, gallery, options, progress)
    return queries, gallery, ranking


def evaluate_files(embeddings: Path, gallery_file: Path | None, query_split: str | None, gallery_split: str | None,
                   options: EvaluateOptions, progress: ProgressCallback | None = None, cluster=None) -> Evaluation:
    """Read the queries and gallery the split rules select (``jobs.inputs``) and evaluate them.

    ``cluster`` (``retrieval.distributed.cluster.Cluster``): rank over gallery shards on Ray; the
    gallery is read by the workers, never here (``evaluate_on_cluster``), with the same results.
    """
    from retrieval.jobs.inputs import evaluation_sets

    options.check()
    options, note = with_data_cmc_mode(options, embeddings)
    if cluster is not None and options.index is None:
        evaluation = evaluate_on_cluster(embeddings, gallery_file, query_split, gallery_split, options, cluster,
                                         progress)
        return replace(evaluation, notes=(note, *evaluation.notes)) if note else evaluation
    clock = time.perf_counter()
    index = None if options.index is None else options.index.path
    sets = evaluation_sets(embeddings, gallery_file, query_split, gallery_split, options.protocol,
                           need_gallery=index is None or options.rerank is not None, index=index)
    seconds = time.perf_counter() - clock
    evaluation = evaluate(sets.queries, sets.gallery, options, splits=sets.splits, inputs=sets.inputs,
                          progress=progress, cluster=cluster)
    if note:
        evaluation = replace(evaluation, notes=(note, *evaluation.notes))
    return with_timing(evaluation, "load", seconds)


def with_data_cmc_mode(options: EvaluateOptions, embeddings: Path) -> tuple[EvaluateOptions, str | None]:
    """Options with the CMC mode the data asks for (a layout's ``retrieve.cmc_mode``) when none was given."""
    if options.cmc_mode is not None:
        return options, None
    from retrieval.data.layouts import layout_defaults
    from retrieval.data.store import file_metadata

    mode = layout_defaults(file_metadata(embeddings)).get("cmc_mode")
    if mode is None or mode == DEFAULT_CMC_MODE:
        return replace(options, cmc_mode=DEFAULT_CMC_MODE), None
    note = (f"CMC {mode}: the default of this data set's layout (retrieve.cmc_mode in {embeddings.name}); "
            f"--cmc-mode {DEFAULT_CMC_MODE} for Market-style CMC")
    return replace(options, cmc_mode=mode), note


def evaluate_on_cluster(embeddings: Path, gallery_file: Path | None, query_split: str | None,
                        gallery_split: str | None, options: EvaluateOptions, cluster,
                        progress: ProgressCallback | None = None) -> Evaluation:
    """``evaluate_files`` on a Ray cluster: the queries are read here, the gallery by the workers."""
    from retrieval.distributed.evaluate import EvaluationPlan, evaluate_on_cluster as run_on_cluster
    from retrieval.eval.distances import resolve_device
    from retrieval.jobs.inputs import distributed_sets

    if options.cmc_mode != "multi-gallery-shot":
        raise OptionError("single-gallery-shot CMC samples one item per identity over the whole gallery; it is not "
                          "available with --ray", "--cmc-mode")
    options.check_on_cluster()
    clock = time.perf_counter()
    sets = distributed_sets(embeddings, gallery_file, query_split, gallery_split, options.protocol, need_gallery=True,
                            min_parts=cluster.workers)
    load_seconds = time.perf_counter() - clock
    check_labels([("queries", sets.queries)], options.protocol)
    compute_device = resolve_device(options.device)
    rerank = options.rerank
    plan = EvaluationPlan(
        metric=options.distance, protocol=options.protocol, junk_pids=tuple(options.junk_pids), ap_variant=options.ap,
        max_rank=options.stored_ranks, keep_top=options.keep_top, block_rows=options.block_rows,
        device="cpu" if compute_device == "cpu" else options.device,  # a GPU here: the workers resolve theirs
        rerank=None if rerank is None else {"k1": rerank.k1, "k2": rerank.k2, "lambda_": rerank.lambda_,
                                            "distance": rerank.distance, "exclude_junk": rerank.exclude_junk},
    )
    done = run_on_cluster(sets.queries, sets.gallery, plan, progress)
    notes: list[str] = []
    ci = confidence_intervals(done.final, options.ci, options.seed, notes) if options.ci is not None else None
    return Evaluation(final=done.final, plain=done.plain, options=options, compute_device=compute_device,
                      rerank_params=done.rerank_params, ci=ci, splits=sets.splits, inputs=sets.inputs,
                      timings={"load": load_seconds, **done.timings}, notes=tuple(notes),
                      cluster={**cluster.describe(), "shards": len(sets.gallery.parts)})


def default_inputs(queries: LabelledVectors, gallery: LabelledVectors | None) -> dict[str, Any]:
    """run.json ``inputs`` when the caller gave arrays or Embeddings objects: the files they came from."""
    query_file = queries.source or None
    gallery_file = gallery.source if gallery is not None and gallery.source else None
    if gallery_file == query_file:
        gallery_file = None
    return {**input_paths(embeddings=query_file), "content_hash": None, **input_paths(gallery=gallery_file),
            **input_paths(index=None)}


def embedding_source(queries, gallery, options: EvaluateOptions, device: str):
    if options.metric == ALIGNED:
        from retrieval.eval.aligned import AlignedDistances

        check_parts(queries, gallery)
        return AlignedDistances(queries.vectors, gallery.vectors, queries.parts, gallery.parts, queries.num_parts,
                                options.aligned_weight)
    from retrieval.eval.distances import EmbeddingDistances

    return EmbeddingDistances(queries.vectors, gallery.vectors, metric=options.distance, device=device)


def check_parts(queries: LabelledVectors, gallery: LabelledVectors) -> None:
    """One clear line when the aligned distance cannot be computed: no parts, or parts that differ."""
    from retrieval.data.errors import DataError

    for name, side in (("queries", queries), ("gallery", gallery)):
        if side.parts is None:
            where = f"{side.source}: " if side.source else ""
            raise DataError(f"{where}the {name} have no 'parts' column; --metric aligned needs part features "
                            "(retrieve embed writes them for a model trained with --parts P)")
    if queries.num_parts != gallery.num_parts or queries.parts.shape[1] != gallery.parts.shape[1]:
        raise DataError(f"the queries have {queries.num_parts} parts of {queries.parts.shape[1] // queries.num_parts} "
                        f"values, the gallery {gallery.num_parts} of {gallery.parts.shape[1] // gallery.num_parts}")


def _ranking_stage(source, queries: LabelledVectors, gallery: LabelledVectors, options: EvaluateOptions, progress):
    from retrieval.eval.evaluate import evaluate_ranking

    market = options.protocol == "market"
    return evaluate_ranking(
        source, queries.pid, gallery.pid, queries.camid if market else None, gallery.camid if market else None,
        protocol=options.protocol, junk_pids=options.junk_pids, ap_variant=options.ap, query_ids=queries.ids,
        gallery_ids=gallery.ids, max_rank=options.stored_ranks, keep_top=options.keep_top, cmc_mode=options.cmc_mode,
        repeats=options.repeats, seed=options.seed, block_rows=options.block_rows, metric=options.distance,
        progress=progress,
    )


def rerank_source(queries, gallery, options: EvaluateOptions, device: str, progress):
    from retrieval.eval.rerank import RerankedDistances

    rerank = options.rerank
    exclude = None
    if rerank.exclude_junk:
        exclude = np.concatenate([np.isin(queries.pid, options.junk_pids), np.isin(gallery.pid, options.junk_pids)])
    graph_size = len(queries) + len(gallery) - (0 if exclude is None else int(exclude.sum()))
    if rerank.k1 >= graph_size:
        raise OptionError(f"k1 must be smaller than the {graph_size} items of the re-ranking graph, got {rerank.k1}",
                          "--k1")
    if options.metric == ALIGNED:
        from retrieval.eval.aligned import AlignedReranked

        check_parts(queries, gallery)
        return AlignedReranked(
            queries.vectors, gallery.vectors, queries.parts, gallery.parts, queries.num_parts,
            local_weight=options.aligned_weight, k1=rerank.k1, k2=rerank.k2, lambda_=rerank.lambda_,
            distance=rerank.distance, exclude_from_graph=exclude, progress=progress,
        )
    return RerankedDistances(
        queries.vectors, gallery.vectors, k1=rerank.k1, k2=rerank.k2, lambda_=rerank.lambda_,
        distance=rerank.distance, metric=options.distance, exclude_from_graph=exclude, progress=progress, device=device,
    )


def _index_stage(queries: LabelledVectors, gallery: LabelledVectors | None, options: EvaluateOptions, handle,
                 notes: list[str], progress, cluster=None):
    """Search the index with the queries and score its top-k lists (AP labelled mAP@k)."""
    from retrieval.eval.evaluate import evaluate_topk

    index = options.index or IndexOptions(path=Path(handle.path))
    if handle is None:
        from retrieval.distributed.index import open_index

        handle = open_index(index.path, device=options.device, cluster=cluster, progress=progress)
    if options.metric is not None:
        handle.check_metric(options.metric)
    if gallery is not None and gallery.vectors.shape[1] > 0:
        from retrieval.data.hashing import content_hash

        handle.check_content_hash(content_hash(gallery.ids, gallery.vectors))
    else:
        notes.append("the gallery's embeddings are not in the file: the index's content hash was not checked")
    gallery_pid, gallery_camid = index_row_labels(handle, options.protocol)
    if index.k > handle.count:
        raise OptionError(f"k = {index.k} is larger than the index's {handle.count} items", "--k")
    distances, found = handle.search(queries.vectors, index.k, nprobe=index.nprobe)
    market = options.protocol == "market"
    return evaluate_topk(
        found, distances, queries.pid, gallery_pid, queries.camid if market else None, gallery_camid,
        protocol=options.protocol, junk_pids=options.junk_pids, ap_variant=options.ap, query_ids=queries.ids,
        gallery_ids=handle.row_ids(np.arange(handle.count)), max_rank=options.stored_ranks,
        keep_top=options.keep_top, metric=index_distance_name(handle.metric, handle.is_exact), topk_ap=index.topk_ap,
        progress=progress,
    )


def index_row_labels(handle, protocol: str) -> tuple[np.ndarray, np.ndarray | None]:
    """The gallery pid (and camid under market) of an index's rows; an error when the protocol lacks them."""
    from retrieval.data.errors import DataError
    from retrieval.indexes.errors import FaissIndexError

    gallery_pid = complete_int_column(handle.rows, "pid")
    if gallery_pid is None:
        raise FaissIndexError(f"{handle.path}: the index's rows carry no pid; it cannot be evaluated")
    if protocol != "market":
        return gallery_pid, None
    gallery_camid = complete_int_column(handle.rows, "camid")
    if gallery_camid is None:
        raise DataError(f"{handle.path}: the index's rows carry no camid (use --protocol no-camera)")
    return gallery_pid, gallery_camid


def complete_int_column(table, name: str) -> np.ndarray | None:
    """An integer column as int64 when every row has a value, else None."""
    if name not in table.column_names or table.column(name).null_count:
        return None
    return np.asarray(table.column(name).to_numpy(), dtype=np.int64)


def index_distance_name(index_metric: str, exact: bool) -> str:
    base = metric_from_name(index_metric).value
    return f"{base} (index {index_metric}, {'exact' if exact else 'approximate'})"


def confidence_intervals(result, level: float, seed: int, notes: list[str]) -> dict:
    """Bootstrap intervals over the valid queries for mAP (or mAP@k) and rank-1."""
    from retrieval.eval.confidence import bootstrap_mean_interval

    table = result.per_query
    valid = np.asarray(table.column("valid").to_pylist(), dtype=bool)
    ap = np.asarray(table.column("ap").to_pylist(), dtype=object)[valid].astype(np.float64)
    first = np.asarray(table.column("first_match_rank").fill_null(0).to_pylist(), dtype=np.int64)[valid]
    out = {"level": level, "seed": seed, result.ap_key: list(bootstrap_mean_interval(ap, confidence=level, seed=seed))}
    if result.cmc_mode == "multi-gallery-shot":
        out["rank-1"] = list(bootstrap_mean_interval((first == 1).astype(np.float64), confidence=level, seed=seed))
    else:  # single-gallery-shot rank-1 is an average over samplings, not a per-query 0/1 value
        out["rank-1"] = None
        notes.append("no bootstrap interval for rank-1 under single-gallery-shot CMC")
    return out


# ------------------------------------------------------------------------------------- the run folder


def save(evaluation: Evaluation, run_dir: Path, *, command: str, overwrite: bool) -> Path:
    """Write the evaluation's run folder (kind ``evaluate``); the ``result`` is the ``--json`` object."""
    from retrieval.runs import write_run

    result = {**evaluation.summary(), "run_dir": str(run_dir)}
    record = run_record("evaluate", command, evaluation.parameters(), evaluation.inputs, evaluation.timings, result,
                        cluster=evaluation.cluster)
    return write_run(run_dir, record, evaluation.tables(), overwrite=overwrite)


def with_timing(evaluation: Evaluation, name: str, seconds: float) -> Evaluation:
    """The evaluation with one more timing (e.g. reading the files) first in its timings."""
    return replace(evaluation, timings={name: seconds, **evaluation.timings})

