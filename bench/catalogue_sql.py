"""Benchmark: the DuckDB catalogue over a workspace of Market-shaped runs.

A workspace of N fabricated evaluate runs at Market-1501 shape (3,368 queries; top-100 rankings,
336,800 rows per run) is queried three ways, each timed for

  * ours       - ``retrieval.connect(workspace)`` then one SQL statement (views over the run files);
                 also the statement alone on an open connection ("query s");
  * reference  - what users do without a catalogue: read every run's Parquet files with pyarrow into
                 pandas, concatenate, and answer the same question with pandas (merge / groupby).

Both answers are checked to agree. Peak Python-heap memory (tracemalloc) is reported for the
pandas reference only: DuckDB allocates outside the Python heap.

    .venv/bin/python bench/catalogue_sql.py [--runs 10] [--repeats 3]

Writes bench/results/catalogue.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.catalogue import connect
from retrieval.runs import write_run

RESULTS = Path(__file__).parent / "results" / "catalogue.json"
QUERIES, TOP, GALLERY = 3_368, 100, 15_913


def fabricate_run(workspace: Path, index: int) -> None:
    rng = np.random.default_rng(index)
    query_ids = np.array([f"q{i:05d}" for i in range(QUERIES)], dtype=object)
    ap = rng.beta(4, 1.5, size=QUERIES)
    first = rng.geometric(0.7, size=QUERIES)
    per_query = pa.table({
        "query_id": query_ids, "pid": pa.array(np.arange(QUERIES) // 4, pa.int64()),
        "camid": pa.array(np.arange(QUERIES) % 6 + 1, pa.int64()), "valid": np.ones(QUERIES, bool), "ap": ap,
        "inp": ap * 0.6, "first_match_rank": pa.array(first, pa.int64()),
        "num_matches": pa.array(rng.integers(1, 20, QUERIES), pa.int64()), "r_precision": ap * 0.9,
    })
    ranks = np.tile(np.arange(1, TOP + 1), QUERIES)
    rankings = pa.table({
        "query_id": np.repeat(query_ids, TOP), "rank": pa.array(ranks, pa.int64()),
        "gallery_id": pa.array(np.char.add("g", rng.integers(0, GALLERY, QUERIES * TOP).astype(str)).astype(object)),
        "distance": np.sort(rng.uniform(0, 2, (QUERIES, TOP)), axis=1).reshape(-1),
        "is_match": ranks == np.repeat(first, TOP), "is_junk": np.zeros(QUERIES * TOP, bool),
    })
    metrics = pa.Table.from_pylist([
        {"metric": "mAP", "value": float(ap.mean()), "stage": "plain", "protocol": "market",
         "ap_variant": "standard", "metric_distance": "euclidean"},
        {"metric": "rank-1", "value": float((first == 1).mean()), "stage": "plain", "protocol": "market",
         "ap_variant": "standard", "metric_distance": "euclidean"},
    ])
    record = {"kind": "evaluate", "command": "bench", "parameters": {}, "inputs": {"content_hash": str(index)}}
    write_run(workspace / f"run-{index:03d}", record, {"metrics": metrics, "per_query": per_query, "rankings": rankings})


QUESTIONS = {
    "worse queries A->B": (
        "SELECT a.query_id, b.ap - a.ap AS delta FROM per_query a JOIN per_query b USING (query_id) "
        "WHERE a.run_id = 'run-000' AND b.run_id = 'run-001' AND b.ap < a.ap ORDER BY delta, a.query_id"
    ),
    "hardest queries (mean AP over runs)": (
        "SELECT query_id, avg(ap) AS mean_ap FROM per_query GROUP BY query_id ORDER BY mean_ap, query_id LIMIT 20"
    ),
    "rank-1 per run from rankings": (
        "SELECT run_id, avg(CASE WHEN is_match THEN 1.0 ELSE 0.0 END) AS rank1 FROM rankings WHERE rank = 1 "
        "GROUP BY run_id ORDER BY run_id"
    ),
}


def _read_all(workspace: Path, name: str, columns=None) -> pd.DataFrame:
    frames = []
    for run_dir in sorted(workspace.iterdir()):
        frame = pq.read_table(run_dir / f"{name}.parquet", columns=columns).to_pandas()
        frame.insert(0, "run_id", run_dir.name)
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def reference_answer(workspace: Path, question: str) -> list:
    if question.startswith("worse"):
        pq_all = _read_all(workspace, "per_query")
        a = pq_all[pq_all.run_id == "run-000"]
        b = pq_all[pq_all.run_id == "run-001"]
        merged = a.merge(b, on="query_id", suffixes=("_a", "_b"))
        merged["delta"] = merged.ap_b - merged.ap_a
        worse = merged[merged.ap_b < merged.ap_a].sort_values(["delta", "query_id"])
        return list(zip(worse.query_id, worse.delta))
    if question.startswith("hardest"):
        pq_all = _read_all(workspace, "per_query")
        mean = pq_all.groupby("query_id").ap.mean().reset_index().sort_values(["ap", "query_id"]).head(20)
        return list(zip(mean.query_id, mean.ap))
    rankings = _read_all(workspace, "rankings")
    first = rankings[rankings["rank"] == 1]
    rank1 = first.groupby("run_id").is_match.mean().reset_index().sort_values("run_id")
    return list(zip(rank1.run_id, rank1.is_match))


def ours_answer(workspace: Path, question: str) -> list:
    return connect(workspace).execute(QUESTIONS[question]).fetchall()


def _same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x[0] == y[0] and abs(float(x[1]) - float(y[1])) < 1e-9 for x, y in zip(a, b))


def _time(fn, repeats: int) -> tuple[float, object]:
    times, answer = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        answer = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), answer


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        start = time.perf_counter()
        for index in range(args.runs):
            fabricate_run(workspace, index)
        fabricate_s = time.perf_counter() - start
        connect_s, _ = _time(lambda: connect(workspace), args.repeats)
        for question in QUESTIONS:
            ours_s, ours = _time(lambda: ours_answer(workspace, question), args.repeats)
            connection = connect(workspace)
            query_s, _ = _time(lambda: connection.execute(QUESTIONS[question]).fetchall(), args.repeats)
            ref_s, ref = _time(lambda: reference_answer(workspace, question), args.repeats)
            if not _same(ours, ref):
                sys.exit(f"answers differ for {question!r}")
            tracemalloc.start()
            reference_answer(workspace, question)
            ref_peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            rows.append({"question": question, "ours_s": ours_s, "ours_query_only_s": query_s, "pandas_s": ref_s, "speedup": ref_s / ours_s,
                         "pandas_peak_mb": ref_peak / 2**20, "rows": len(ours)})
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared)",
        "runs": args.runs, "queries_per_run": QUERIES, "rankings_rows_per_run": QUERIES * TOP,
        "fabricate_s": fabricate_s, "connect_s": connect_s, "repeats": args.repeats, "questions": rows,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.runs} runs x {QUERIES} queries ({QUERIES * TOP:,} rankings rows each); connect {connect_s:.3f} s")
    print(f"{'question':40} {'ours s':>8} {'query s':>8} {'pandas s':>9} {'ratio':>7} {'pandas peak MB':>15}")
    for row in rows:
        print(f"{row['question']:40} {row['ours_s']:8.3f} {row['ours_query_only_s']:8.3f} {row['pandas_s']:9.3f} {row['speedup']:6.1f}x "
              f"{row['pandas_peak_mb']:15.0f}")


if __name__ == "__main__":
    main()
