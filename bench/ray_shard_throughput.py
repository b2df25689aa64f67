"""Benchmark: what one gallery shard costs one core (the input of docs/scaling.md's estimates).

One shard of ``--shard-rows`` gallery rows × ``--dim`` against ``--queries`` queries, the three
rounds of ``retrieval.distributed.ranking`` run in this process on ONE BLAS thread (as a Ray
worker runs them): round 1 (exact match values), round 2 (the distance blocks: counts and top
candidates), round 3 (exact values of the surviving top candidates). Reported: seconds per round,
query × gallery pairs per second per core, and the shard's peak memory (tracemalloc, inputs
excluded). Synthetic data at re-ID difficulty.

    .venv/bin/python bench/ray_shard_throughput.py --dims 256,2048

Writes bench/results/ray_shard_throughput.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

RESULTS = Path(__file__).parent / "results" / "ray_shard_throughput.json"


def measure(dim: int, queries: int, shard_rows: int, seed: int) -> dict:
    from threadpoolctl import threadpool_limits

    from bench.ray_big_gallery import write_data
    from retrieval.distributed import ranking
    from retrieval.distributed.shards import load_part
    from retrieval.eval import shards as S
    from retrieval.jobs.inputs import distributed_sets

    with tempfile.TemporaryDirectory() as tmp, threadpool_limits(1):
        q_file, g_dir = write_data(Path(tmp), shard_rows, queries, dim, 1, seed)
        sets = distributed_sets(q_file, g_dir, None, None, "market", True)
        part = sets.gallery.parts[0]
        spec = ranking.RankSpec("market", (-1,), 100, "euclidean")
        load_part(part, None)  # read once: the file read is not what is measured
        times = {}
        tracemalloc.start()
        started = time.perf_counter()
        first = ranking.first_pass_task(part, None, sets.queries, spec, None, None)
        times["round1_match_values"] = time.perf_counter() - started
        matches = S.gather_matches([first.matches])
        started = time.perf_counter()
        second = ranking.second_pass_task(part, None, sets.queries, spec, None, None, matches, 0)
        times["round2_blocks"] = time.perf_counter() - started
        keep = S.top_survivors([second.top], len(sets.queries), 100)[0]
        started = time.perf_counter()
        ranking.top_task(part, None, sets.queries, spec, None, None, second.top.query[keep], second.top.col[keep])
        times["round3_top_values"] = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    total = sum(times.values())
    return {"dim": dim, "queries": queries, "shard_rows": shard_rows, **{k: round(v, 3) for k, v in times.items()},
            "pairs_per_second_per_core": round(queries * shard_rows / total),
            "round2_pairs_per_second_per_core": round(queries * shard_rows / times["round2_blocks"]),
            "peak_extra_mb": round(peak / 2**20, 1), "shard_vectors_mb": round(shard_rows * dim * 4 / 2**20, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", default="256,2048")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--shard-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rows = [measure(int(d), args.queries, args.shard_rows, args.seed) for d in args.dims.split(",")]
    report = {"benchmark": "ray_shard_throughput", "machine": platform.node(), "cpus_machine": os.cpu_count(),
              "load_average": os.getloadavg(), "rows": rows, "note": "one BLAS thread; shared machine: noisy"}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
