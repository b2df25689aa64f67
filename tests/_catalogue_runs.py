"""Fabricated run folders (the documented run-folder format) for the catalogue/compare/report tests.

Each fake evaluate run is internally consistent: metrics are the means of its per-query values,
its CMC curve comes from the first-match ranks, its rankings agree with the first-match ranks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa

from retrieval.runs import write_run

CMC_POINTS = 20


def fake_per_query(n_queries: int, seed: int, n_invalid: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    first = rng.integers(1, 15, size=n_queries)
    matches = rng.integers(1, 5, size=n_queries)
    ap = np.clip(1.0 / first + rng.uniform(-0.1, 0.1, size=n_queries), 0.01, 1.0)
    ap[first == 1] = np.maximum(ap[first == 1], 0.5)
    valid = np.ones(n_queries, dtype=bool)
    valid[:n_invalid] = False
    return pa.table(
        {
            "query_id": [f"q{i:03d}" for i in range(n_queries)],
            "pid": pa.array(np.arange(n_queries) // 2 + 1, pa.int64()),
            "camid": pa.array(np.arange(n_queries) % 3 + 1, pa.int64()),
            "valid": valid,
            "ap": pa.array(np.where(valid, ap, np.nan)),
            "inp": pa.array(np.where(valid, ap / 2, np.nan)),
            "first_match_rank": pa.array(np.where(valid, first, 0), pa.int64()),
            "num_matches": pa.array(np.where(valid, matches, 0), pa.int64()),
            "r_precision": pa.array(np.where(valid, ap * 0.9, np.nan)),
        }
    )


def fake_rankings(per_query: pa.Table, top: int = 10) -> pa.Table:
    rows = []
    for query in per_query.to_pylist():
        for rank in range(1, top + 1):
            is_match = bool(query["valid"]) and rank == query["first_match_rank"]
            rows.append(
                {
                    "query_id": query["query_id"],
                    "rank": rank,
                    "gallery_id": f"g{(hash_int(query['query_id']) + rank) % 50:03d}",
                    "distance": 0.1 * rank,
                    "is_match": is_match,
                    "is_junk": rank == top and not is_match,
                }
            )
    return pa.Table.from_pylist(rows)


def hash_int(text: str) -> int:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def metrics_from_per_query(per_query: pa.Table, stage: str = "plain", protocol: str = "market") -> list[dict]:
    valid = np.asarray(per_query["valid"])
    ap = np.asarray(per_query["ap"])[valid]
    inp = np.asarray(per_query["inp"])[valid]
    first = np.asarray(per_query["first_match_rank"])[valid]
    values = {"mAP": ap.mean(), "mINP": inp.mean()}
    for k in (1, 5, 10, 20):
        values[f"rank-{k}"] = float(np.mean(first <= k))
    return [
        {"metric": name, "value": float(value), "stage": stage, "protocol": protocol,
         "ap_variant": "standard", "metric_distance": "euclidean"}
        for name, value in values.items()
    ]


def cmc_curve(per_query: pa.Table, stage: str = "plain") -> list[dict]:
    valid = np.asarray(per_query["valid"])
    first = np.asarray(per_query["first_match_rank"])[valid]
    return [
        {"curve": "cmc", "stage": stage, "x": float(k), "y": float(np.mean(first <= k)), "threshold": None}
        for k in range(1, CMC_POINTS + 1)
    ]


def make_evaluate_run(
    workspace: Path,
    run_id: str,
    *,
    seed: int = 0,
    n_queries: int = 30,
    rerank: bool = False,
    protocol: str = "market",
    embeddings: str | None = None,
    created: str | None = None,
    per_query: pa.Table | None = None,
) -> Path:
    per_query = per_query if per_query is not None else fake_per_query(n_queries, seed)
    metric_rows = metrics_from_per_query(per_query, "plain", protocol)
    curve_rows = cmc_curve(per_query, "plain")
    if rerank:
        # The re-ranked stage: the stored per_query values are the re-ranked ones.
        before = per_query
        per_query = fake_per_query(per_query.num_rows, seed + 1000)
        per_query = per_query.append_column("ap_before_rerank", before["ap"])
        metric_rows = metrics_from_per_query(before, "plain", protocol) + metrics_from_per_query(per_query, "rerank", protocol)
        curve_rows = cmc_curve(before, "plain") + cmc_curve(per_query, "rerank")
    record = {
        "kind": "evaluate",
        "command": f"retrieve evaluate {embeddings or 'emb.parquet'} --protocol {protocol}" + (" --rerank" if rerank else ""),
        "parameters": {"protocol": protocol, "rerank": rerank, "metric": "euclidean"},
        "inputs": {"embeddings": embeddings or "emb.parquet", "content_hash": f"hash-{seed}"},
        "versions": {"retrieve": "0.1.0"},
        "timings": {"distances": 0.1, "metrics": 0.05},
        "result": {m["metric"]: m["value"] for m in metric_rows if m["stage"] == ("rerank" if rerank else "plain")},
        "run_id": run_id,
    }
    if created:
        record["created"] = created
    tables = {
        "metrics": pa.Table.from_pylist(metric_rows),
        "per_query": per_query,
        "rankings": fake_rankings(per_query),
        "curves": pa.Table.from_pylist(
            curve_rows, schema=pa.schema([("curve", pa.string()), ("stage", pa.string()), ("x", pa.float64()),
                                          ("y", pa.float64()), ("threshold", pa.float64())])
        ),
    }
    return write_run(workspace / run_id, record, tables)


def make_verify_run(workspace: Path, run_id: str, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    far = np.concatenate([[0.0], np.sort(rng.uniform(1e-5, 1.0, size=40)), [1.0]])
    tar = np.clip(np.sqrt(far) + 0.3, 0, 1)
    metrics = [
        {"metric": name, "value": value, "stage": "plain", "protocol": "lfw-10fold", "ap_variant": None,
         "metric_distance": "cosine"}
        for name, value in {"accuracy_mean": 0.97, "accuracy_std": 0.01, "roc_auc": 0.99, "eer": 0.03,
                            "tar@far=1e-3": 0.8}.items()
    ]
    curves = pa.table(
        {"curve": ["roc"] * far.size, "stage": ["plain"] * far.size, "x": far, "y": tar,
         "threshold": np.linspace(2.0, 0.0, far.size)}
    )
    record = {"kind": "verify", "command": "retrieve verify emb.parquet --pairs pairs.txt",
              "parameters": {"folds": 10}, "inputs": {"embeddings": "emb.parquet", "content_hash": "hash-v"},
              "versions": {}, "timings": {}, "result": {"accuracy_mean": 0.97}, "run_id": run_id}
    return write_run(workspace / run_id, record, {"metrics": pa.Table.from_pylist(metrics), "curves": curves})


def snapshot(folder: Path) -> dict[str, tuple[int, bytes]]:
    """Every file under a folder with its mtime and bytes: to prove nothing was touched."""
    return {
        str(path.relative_to(folder)): (path.stat().st_mtime_ns, path.read_bytes())
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }
