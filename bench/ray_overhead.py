"""Benchmark: the cost of Ray on one machine: one process vs ``--ray local:N`` (docs/scaling.md).

Same data, same run: the evaluate job (``retrieval.jobs.evaluate.evaluate_files``, what ``retrieve
evaluate`` runs) on a synthetic preset file, in this process and on a local Ray cluster of N CPUs
started once before timing (its start-up is reported apart). The results must be identical (the
script checks the metrics, per-query table and rankings); the ratio cluster / one process is the
overhead of Ray (target ≤ 1.15 at Market and MSMT17 shapes on 2 cores: docs/performance.md).
Each contender runs once untimed (warm-up: Ray's workers import the engine on their first task),
then ``--repeats`` times; the median is reported.

    .venv/bin/python bench/ray_overhead.py                      # market + msmt17, local:2
    .venv/bin/python bench/ray_overhead.py --presets market --scale 0.25 --rerank

``--scale`` shrinks queries and gallery (for a quick check on a busy machine). Writes
bench/results/ray_overhead.json and prints a table.
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
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.data.synth import PRESETS, generate  # noqa: E402
from retrieval.jobs.evaluate import EvaluateOptions, RerankOptions, evaluate_files  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "ray_overhead.json"


def timed(fn, repeats: int, warmup: int = 1):
    """Median of ``repeats`` timed calls after ``warmup`` untimed ones (Ray's workers import the
    engine on their first task; one process has imported it already)."""
    for _ in range(warmup):
        fn()
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), times, result


def same(a, b) -> bool:
    return (a.summary() == b.summary() and all(t.equals(b.tables()[n]) for n, t in a.tables().items()))


def run_preset(name: str, scale: float, seed: int, cluster, repeats: int, rerank: bool, folder: Path) -> dict:
    preset = PRESETS[name]
    if scale != 1.0:
        preset = replace(preset, queries=max(50, int(preset.queries * scale)),
                         gallery=max(500, int(preset.gallery * scale)),
                         identities=max(20, int(preset.identities * scale)))
    path = folder / f"{name}.parquet"
    generate(preset, seed, path)
    options = EvaluateOptions(rerank=RerankOptions() if rerank else None)
    one, one_times, a = timed(lambda: evaluate_files(path, None, None, None, options), repeats)
    ray, ray_times, b = timed(lambda: evaluate_files(path, None, None, None, options, cluster=cluster), repeats)
    return {
        "preset": name, "queries": preset.queries, "gallery": preset.gallery, "dim": preset.dim, "rerank": rerank,
        "one_process_s": round(one, 3), "ray_s": round(ray, 3), "overhead": round(ray / one, 3),
        "one_process_runs": [round(t, 3) for t in one_times], "ray_runs": [round(t, 3) for t in ray_times],
        "ray_stages_s": {k: round(v, 3) for k, v in b.timings.items()},
        "one_process_stages_s": {k: round(v, 3) for k, v in a.timings.items()},
        "shards": b.cluster["shards"], "identical": same(a, b), "mAP": a.final.mAP,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="market,msmt17")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rerank", action="store_true", help="also time k-reciprocal re-ranking")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from retrieval.distributed.cluster import connect

    started = time.perf_counter()
    cluster = connect(f"local:{args.cpus}")
    startup = time.perf_counter() - started
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.presets.split(","):
            for rerank in ([False, True] if args.rerank else [False]):
                rows.append(run_preset(name, args.scale, args.seed, cluster, args.repeats, rerank, Path(tmp)))
                r = rows[-1]
                print(f"{r['preset']:>8} {r['queries']:>6} × {r['gallery']:>7}{' rerank' if rerank else '       '}  "
                      f"one process {r['one_process_s']:8.2f} s   ray local:{args.cpus} {r['ray_s']:8.2f} s   "
                      f"× {r['overhead']:.2f}   identical {r['identical']}", flush=True)
    cluster.close()
    report = {"benchmark": "ray_overhead", "machine": platform.node(), "cpus_machine": os.cpu_count(),
              "ray_cpus": args.cpus, "ray_startup_s": round(startup, 2), "scale": args.scale,
              "load_average": os.getloadavg(), "rows": rows,
              "note": "shared machine: absolute times are noisy; the ratio is what counts"}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"Ray start-up {startup:.1f} s (not in the times above); written {RESULTS}")


if __name__ == "__main__":
    main()
