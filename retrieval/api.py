"""The functional notebook API: ``retrieval.evaluate(queries, gallery, ...)`` -> ``EvaluationResult``.

A door onto the evaluate job (``retrieval.jobs.evaluate``), the same one ``retrieve evaluate``
uses: this module only turns Python arguments into the job's options and wraps its result for
notebooks: a rich ``_repr_html_`` table, ``.per_query`` / ``.rankings`` as pandas DataFrames (Arrow
tables when pandas is not installed), ``.plot_cmc()``, ``.to_dict()`` (the ``--json`` object) and
``.save()`` (the run folder the CLI would write for the same evaluation).
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from retrieval.errors import RetrieveError
from retrieval.jobs.evaluate import TABLE_RANKS, EvaluateOptions, Evaluation, IndexOptions, RerankOptions
from retrieval.labels import LabelledVectors, default_protocol, labelled  # noqa: F401  (public here too)
from retrieval.run_schema import ranking_metric_rows

PYTHON_COMMAND = "retrieval.evaluate (Python)"


def as_frame(table: pa.Table):
    """A pandas DataFrame when pandas is installed (the ``notebook`` extra), else the Arrow table."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        return table
    return table.to_pandas()


@dataclass(frozen=True)
class EvaluationResult:
    """The result of one evaluation (a ``jobs.evaluate.Evaluation``), shaped for notebooks."""

    evaluation: Evaluation
    command: str = PYTHON_COMMAND  # recorded in run.json by save()

    # --- numbers
    @property
    def final(self):
        """The final stage (re-ranked when asked): an ``eval.evaluate.RankingResult``."""
        return self.evaluation.final

    @property
    def plain(self):
        """The plain stage (the same object as ``final`` when not re-ranked)."""
        return self.evaluation.plain

    @property
    def rerank(self) -> dict | None:
        """The re-ranking parameters, None when not re-ranked."""
        return self.evaluation.rerank_params

    @property
    def parameters(self) -> dict[str, Any]:
        """The run's ``parameters`` (what ``save`` records)."""
        return self.evaluation.parameters()

    @property
    def notes(self) -> tuple[str, ...]:
        return self.evaluation.notes

    @property
    def stages(self) -> list[tuple[str, Any]]:
        """(stage name, result) of each stage that ran: plain, expansion (when expanded), rerank (when re-ranked)."""
        evaluation = self.evaluation
        before = ([("plain", evaluation.unexpanded), ("expansion", self.plain)] if evaluation.unexpanded is not None
                  else [("plain", self.plain)])
        return before + ([("rerank", self.final)] if evaluation.reranked else [])

    @property
    def mAP(self) -> float:
        return self.final.mAP

    def rank(self, k: int) -> float:
        return self.final.rank(k)

    def interval(self, metric: str = "mAP", confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0):
        """Percentile-bootstrap interval (low, high) over the valid queries of the final stage.

        ``metric``: mAP (or mAP@k), mINP or rank-k; see ``eval.confidence`` for the method.
        """
        from retrieval.eval.confidence import bootstrap_mean_interval

        table = self.final.per_query.filter(self.final.per_query["valid"])
        if metric in ("mAP", "mAP@k"):
            values = table["ap"].to_numpy(zero_copy_only=False)
        elif metric == "mINP":
            values = table["inp"].to_numpy(zero_copy_only=False)
        elif metric.startswith("rank-") and metric[5:].isdigit():
            first = table["first_match_rank"].fill_null(0).to_numpy(zero_copy_only=False)
            values = ((first >= 1) & (first <= int(metric[5:]))).astype(np.float64)
        else:
            raise RetrieveError(f"no per-query values for metric {metric!r}; use mAP, mINP or rank-k")
        return bootstrap_mean_interval(values, confidence=confidence, n_resamples=n_resamples, seed=seed)

    def metrics(self) -> list[dict[str, Any]]:
        """One row per metric and stage, as in ``metrics.parquet`` (fractions)."""
        ranks = self.evaluation.options.cmc_ranks
        return [row for stage, result in self.stages for row in ranking_metric_rows(result, stage, ranks)]

    def to_dict(self) -> dict[str, Any]:
        """The ``retrieve evaluate --json`` object of this evaluation (without ``run_dir``)."""
        return self.evaluation.summary()

    # --- tables
    def per_query_table(self) -> pa.Table:
        return self.evaluation.tables()["per_query"]

    @property
    def per_query(self):
        """Per-query AP, INP, first-match rank ... (DataFrame; Arrow table without pandas)."""
        return as_frame(self.per_query_table())

    @property
    def rankings(self):
        """The top ranked gallery items of every query at the final stage (DataFrame or Arrow)."""
        return as_frame(self.final.rankings)

    # --- display
    def plot_cmc(self, max_rank: int | None = None):
        """The CMC curve of each stage (a matplotlib Figure)."""
        from retrieval.plots import Curve, cmc_figure

        curves = []
        for stage, result in self.stages:
            cmc = result.cmc if max_rank is None else result.cmc[:max_rank]
            curves.append(Curve(stage, np.arange(1, len(cmc) + 1), cmc))
        return cmc_figure(curves)

    def _summary_rows(self) -> list[tuple[str, list[float]]]:
        names = [self.final.ap_key, "mINP", "mAP_at_R"] + [f"rank-{k}" for k in TABLE_RANKS if k <= len(self.final.cmc)]
        by_stage = [{row["metric"]: row["value"] for row in self.metrics() if row["stage"] == stage} for stage, _ in self.stages]
        return [(name, [values.get(name, float("nan")) for values in by_stage]) for name in names]

    def _conventions(self) -> str:
        r = self.final
        text = (f"protocol {r.protocol}, AP {r.ap_variant}, distance {r.metric}, CMC {r.cmc_mode}; "
                f"{r.num_valid_queries} of {r.num_queries} queries valid, {r.num_gallery} gallery items")
        if self.evaluation.expansion is not None:
            expansion = self.evaluation.expansion
            text += f"; expansion {expansion['order']} " + ", ".join(
                f"{k}={expansion[k]}" for k in ("dba_k", "qe_k", "qe_alpha") if k in expansion)
        if self.rerank is not None:
            text += "; k-reciprocal re-ranking " + ", ".join(f"{k}={v}" for k, v in self.rerank.items())
        return text

    def _repr_html_(self) -> str:
        stages = [stage for stage, _ in self.stages]
        head = "".join(f"<th>{html.escape(s)} (%)</th>" for s in stages)
        body = "".join(
            f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{100 * v:.2f}</td>" for v in values) + "</tr>"
            for name, values in self._summary_rows()
        )
        return (f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{body}</tbody></table>"
                f"<p><small>{html.escape(self._conventions())}</small></p>")

    def __repr__(self) -> str:
        stages = [stage for stage, _ in self.stages]
        lines = ["metric".ljust(12) + "".join(f"{s + ' %':>12}" for s in stages)]
        lines += [name.ljust(12) + "".join(f"{100 * v:12.2f}" for v in values) for name, values in self._summary_rows()]
        return "\n".join(lines + [self._conventions()])

    # --- storage
    def save(self, workspace: Path | str | None = None, run_dir: Path | str | None = None, *,
             overwrite: bool = False) -> Path:
        """Write the run folder (kind ``evaluate``) that ``retrieve evaluate`` writes for this evaluation.

        ``run_dir``: default a new folder in the workspace. An existing run there is refused unless
        ``overwrite=True`` (as the CLI's ``--overwrite``).
        """
        from retrieval.jobs.evaluate import save
        from retrieval.runs import check_run_target
        from retrieval.workspace import new_run_dir

        target = check_run_target(Path(run_dir) if run_dir is not None else new_run_dir(workspace, "evaluate"),
                                  overwrite=overwrite)
        return save(self.evaluation, target, command=self.command, overwrite=overwrite)


def evaluation_options(
    queries: LabelledVectors,
    gallery: LabelledVectors | None,
    *,
    metric: str = "euclidean",
    protocol: str | None = None,
    ap_variant: str = "standard",
    junk_pids: Iterable[int] = (-1,),
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_: float = 0.3,
    rerank_distance: str = "squared",
    rerank_exclude_junk: bool = False,
    max_rank: int = 50,
    keep_top: int = 10,
    cmc_mode: str = "multi-gallery-shot",
    repeats: int = 10,
    seed: int = 0,
    ci: float | None = None,
    device: str = "cpu",
    block_rows: int | None = None,
    index: IndexOptions | None = None,
    expand: str | Iterable[str] | None = None,
    qe_k: int = 5,
    qe_alpha: float = 3.0,
    dba_k: int = 5,
    multi_query: str | None = None,
    local_weight: float | None = None,
) -> EvaluateOptions:
    """The job's options from the notebook's keywords (the protocol defaults to what the data allows)."""
    from retrieval.jobs.expand import expansion_option

    return EvaluateOptions(
        metric=metric, protocol=protocol or default_protocol(queries, gallery), junk_pids=tuple(junk_pids),
        ap=ap_variant, cmc_ranks=TABLE_RANKS, cmc_mode=cmc_mode, repeats=repeats, seed=seed, device=device, ci=ci,
        rerank=RerankOptions(k1, k2, lambda_, rerank_distance, rerank_exclude_junk) if rerank else None,
        index=index, keep_top=keep_top, max_rank=max_rank, block_rows=block_rows,
        expand=expansion_option(expand, qe_k, qe_alpha, dba_k), multi_query=multi_query, local_weight=local_weight,
    )


def evaluate(
    query_embeddings,
    gallery_embeddings=None,
    query_pid=None,
    gallery_pid=None,
    query_camid=None,
    gallery_camid=None,
    *,
    query_ids=None,
    gallery_ids=None,
    progress=None,
    ray: str | None = None,
    **options,
) -> EvaluationResult:
    """Evaluate query embeddings against gallery embeddings under a named protocol.

    ``query_embeddings`` / ``gallery_embeddings``: ``data.store.Embeddings`` objects (labels taken
    from them) or (n, d) arrays with ``*_pid`` (and ``*_camid``, ``*_ids``) given beside them.
    Options (``evaluation_options``): ``metric`` (euclidean | sqeuclidean | cosine | aligned: ‖q − g‖ +
    ``local_weight`` (default 1) · the aligned local distance of the ``parts``, ``eval.aligned``), ``protocol``
    (market | no-camera | leave-one-out; default market when both sides have cameras, leave-one-out
    when the queries are gallery items, else no-camera), ``ap_variant``, ``junk_pids``, ``rerank``
    (k1, k2, lambda_, rerank_distance, rerank_exclude_junk: the k-reciprocal stage; the plain stage
    is kept), ``expand`` ("aqe", "alpha-qe", "dba" or "dba,alpha-qe"; with qe_k, qe_alpha, dba_k:
    query expansion / DBA before ranking and re-ranking, the stage before kept), ``multi_query``
    ("mean" | "max": queries pooled over identity and camera), ``max_rank``, ``keep_top``,
    ``cmc_mode``, ``repeats``, ``seed``, ``ci``, ``device`` (used by every stage, re-ranking
    included), ``block_rows``.
    Files: ``query_embeddings`` may be a path (a Parquet file or a folder of them), the gallery
    then its ``gallery`` split or ``gallery_embeddings`` (another path), as ``retrieve evaluate``
    takes them (protocol default ``market``). ``ray`` (``"local:4"``, ``"auto"``, ``"HOST:PORT"``)
    ranks over gallery shards on a Ray cluster, with the same results (``retrieval.distributed``).
    """
    from retrieval.jobs.evaluate import evaluate as run_evaluation

    if isinstance(query_embeddings, (str, Path)):
        return _evaluate_paths(Path(query_embeddings), gallery_embeddings, ray, progress, options)
    if ray is not None:
        raise RetrieveError("ray= needs file paths (a Parquet file or folder) for the queries and gallery, "
                            "so that the workers read the gallery themselves")

    queries = labelled(query_embeddings, query_pid, query_camid, query_ids, "queries")
    gallery = labelled(gallery_embeddings, gallery_pid, gallery_camid, gallery_ids, "gallery")
    if queries.pid is None or gallery.pid is None:
        raise RetrieveError("evaluation needs identities: give query_pid and gallery_pid (or embeddings with a pid column)")
    return EvaluationResult(run_evaluation(queries, gallery, evaluation_options(queries, gallery, **options),
                                           progress=progress))


def _evaluate_paths(embeddings: Path, gallery, ray: str | None, progress, options: dict) -> EvaluationResult:
    """``evaluate`` on files, through the job ``retrieve evaluate`` runs (optionally on Ray)."""
    from retrieval.distributed.cluster import cluster_for
    from retrieval.jobs.evaluate import evaluate_files

    query_split, gallery_split = options.pop("query_split", None), options.pop("gallery_split", None)
    rerank = options.pop("rerank", False)
    keys = dict(k1=options.pop("k1", 20), k2=options.pop("k2", 6), lambda_=options.pop("lambda_", 0.3),
                distance=options.pop("rerank_distance", "squared"), exclude_junk=options.pop("rerank_exclude_junk", False))
    names = {"ap_variant": "ap"}
    job = EvaluateOptions(**{names.get(k, k): (tuple(v) if k == "junk_pids" else v) for k, v in options.items()},
                          rerank=RerankOptions(**keys) if rerank else None)
    with cluster_for(ray) as cluster:
        evaluation = evaluate_files(embeddings, None if gallery is None else Path(gallery), query_split, gallery_split,
                                    job, progress, cluster=cluster)
    return EvaluationResult(evaluation)
