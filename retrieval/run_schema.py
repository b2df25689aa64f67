"""The run folder's schema: its tables, the fields of run.json, and the catalogue views over them.

One place for what a run folder holds (see docs/runs.md):

* the tables (``RUN_TABLES``): ``metrics``, ``per_query``, ``rankings``, ``curves``, ``folds``,
  ``epochs``: their Arrow schemas where fixed, the builders that fill them from results, and the
  DuckDB types of their documented columns (``TABLE_COLUMNS``) that the catalogue views expose;
* the fields of ``run.json`` (``RECORD_FIELDS``) and how inputs are recorded: a path both
  absolute and as given, so that a run read from another working folder still finds its files;
* the catalogue's ``runs`` table (``RUNS_SCHEMA``, ``HEADLINE_METRICS``) and the run context added
  to the views whose flags depend on it (``VIEW_CONTEXT_COLUMNS``: the run's kind and protocol).

The per-query and rankings schemas of evaluation are the evaluator's (``eval.evaluate``); they
are re-exported here so that nothing else has to know where they are defined.
"""

from __future__ import annotations

import math
import platform
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import pyarrow as pa

from retrieval.eval.evaluate import PER_QUERY_SCHEMA, RANKINGS_SCHEMA  # noqa: F401  (re-exported)
from retrieval.eval.identification import PER_PROBE_SCHEMA  # noqa: F401  (re-exported)

RUN_FORMAT_VERSION = 1
# folds: verify runs (k-fold accuracy); epochs: train runs (per-epoch losses and mining statistics);
# per_probe: identify runs; clusters, cluster_quality, sweep: cluster runs.
RUN_TABLES = ("metrics", "per_query", "rankings", "curves", "folds", "epochs", "per_probe", "clusters",
              "cluster_quality", "sweep")

# run.json, in this order: written by runs.write_run (the first three) and by the jobs.
RECORD_FIELDS = ("format_version", "run_id", "created", "kind", "command", "parameters", "inputs", "versions",
                 "timings", "result", "cluster")
# Fields two runs of the same command on the same data may differ in (the parity test ignores them);
# ``cluster`` (only in runs made with --ray) says where it ran: Ray address, nodes, CPUs, shards.
VOLATILE_FIELDS = ("created", "command", "timings", "cluster")

# The stages of an evaluation, in order: the last one present is the final one.
STAGES = ("plain", "expansion", "rerank")

# ------------------------------------------------------------------------------- Arrow schemas

METRICS_SCHEMA = pa.schema([
    ("metric", pa.string()), ("value", pa.float64()), ("stage", pa.string()),
    ("protocol", pa.string()), ("ap_variant", pa.string()), ("metric_distance", pa.string()),
])
CURVES_SCHEMA = pa.schema([
    ("curve", pa.string()), ("stage", pa.string()), ("x", pa.float64()), ("y", pa.float64()),
    ("threshold", pa.float64()),
])
# `retrieve search --out`: the index's answers as it returns them (int32 rank, float32 distance).
SEARCH_RESULTS_SCHEMA = pa.schema([
    ("query_id", pa.string()), ("rank", pa.int32()), ("gallery_id", pa.string()), ("distance", pa.float32()),
    ("gallery_pid", pa.int64()), ("gallery_camid", pa.int64()),
])
# A search run's rankings: the results plus the protocol's flags (null when identities are unknown).
SEARCH_RANKINGS_SCHEMA = pa.schema(list(SEARCH_RESULTS_SCHEMA) + [("is_match", pa.bool_()), ("is_junk", pa.bool_())])

# ------------------------------------------------------------------------------- catalogue columns

# The documented columns of each run table (DuckDB types), in order, after ``run_id``.
TABLE_COLUMNS: dict[str, list[tuple[str, str]]] = {
    "metrics": [("metric", "VARCHAR"), ("value", "DOUBLE"), ("stage", "VARCHAR"), ("protocol", "VARCHAR"),
                ("ap_variant", "VARCHAR"), ("metric_distance", "VARCHAR")],
    "per_query": [("query_id", "VARCHAR"), ("pid", "BIGINT"), ("camid", "BIGINT"), ("valid", "BOOLEAN"),
                  ("ap", "DOUBLE"), ("inp", "DOUBLE"), ("first_match_rank", "BIGINT"), ("num_matches", "BIGINT"),
                  ("r_precision", "DOUBLE"), ("run_kind", "VARCHAR"), ("run_protocol", "VARCHAR")],
    "rankings": [("query_id", "VARCHAR"), ("rank", "BIGINT"), ("gallery_id", "VARCHAR"), ("distance", "DOUBLE"),
                 ("is_match", "BOOLEAN"), ("is_junk", "BOOLEAN"), ("run_kind", "VARCHAR"),
                 ("run_protocol", "VARCHAR")],
    "curves": [("curve", "VARCHAR"), ("stage", "VARCHAR"), ("x", "DOUBLE"), ("y", "DOUBLE"), ("threshold", "DOUBLE")],
    "folds": [("fold", "BIGINT"), ("start", "BIGINT"), ("stop", "BIGINT"), ("threshold", "DOUBLE"),
              ("accuracy", "DOUBLE")],
    "epochs": [("epoch", "BIGINT"), ("lr", "DOUBLE"), ("loss", "DOUBLE")],
    "per_probe": [("probe_id", "VARCHAR"), ("pid", "BIGINT"), ("mated", "BOOLEAN"), ("top1_identity", "BIGINT"),
                  ("top1_gallery_id", "VARCHAR"), ("top1_score", "DOUBLE"), ("mate_rank", "BIGINT"),
                  ("mate_score", "DOUBLE")],
    "clusters": [("id", "VARCHAR"), ("cluster", "BIGINT"), ("pid", "BIGINT"), ("threshold", "DOUBLE")],
    "cluster_quality": [("threshold", "DOUBLE"), ("cluster", "BIGINT"), ("size", "BIGINT"),
                        ("mean_similarity", "DOUBLE")],
    "sweep": [("threshold", "DOUBLE"), ("chosen", "BOOLEAN"), ("num_clusters", "BIGINT"),
              ("singleton_fraction", "DOUBLE"), ("pairwise_f", "DOUBLE"), ("bcubed_f", "DOUBLE"), ("nmi", "DOUBLE")],
}
# Columns a view takes from the run (not from the file): is_match / is_junk / valid follow the
# protocol of the run that wrote them, and evaluate and search runs both write rankings.
VIEW_CONTEXT_COLUMNS: dict[str, tuple[str, ...]] = {
    "per_query": ("run_kind", "run_protocol"),
    "rankings": ("run_kind", "run_protocol"),
}

# Headline metrics copied into the `runs` table: column name -> metric name in metrics.parquet.
HEADLINE_METRICS: dict[str, str] = {
    "mAP": "mAP", "rank1": "rank-1", "rank5": "rank-5", "mINP": "mINP", "mAP_at_k": "mAP@k",
    "accuracy_mean": "accuracy_mean", "roc_auc": "roc_auc", "eer": "eer", "pairwise_f": "pairwise_f",
}
RUNS_SCHEMA = pa.schema([
    ("run_id", pa.string()), ("created", pa.string()), ("kind", pa.string()), ("tags", pa.list_(pa.string())),
    ("command", pa.string()),
    ("content_hash", pa.string()), ("embeddings", pa.string()), ("headline_stage", pa.string()),
    *[(column, pa.float64()) for column in HEADLINE_METRICS],
    ("format_version", pa.int64()), ("parameters", pa.string()), ("run_dir", pa.string()),
])


def run_context(record: Mapping[str, Any]) -> dict[str, Any]:
    """The values of ``VIEW_CONTEXT_COLUMNS`` for one run: its kind and the protocol its flags follow."""
    parameters = record.get("parameters") or {}
    protocol = parameters.get("protocol") if isinstance(parameters, Mapping) else None
    return {"run_kind": record.get("kind"), "run_protocol": protocol}


# ------------------------------------------------------------------------------- run.json fields


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones so that json.dumps is strict."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def library_versions() -> dict[str, str]:
    """The versions a run record keeps: retrieve, Python, numpy, pyarrow."""
    from retrieval import __version__

    return {"retrieve": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "pyarrow": pa.__version__}


def input_paths(**paths: Path | str | None) -> dict[str, str | None]:
    """Each input path twice: ``name`` absolute (what readers open) and ``name_as_given``.

    ``input_paths(embeddings="data/e.parquet")`` -> ``{"embeddings": "/work/data/e.parquet",
    "embeddings_as_given": "data/e.parquet"}``; None stays None.
    """
    out: dict[str, str | None] = {}
    for name, path in paths.items():
        out[name] = None if path is None else str(Path(path).absolute())
        out[f"{name}_as_given"] = None if path is None else str(path)
    return out


def resolve_input(inputs: Mapping[str, Any], name: str, run_dir: Path | None = None) -> Path | None:
    """The file an input names, found from any working folder: absolute, as given, or beside the run."""
    candidates = [inputs.get(name), inputs.get(f"{name}_as_given")]
    for value in candidates:
        if not value or not isinstance(value, str):
            continue
        path = Path(value)
        if path.exists():
            return path
        if run_dir is not None and not path.is_absolute() and (run_dir.parent / path).exists():
            return run_dir.parent / path
    return None


def run_record(kind: str, command: str, parameters: Mapping[str, Any], inputs: Mapping[str, Any],
               timings: Mapping[str, float], result: Mapping[str, Any],
               cluster: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A run.json record (the fields after format_version, run_id and created, which write_run adds);
    ``cluster`` only for a run made on a Ray cluster."""
    record = {"kind": kind, "command": command, "parameters": dict(parameters), "inputs": dict(inputs),
              "versions": library_versions(), "timings": dict(timings), "result": dict(result)}
    if cluster is not None:
        record["cluster"] = dict(cluster)
    return record


# ------------------------------------------------------------------------------- ranking tables


def ranking_metric_rows(result, stage: str, cmc_ranks: Iterable[int]) -> list[dict[str, Any]]:
    """The metrics rows of one ranking stage; a metric the stage cannot state (NaN) has no row."""
    values = {result.ap_key: result.mAP, "mINP": result.mINP, "mAP_at_R": result.mAP_at_R,
              "R_precision": result.R_precision}
    values.update({f"rank-{k}": result.rank(k) for k in cmc_ranks if k <= len(result.cmc)})
    return [
        dict(metric=name, value=float(v), stage=stage, protocol=result.protocol, ap_variant=result.ap_variant,
             metric_distance=result.metric)
        for name, v in values.items()
        if v is not None and np.isfinite(v)
    ]


def cmc_curve_rows(result, stage: str) -> list[dict[str, Any]]:
    return [dict(curve="cmc", stage=stage, x=float(i + 1), y=float(v), threshold=None) for i, v in enumerate(result.cmc)]


def per_query_with_before(final, plain, unexpanded=None) -> pa.Table:
    """The final stage's per-query table; re-ranked runs add the stage before re-ranking's AP, INP,
    first match (``*_before_rerank``), expanded runs the stage before expansion's (``*_before_expansion``)."""
    table = final.per_query
    earlier = ([("rerank", plain)] if final is not plain else []) + ([("expansion", unexpanded)] if unexpanded else [])
    for stage, result in earlier:
        for column in ("ap", "inp", "first_match_rank"):
            table = table.append_column(f"{column}_before_{stage}", result.per_query.column(column))
    return table


def ranking_tables(final, plain, cmc_ranks: Iterable[int], unexpanded=None) -> dict[str, pa.Table]:
    """The tables of an evaluate run: metrics and curves of each stage, per-query and rankings of the final one.

    Stages: ``plain`` (the embeddings as given), ``expansion`` (after query expansion / DBA, when
    asked), ``rerank`` (when asked).
    """
    before = [("plain", unexpanded), ("expansion", plain)] if unexpanded is not None else [("plain", plain)]
    stages = before + ([("rerank", final)] if final is not plain else [])
    cmc_ranks = list(cmc_ranks)
    return {
        "metrics": pa.Table.from_pylist([row for stage, r in stages for row in ranking_metric_rows(r, stage, cmc_ranks)],
                                        schema=METRICS_SCHEMA),
        "per_query": per_query_with_before(final, plain, unexpanded),
        "rankings": final.rankings,
        "curves": pa.Table.from_pylist([row for stage, r in stages for row in cmc_curve_rows(r, stage)],
                                       schema=CURVES_SCHEMA),
    }


# ------------------------------------------------------------------------------- verification tables


def verification_metrics_table(result) -> pa.Table:
    """metrics.parquet of a verify run: accuracy, AUC, EER, TAR@FAR, VAL@FAR (stage plain)."""
    summary = result.to_dict()
    rows: list[tuple[str, float]] = [(key, float(summary[key])) for key in ("accuracy_mean", "accuracy_std",
                                                                              "roc_auc", "eer")
                                     if summary[key] is not None]
    rows += [(f"tar@far={label}", float(point["tar"])) for label, point in summary["tar_at_far"].items()]
    rows += [(f"val@far={label}", float(point["val_mean"])) for label, point in (summary["val_at_far"] or {}).items()]
    protocol = summary.get("protocol") or "pairs"
    return pa.Table.from_pylist(
        [dict(metric=name, value=value, stage="plain", protocol=protocol, ap_variant=None,
              metric_distance=result.distance) for name, value in rows],
        schema=METRICS_SCHEMA,
    )


def roc_curve_table(curve) -> pa.Table:
    """curves.parquet of a verify run: the (stored, downsampled) ROC as FAR -> TAR with thresholds."""
    n = len(curve.threshold)
    threshold = np.asarray(curve.threshold, dtype=np.float64)
    return pa.table({
        "curve": pa.array(["roc"] * n, pa.string()),
        "stage": pa.array(["plain"] * n, pa.string()),
        "x": pa.array(curve.far, pa.float64()),
        "y": pa.array(curve.tar, pa.float64()),
        "threshold": pa.array(threshold, pa.float64(), mask=np.isnan(threshold)),
    }, schema=CURVES_SCHEMA)


def folds_table(kfold) -> pa.Table:
    """folds.parquet of a verify run: one row per fold (+ VAL/FAR/threshold per FAR target)."""
    columns: dict[str, list] = {
        "fold": [f.fold for f in kfold.folds],
        "start": [f.start for f in kfold.folds],
        "stop": [f.stop for f in kfold.folds],
        "threshold": [f.threshold for f in kfold.folds],
        "accuracy": [f.accuracy for f in kfold.folds],
    }
    for label in kfold.folds[0].val_at_far:
        columns[f"val@far={label}"] = [f.val_at_far[label]["val"] for f in kfold.folds]
        columns[f"far@far={label}"] = [f.val_at_far[label]["far"] for f in kfold.folds]
        columns[f"threshold@far={label}"] = [f.val_at_far[label]["threshold"] for f in kfold.folds]
    return pa.table({k: pa.array(v, pa.int64() if k in ("fold", "start", "stop") else pa.float64())
                     for k, v in columns.items()})


# ------------------------------------------------------------------------------- identification tables


def _metric_rows(values: Mapping[str, float | None], protocol: str, distance: str) -> list[dict[str, Any]]:
    return [dict(metric=name, value=float(v), stage="plain", protocol=protocol, ap_variant=None,
                 metric_distance=distance) for name, v in values.items() if v is not None and np.isfinite(v)]


def identification_tables(result) -> dict[str, pa.Table]:
    """The tables of an identify run: metrics (rank-k, TPIR@FPIR), per_probe, curves (CMC and the whole DET)."""
    protocol = f"identification/{result.template}"
    distance = result.metric if result.candidates == "exhaustive" else f"{result.metric} ({result.candidates})"
    values: dict[str, float | None] = {}
    if result.cmc is not None:
        values.update({f"rank-{k}": float(result.cmc[k - 1]) for k in result.ranks})
    for label, point in (result.tpir_at_fpir or {}).items():
        values[f"tpir@fpir={label}"] = point.tpir
    curves = []
    if result.cmc is not None:
        curves += [dict(curve="cmc", stage="plain", x=float(i + 1), y=float(v), threshold=None)
                   for i, v in enumerate(result.cmc) if np.isfinite(v)]
    det = result.det
    if det is not None and det.num_mated and det.num_nonmated:
        curves += [dict(curve="det", stage="plain", x=float(x), y=float(y), threshold=float(t))
                   for x, y, t in zip(det.fpir, det.fnir, det.threshold)]
    return {
        "metrics": pa.Table.from_pylist(_metric_rows(values, protocol, distance), schema=METRICS_SCHEMA),
        "per_probe": result.per_probe,
        "curves": pa.Table.from_pylist(curves, schema=CURVES_SCHEMA),
    }


# ------------------------------------------------------------------------------- clustering tables

CLUSTERS_SCHEMA = pa.schema([("id", pa.string()), ("cluster", pa.int64()), ("pid", pa.int64()),
                             ("threshold", pa.float64())])
CLUSTER_QUALITY_SCHEMA = pa.schema([("threshold", pa.float64()), ("cluster", pa.int64()), ("size", pa.int64()),
                                    ("mean_similarity", pa.float64())])
SWEEP_METRICS = ("num_clusters", "singleton_fraction", "pairwise_precision", "pairwise_recall", "pairwise_f",
                 "bcubed_precision", "bcubed_recall", "bcubed_f", "nmi", "ari", "homogeneity", "completeness",
                 "v_measure", "num_classes")


def clustering_tables(points, chosen: int | None, ids, pid, method: str, metric: str) -> dict[str, pa.Table]:
    """The tables of a cluster run from its sweep points (each: threshold, labels, sizes, quality,
    scores or None): clusters and cluster_quality of every point, the sweep, the chosen point's metrics."""
    ids = pa.array(np.asarray(ids).astype(str), pa.string())
    pid_column = pa.nulls(len(ids), pa.int64()) if pid is None else pa.array(pid, pa.int64())
    clusters = pa.concat_tables([
        pa.table({"id": ids, "cluster": pa.array(p.labels, pa.int64()), "pid": pid_column,
                  "threshold": pa.array(np.full(len(ids), p.threshold), pa.float64())}, schema=CLUSTERS_SCHEMA)
        for p in points
    ])
    quality = pa.concat_tables([
        pa.table({"threshold": pa.array(np.full(len(p.sizes), p.threshold), pa.float64()),
                  "cluster": pa.array(np.arange(len(p.sizes)), pa.int64()), "size": pa.array(p.sizes, pa.int64()),
                  "mean_similarity": pa.array(p.quality, pa.float64(), mask=np.isnan(p.quality))},
                 schema=CLUSTER_QUALITY_SCHEMA)
        for p in points
    ])
    sweep_rows = [{"threshold": p.threshold, "chosen": i == chosen, **p.statistics()} for i, p in enumerate(points)]
    sweep = pa.Table.from_pylist(sweep_rows)
    protocol = f"clustering/{method}"
    point = points[chosen if chosen is not None else 0]
    values = {name: point.statistics().get(name) for name in SWEEP_METRICS} if chosen is not None or len(points) == 1 \
        else {}
    values["threshold"] = point.threshold if values else None
    curves = [dict(curve="sweep", stage="plain", x=p.threshold, y=float(p.scores.pairwise_f), threshold=p.threshold)
              for p in points if p.scores is not None]
    return {
        "clusters": clusters,
        "cluster_quality": quality,
        "sweep": sweep,
        "metrics": pa.Table.from_pylist(_metric_rows(values, protocol, metric), schema=METRICS_SCHEMA),
        "curves": pa.Table.from_pylist(curves, schema=CURVES_SCHEMA),
    }
