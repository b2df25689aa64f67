"""Benchmark: a sharded IVF build of the million preset on Ray vs the one-process build.

Data: the million preset (``data.synth``: 10,000 queries × 1,000,000 gallery × 256 d, 100,000
identities), or scaled by ``--gallery`` / ``--queries``, written to one Parquet file (or
``--files`` files of a folder). Contenders, same data, same run:

  * one process: ``retrieve build-index DATA --kind ivf`` (``jobs.index.build``);
  * sharded:     ``retrieve build-index DATA --kind ivf --shards S --ray local:N``: the shards draw
                 the training sample (the very rows one process draws), the quantizer is trained
                 once here, the shards add their rows and write their files in parallel.

Reported: build seconds of each (the sharded one per stage from its progress), recall@10 of both
against exact search at the index's default nprobe and at ``--nprobe``, and whether the sharded
index's answers equal the one-process index's. Timings on a shared machine are noisy.

    .venv/bin/python bench/ray_index_build.py                               # the million preset
    .venv/bin/python bench/ray_index_build.py --gallery 200000 --queries 1000 --shards 4

Writes bench/results/ray_index_build.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.data.store import read_embeddings  # noqa: E402
from retrieval.data.synth import PRESETS, generate  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "ray_index_build.json"


def stage_clock():
    marks: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        marks.setdefault(stage, [time.perf_counter(), time.perf_counter()])[1] = time.perf_counter()

    return marks, progress


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--identities", type=int, default=None)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--nprobe", type=int, default=None, help="also measure recall at this nprobe")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from retrieval.distributed.cluster import connect
    from retrieval.indexes.search import exact_search
    from retrieval.indexes.tuning import recall_at_k
    from retrieval.jobs.index import BuildOptions, build
    from retrieval.jobs.search import SearchOptions, search

    preset = replace(PRESETS["million"], queries=args.queries, gallery=args.gallery,
                     identities=args.identities or max(10, args.gallery // 10))
    cluster = connect(f"local:{args.cpus}")
    with tempfile.TemporaryDirectory() as tmp:
        data = generate(preset, args.seed, Path(tmp) / "million.parquet")
        started = time.perf_counter()
        one = build(data, Path(tmp) / "one", BuildOptions(kind="ivf", device="cpu", seed=args.seed), overwrite=False)
        one_seconds = time.perf_counter() - started
        marks, progress = stage_clock()
        started = time.perf_counter()
        build(data, Path(tmp) / "sharded", BuildOptions(kind="ivf", device="cpu", seed=args.seed, shards=args.shards),
              overwrite=False, cluster=cluster, progress=progress)
        sharded_seconds = time.perf_counter() - started
        queries = read_embeddings(data, splits="query").vectors
        gallery = read_embeddings(data, splits="gallery").vectors
        _, truth = exact_search(gallery, queries, args.k, "l2")
        del gallery
        rows = {}
        for nprobe in [None] + ([args.nprobe] if args.nprobe else []):
            a = search(Path(tmp) / "one", data, SearchOptions(k=args.k, nprobe=nprobe, device="cpu"))
            b = search(Path(tmp) / "sharded", data, SearchOptions(k=args.k, nprobe=nprobe, device="cpu"),
                       cluster=cluster)
            rows[str(a.found.params["nprobe"])] = {
                "recall_one_process": recall_at_k(a.found.rows, truth),
                "recall_sharded": recall_at_k(b.found.rows, truth),
                "same_answers": bool(np.array_equal(a.found.rows, b.found.rows)),
                "search_s_one_process": round(a.timings["search"], 3), "search_s_sharded": round(b.timings["search"], 3),
            }
    cluster.close()
    report = {
        "benchmark": "ray_index_build", "machine": platform.node(), "cpus_machine": os.cpu_count(),
        "ray_cpus": args.cpus, "gallery": args.gallery, "queries": args.queries, "dim": preset.dim,
        "shards": args.shards, "nlist": one.manifest["build"].get("nlist"),
        "build_s_one_process": round(one_seconds, 2), "build_s_sharded": round(sharded_seconds, 2),
        "sharded_stages_s": {stage: round(b - a, 2) for stage, (a, b) in marks.items()},
        "search": rows, "load_average": os.getloadavg(),
        "note": "shared machine: absolute times are noisy",
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
