"""The functional notebook API: ``retrieval.evaluate(queries, gallery, ...)`` -> ``EvaluationResult``.

It calls the evaluator (``eval.evaluate.evaluate_ranking`` over ``eval.distances.EmbeddingDistances``,
or over ``eval.rerank.RerankedDistances`` with ``rerank=True``) and wraps the result for notebooks:
a rich ``_repr_html_`` table, ``.per_query`` / ``.rankings`` as pandas DataFrames (Arrow tables
when pandas is not installed), ``.plot_cmc()``, ``.to_dict()`` and ``.save()`` (a run folder the
catalogue sees).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa

from retrieval.errors import RetrieveError

RERANK_DEFAULTS = {"k1": 20, "k2": 6, "lambda_": 0.3, "distance": "squared"}
TABLE_RANKS = (1, 5, 10, 20)


def as_frame(table: pa.Table):
    """A pandas DataFrame when pandas is installed (the ``notebook`` extra), else the Arrow table."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        return table
    return table.to_pandas()


@dataclass(frozen=True)
class LabelledVectors:
    """Vectors with the labels evaluation needs (from an ``Embeddings`` object or plain arrays)."""

    vectors: np.ndarray
    ids: np.ndarray
    pid: np.ndarray | None
    camid: np.ndarray | None
    path: np.ndarray | None = None


def labelled(source: Any, pid=None, camid=None, ids=None, name: str = "queries") -> LabelledVectors:
    """Accept an ``data.store.Embeddings`` (its own labels) or an array with labels given beside it."""
    if hasattr(source, "vectors") and hasattr(source, "ids"):
        camid_known = getattr(source, "camid_known", None)
        source_camid = source.camid if camid_known is None or bool(np.all(camid_known)) else None
        return LabelledVectors(
            vectors=np.ascontiguousarray(source.vectors, dtype=np.float32),
            ids=np.asarray(source.ids, dtype=object),
            pid=source.pid if pid is None else np.asarray(pid, dtype=np.int64),
            camid=source_camid if camid is None else np.asarray(camid, dtype=np.int64),
            path=getattr(source, "path", None),
        )
    vectors = np.asarray(source, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2:
        raise RetrieveError(f"{name}: expected a (rows, dimension) array, got shape {vectors.shape}")
    ids = np.array([f"{name[0]}{i}" for i in range(len(vectors))], dtype=object) if ids is None else np.asarray(ids, dtype=object)
    if len(ids) != len(vectors):
        raise RetrieveError(f"{name}: {len(ids)} ids for {len(vectors)} vectors")
    return LabelledVectors(
        vectors=np.ascontiguousarray(vectors),
        ids=ids,
        pid=None if pid is None else np.asarray(pid, dtype=np.int64),
        camid=None if camid is None else np.asarray(camid, dtype=np.int64),
    )


def default_protocol(queries: LabelledVectors, gallery: LabelledVectors) -> str:
    """market when both sides have cameras; leave-one-out when the queries are gallery items; else no-camera."""
    if queries.camid is not None and gallery.camid is not None:
        return "market"
    if set(queries.ids.tolist()) & set(gallery.ids.tolist()):
        return "leave-one-out"
    return "no-camera"


@dataclass(frozen=True)
class EvaluationResult:
    """The result of one evaluation: final stage (re-ranked when asked) and the plain stage."""

    final: Any  # eval.evaluate.RankingResult
    plain: Any  # eval.evaluate.RankingResult (the same object when not re-ranked)
    rerank: dict | None = None  # re-ranking parameters, None when not re-ranked
    parameters: dict = field(default_factory=dict)

    # --- numbers
    @property
    def stages(self) -> list[tuple[str, Any]]:
        return [("plain", self.plain)] + ([("rerank", self.final)] if self.rerank is not None else [])

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
        rows = []
        for stage, result in self.stages:
            values = {result.ap_key: result.mAP, "mINP": result.mINP, "mAP_at_R": result.mAP_at_R,
                      "R_precision": result.R_precision}
            values.update({f"rank-{k}": result.rank(k) for k in TABLE_RANKS if k <= len(result.cmc)})
            for name, value in values.items():
                rows.append({"metric": name, "value": float(value), "stage": stage, "protocol": result.protocol,
                             "ap_variant": result.ap_variant, "metric_distance": result.metric})
        return rows

    def to_dict(self) -> dict[str, Any]:
        out = self.final.to_dict()
        if self.rerank is not None:
            out["rerank"] = dict(self.rerank)
            out["before_rerank"] = self.plain.to_dict()
        return out

    # --- tables
    def per_query_table(self) -> pa.Table:
        table = self.final.per_query
        if self.rerank is not None:
            for column in ("ap", "inp", "first_match_rank"):
                table = table.append_column(f"{column}_before_rerank", self.plain.per_query[column])
        return table

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
    def save(self, workspace: Path | str | None = None, run_dir: Path | str | None = None) -> Path:
        """Write the result as a run folder (``kind`` evaluate) so that the catalogue and reports see it."""
        from retrieval.runs import write_run
        from retrieval.workspace import new_run_dir

        target = Path(run_dir) if run_dir is not None else new_run_dir(workspace, "evaluate")
        curves = []
        for stage, result in self.stages:
            curves += [{"curve": "cmc", "stage": stage, "x": float(i + 1), "y": float(v), "threshold": None}
                       for i, v in enumerate(result.cmc)]
        record = {
            "kind": "evaluate",
            "command": "retrieval.api.evaluate (Python)",
            "parameters": {**{k: v for k, v in self.parameters.items() if k != "inputs"}, "rerank": self.rerank},
            "inputs": dict(self.parameters.get("inputs", {})),
            "result": self.to_dict(),
        }
        curve_schema = pa.schema([("curve", pa.string()), ("stage", pa.string()), ("x", pa.float64()),
                                  ("y", pa.float64()), ("threshold", pa.float64())])
        return write_run(target, record, {
            "metrics": pa.Table.from_pylist(self.metrics()),
            "per_query": self.per_query_table(),
            "rankings": self.final.rankings,
            "curves": pa.Table.from_pylist(curves, schema=curve_schema),
        })


def evaluate(
    query_embeddings,
    gallery_embeddings,
    query_pid=None,
    gallery_pid=None,
    query_camid=None,
    gallery_camid=None,
    *,
    query_ids=None,
    gallery_ids=None,
    metric: str = "euclidean",
    protocol: str | None = None,
    ap_variant: str = "standard",
    junk_pids: Iterable[int] = (-1,),
    rerank: bool = False,
    k1: int = 20,
    k2: int = 6,
    lambda_: float = 0.3,
    rerank_distance: str = "squared",
    max_rank: int = 50,
    keep_top: int = 100,
    device: str = "cpu",
    progress=None,
    **evaluator_options,
) -> EvaluationResult:
    """Evaluate query embeddings against gallery embeddings under a named protocol.

    ``query_embeddings`` / ``gallery_embeddings``: ``data.store.Embeddings`` objects (labels taken
    from them) or (n, d) arrays with ``*_pid`` (and ``*_camid``, ``*_ids``) given beside them.
    ``protocol``: market | no-camera | leave-one-out; default market when both sides have cameras,
    leave-one-out when the queries are gallery items, else no-camera. ``rerank=True`` adds the
    k-reciprocal stage (k1, k2, lambda_); the plain stage is kept in the result.
    """
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.evaluate import evaluate_ranking

    queries = labelled(query_embeddings, query_pid, query_camid, query_ids, "queries")
    gallery = labelled(gallery_embeddings, gallery_pid, gallery_camid, gallery_ids, "gallery")
    if queries.pid is None or gallery.pid is None:
        raise RetrieveError("evaluation needs identities: give query_pid and gallery_pid (or embeddings with a pid column)")
    protocol = protocol or default_protocol(queries, gallery)
    options = dict(
        protocol=protocol, ap_variant=ap_variant, junk_pids=tuple(junk_pids), query_ids=queries.ids,
        gallery_ids=gallery.ids, max_rank=max_rank, keep_top=keep_top, progress=progress, **evaluator_options,
    )
    labels = (queries.pid, gallery.pid, queries.camid, gallery.camid)
    plain = evaluate_ranking(
        EmbeddingDistances(queries.vectors, gallery.vectors, metric=metric, device=device), *labels, metric=metric, **options
    )
    parameters = {"metric": metric, "protocol": protocol, "ap_variant": ap_variant, "junk_pids": list(junk_pids),
                  "max_rank": max_rank, "keep_top": keep_top, **{k: v for k, v in evaluator_options.items()}}
    if not rerank:
        return EvaluationResult(final=plain, plain=plain, rerank=None, parameters=parameters)
    from retrieval.eval.rerank import RerankedDistances

    reranked_source = RerankedDistances(
        queries.vectors, gallery.vectors, k1=k1, k2=k2, lambda_=lambda_, distance=rerank_distance,
        metric=metric, progress=progress,
    )
    final = evaluate_ranking(reranked_source, *labels, metric=f"k-reciprocal re-ranking of {metric}", **options)
    return EvaluationResult(final=final, plain=plain, rerank=reranked_source.params, parameters=parameters)
