"""Compare two runs: metric deltas with paired bootstrap intervals over queries matched by id.

Conventions: ``delta = B - A`` (positive = run B is better for every metric here, all of which
are higher-is-better except ``eer``); values are fractions as in ``metrics.parquet``.
Per-query metrics are recomputed over the queries that are valid in *both* runs (matched by
``query_id``), so the two means are over the same queries; the interval is the paired
percentile bootstrap of ``eval.confidence`` (same seed -> same interval). The run files are
only read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from retrieval.eval.confidence import paired_bootstrap_delta
from retrieval.catalogue import RunFolder, final_stage_rows, resolve_run
from retrieval.errors import RetrieveError
from retrieval.runs import read_run_table

CMC_RANKS = (1, 5, 10)
LARGEST_CHANGES = 10
# AP changes at or below this are "unchanged" (float noise between two evaluations).
UNCHANGED_TOLERANCE = 1e-9


def final_stage_metrics(run: RunFolder) -> dict[str, dict[str, Any]]:
    """metric name -> row of ``metrics.parquet`` at the run's final stage (re-ranked if present)."""
    _, rows = final_stage_rows(read_run_table(run.path, "metrics"))
    return {row["metric"]: row for row in rows}


def _valid_per_query(run: RunFolder) -> dict[str, dict[str, Any]] | None:
    table = read_run_table(run.path, "per_query")
    if table is None:
        return None
    missing = {"query_id", "ap"} - set(table.column_names)
    if missing:
        raise RetrieveError(f"{run.path / 'per_query.parquet'}: missing column(s) {sorted(missing)}")
    rows = table.to_pylist()
    seen: dict[str, dict[str, Any]] = {}
    for row in rows:
        query_id = str(row["query_id"])
        if query_id in seen:
            raise RetrieveError(f"{run.path / 'per_query.parquet'}: query_id {query_id!r} appears twice")
        if row.get("valid", True) and row.get("ap") is not None and np.isfinite(row["ap"]):
            seen[query_id] = row
    return seen


def _per_query_metric_values(rows: list[dict[str, Any]], name: str) -> np.ndarray | None:
    """The per-query values whose mean is metric ``name``; None when this run cannot give them."""
    if name in ("mAP", "mAP@k"):
        return np.array([row["ap"] for row in rows], dtype=np.float64)
    if name == "mINP":
        if any(row.get("inp") is None for row in rows):
            return None
        return np.array([row["inp"] for row in rows], dtype=np.float64)
    if name == "R_precision":
        if any(row.get("r_precision") is None for row in rows):
            return None
        return np.array([row["r_precision"] for row in rows], dtype=np.float64)
    if name.startswith("rank-"):
        k = int(name.split("-", 1)[1])
        if any("first_match_rank" not in row for row in rows):
            return None
        # No match in the returned list (top-k mode) counts as a miss.
        return np.array(
            [1.0 if row["first_match_rank"] is not None and 1 <= row["first_match_rank"] <= k else 0.0 for row in rows]
        )
    return None


def _metric_delta_rows(metrics_a: dict, metrics_b: dict) -> list[dict[str, Any]]:
    rows = []
    for name in [m for m in metrics_a if m in metrics_b]:
        a, b = metrics_a[name].get("value"), metrics_b[name].get("value")
        delta = None if a is None or b is None else float(b) - float(a)
        rows.append({"metric": name, "a": a, "b": b, "delta": delta})
    return rows


def _convention_warnings(metrics_a: dict, metrics_b: dict, run_a: RunFolder, run_b: RunFolder) -> list[str]:
    notes = []
    for key in ("protocol", "ap_variant", "metric_distance"):
        values_a = {row.get(key) for row in metrics_a.values()} - {None}
        values_b = {row.get(key) for row in metrics_b.values()} - {None}
        if values_a and values_b and values_a != values_b:
            notes.append(
                f"the runs use different {key}: {', '.join(sorted(map(str, values_a)))} vs "
                f"{', '.join(sorted(map(str, values_b)))}; their numbers follow different conventions"
            )
    if run_a.record.get("kind") != run_b.record.get("kind"):
        notes.append(f"comparing a {run_a.record.get('kind')} run with a {run_b.record.get('kind')} run")
    return notes


def _query_change_row(query_id: str, row_a: dict, row_b: dict) -> dict[str, Any]:
    return {
        "query_id": query_id,
        "pid": row_a.get("pid"),
        "ap_a": row_a["ap"],
        "ap_b": row_b["ap"],
        "delta": row_b["ap"] - row_a["ap"],
        "first_match_rank_a": row_a.get("first_match_rank"),
        "first_match_rank_b": row_b.get("first_match_rank"),
    }


def compare_runs(
    run_a: Path | str,
    run_b: Path | str,
    *,
    workspace: Path | str | None = None,
    confidence: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
    largest: int = LARGEST_CHANGES,
) -> dict[str, Any]:
    """The comparison of run B against run A as one JSON-ready dict (what ``--json`` prints)."""
    first, second = resolve_run(run_a, workspace), resolve_run(run_b, workspace)
    metrics_a, metrics_b = final_stage_metrics(first), final_stage_metrics(second)
    result: dict[str, Any] = {
        "run_a": first.run_id,
        "run_b": second.run_id,
        "run_a_dir": str(first.path),
        "run_b_dir": str(second.path),
        "delta_convention": "B - A; fractions; higher is better except eer",
        "confidence": confidence,
        "n_resamples": n_resamples,
        "seed": seed,
        "bootstrap": "paired percentile bootstrap over queries valid in both runs, matched by query_id",
        "metrics": _metric_delta_rows(metrics_a, metrics_b),
        "warnings": _convention_warnings(metrics_a, metrics_b, first, second),
    }
    queries_a, queries_b = _valid_per_query(first), _valid_per_query(second)
    if queries_a is None or queries_b is None:
        result["warnings"].append("a run has no per_query table: no per-query deltas or intervals")
        result.update(matched_queries=0, per_query_metrics=[], counts=None, largest_drops=[], largest_gains=[])
        return result
    matched = _matched_queries(result, queries_a, queries_b)
    names = [m for m in metrics_a if m in metrics_b] or ["mAP", *(f"rank-{k}" for k in CMC_RANKS)]
    rows_a, rows_b = [queries_a[q] for q in matched], [queries_b[q] for q in matched]
    result["per_query_metrics"] = _paired_intervals(names, rows_a, rows_b, confidence, n_resamples, seed)
    result.update(_query_changes([_query_change_row(q, queries_a[q], queries_b[q]) for q in matched], largest))
    return result


def _matched_queries(result: dict[str, Any], queries_a: dict, queries_b: dict) -> list[str]:
    """The query ids valid in both runs (in run A's order); counts and a warning for the others."""
    matched = [query_id for query_id in queries_a if query_id in queries_b]
    result["matched_queries"] = len(matched)
    result["only_in_a"] = len(set(queries_a) - set(queries_b))
    result["only_in_b"] = len(set(queries_b) - set(queries_a))
    if not matched:
        raise RetrieveError(
            f"{result['run_a']} and {result['run_b']} have no valid query in common (matched by query_id); "
            "nothing to compare per query"
        )
    if result["only_in_a"] or result["only_in_b"]:
        result["warnings"].append(
            f"{result['only_in_a']} valid queries only in A and {result['only_in_b']} only in B are left out "
            "of the per-query comparison"
        )
    return matched


def _paired_intervals(names: list[str], rows_a: list[dict], rows_b: list[dict], confidence: float,
                      n_resamples: int, seed: int) -> list[dict[str, Any]]:
    """Mean of A, mean of B and the paired bootstrap interval of B - A for each per-query metric."""
    out = []
    for name in names:
        values_a, values_b = _per_query_metric_values(rows_a, name), _per_query_metric_values(rows_b, name)
        if values_a is None or values_b is None:
            continue
        interval = paired_bootstrap_delta(values_a, values_b, confidence=confidence, n_resamples=n_resamples, seed=seed)
        out.append({"metric": name, "a": float(values_a.mean()), "b": float(values_b.mean()), **interval})
    return out


def _query_changes(changes: list[dict[str, Any]], largest: int) -> dict[str, Any]:
    """Queries improved / worsened / unchanged by AP, and the largest drops and gains."""
    deltas = np.array([c["delta"] for c in changes])
    # Stable sorts: ties keep the order of run A's per_query table.
    order = np.argsort(deltas, kind="stable")
    order_gain = np.argsort(-deltas, kind="stable")
    return {
        "counts": {
            "improved": int(np.sum(deltas > UNCHANGED_TOLERANCE)),
            "worsened": int(np.sum(deltas < -UNCHANGED_TOLERANCE)),
            "unchanged": int(np.sum(np.abs(deltas) <= UNCHANGED_TOLERANCE)),
            "by": "ap",
        },
        "largest_drops": [changes[i] for i in order[:largest] if deltas[i] < -UNCHANGED_TOLERANCE],
        "largest_gains": [changes[i] for i in order_gain[:largest] if deltas[i] > UNCHANGED_TOLERANCE],
    }
