"""k-reciprocal re-ranking at data-set shape: ours (sparse, eval.rerank) vs the dense reference.

Synthetic preset from retrieval.data.synth (seed 0, L2-normalised float32, 2,048-D):
* ``--preset market`` (3,368 queries + 15,913 gallery): ``ours`` and ``dense``
  (bench/rerank_dense_reference.py, dense N × N arrays), each in its own child process; the
  metrics (Market protocol, k1 = 20, k2 = 6, λ = 0.3) must agree to 1e-6 and the distances of
  the first rows to 1e-4;
* ``--preset msmt17`` (11,659 + 82,161): ``ours`` alone (one dense N × N float32 matrix is
  35 GB: the dense approach cannot run here), against the 16 GB target.

Time is measured inside each child from the vectors in memory to the metrics (loading the
file excluded); peak memory is the child's peak RSS above its RSS once the inputs are loaded
(the kernel's high-water mark is reset after loading). Writes bench/results/rerank.json
(one entry per preset, merged with what is there) and prints a table.

Usage: python bench/rerank_market.py [--preset market|msmt17] [--contenders ours,dense] [--data FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "rerank.json"
COMPARED_ROWS = 200  # first query rows whose distances are compared between contenders


def reset_peak_rss() -> None:
    """Restart the kernel's peak-RSS mark (VmHWM) from the current RSS."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------- child process


def run_contender(name: str, data: Path, out_dir: Path) -> None:
    from retrieval.data.store import read_embeddings
    from retrieval.eval.distances import PrecomputedDistances
    from retrieval.eval.evaluate import evaluate_ranking
    from retrieval.eval.rerank import RerankedDistances

    emb = read_embeddings(data)
    is_query = emb.split == "query"
    query, gallery = emb.vectors[is_query], emb.vectors[~is_query]
    labels = (emb.pid[is_query], emb.pid[~is_query], emb.camid[is_query], emb.camid[~is_query])
    del emb
    base_rss = rss_mb("VmRSS")
    reset_peak_rss()
    last_report: dict[str, float] = {}  # stage -> time of its last report (a stage ends there)
    printed = {"at": 0.0}

    def progress(stage: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if stage not in last_report or now - printed["at"] > 30 or done == total:
            printed["at"] = now
            print(f"  [{name}] {now - start:7.1f}s {stage} {done}/{total} "
                  f"(peak extra {rss_mb('VmHWM') - base_rss:.0f} MB)", file=sys.stderr, flush=True)
        last_report[stage] = now

    start = time.perf_counter()
    if name == "ours":
        source = RerankedDistances(query, gallery, k1=20, k2=6, lambda_=0.3, progress=progress)
        result = evaluate_ranking(source, *labels, keep_top=0)
    else:
        sys.path.insert(0, str(ROOT / "bench"))
        from rerank_dense_reference import dense_rerank

        matrix = dense_rerank(query, gallery, k1=20, k2=6, lambda_=0.3)
        first_rows = matrix[:COMPARED_ROWS]
        result = evaluate_ranking(PrecomputedDistances(matrix), *labels, keep_top=0)
    seconds = time.perf_counter() - start
    stages, previous = {}, start
    for stage, end in last_report.items():
        stages[stage], previous = end - previous, end
    peak = rss_mb("VmHWM")
    if name == "ours":  # after the timing: the graph is kept, only these rows' blocks are recomputed
        first_rows = next(iter(source.blocks(COMPARED_ROWS)))[1]
    np.save(out_dir / f"{name}_rows.npy", np.asarray(first_rows, dtype=np.float64))
    record = {
        "seconds": seconds,
        "peak_extra_mb": peak - base_rss,
        "peak_rss_mb": peak,
        "inputs_rss_mb": base_rss,
        "mAP": result.mAP,
        "mINP": result.mINP,
        "rank1": result.rank(1),
        "rank5": result.rank(5),
        "num_valid_queries": result.num_valid_queries,
    }
    if name == "ours":
        record["stage_seconds"] = stages
        record["stage_note"] = "jaccard includes the evaluator's ranking of each block"
    (out_dir / f"{name}.json").write_text(json.dumps(record))


# ----------------------------------------------------------------------------- parent


def ensure_data(preset: str, data: Path | None) -> Path:
    if data is not None:
        return data
    path = Path(tempfile.gettempdir()) / f"retrieve_bench_{preset}_seed0.parquet"
    if not path.exists():
        from retrieval.data.synth import generate

        generate(preset, 0, path)
    return path


def machine() -> dict:
    import numpy

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "note": "shared 2-core machine (other jobs running): times are noisy, compare ratios",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=("small", "market", "msmt17"), default="market")
    parser.add_argument("--contenders", default=None, help="comma list of ours,dense")
    parser.add_argument("--data", type=Path, default=None, help="embeddings file (default: synthesise the preset)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_contender(args.child, args.data, args.out_dir)
        return
    contenders = (args.contenders or ("ours,dense" if args.preset != "msmt17" else "ours")).split(",")
    data = ensure_data(args.preset, args.data)
    out_dir = Path(tempfile.mkdtemp(prefix="rerank_bench_"))
    records = {}
    for name in contenders:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--data", str(data),
               "--out-dir", str(out_dir)]
        proc = subprocess.run(cmd, cwd=ROOT)
        if proc.returncode != 0:
            records[name] = {"failed": f"exit code {proc.returncode}"}
            continue
        records[name] = json.loads((out_dir / f"{name}.json").read_text())
    entry = {"preset": args.preset, "data": str(data), "k1": 20, "k2": 6, "lambda": 0.3,
             "distance": "squared", "machine": machine(), "contenders": records}
    if "ours" in records and "dense" in records and "failed" not in records["dense"] and "failed" not in records["ours"]:
        ours, dense = records["ours"], records["dense"]
        rows_diff = np.abs(np.load(out_dir / "ours_rows.npy") - np.load(out_dir / "dense_rows.npy")).max()
        entry["comparison"] = {
            "speedup": dense["seconds"] / ours["seconds"],
            "memory_ratio": ours["peak_extra_mb"] / dense["peak_extra_mb"],
            "max_abs_metric_diff": max(abs(ours[k] - dense[k]) for k in ("mAP", "mINP", "rank1", "rank5")),
            "max_abs_distance_diff_first_rows": float(rows_diff),
        }
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results[args.preset] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1))
    print_table(entry)


def print_table(entry: dict) -> None:
    print(f"\nre-ranking, {entry['preset']} preset (k1 20, k2 6, λ 0.3)")
    print(f"{'contender':<10} {'seconds':>9} {'peak extra MB':>14} {'mAP':>9} {'rank-1':>8}")
    for name, rec in entry["contenders"].items():
        if "failed" in rec:
            print(f"{name:<10} failed: {rec['failed']}")
            continue
        print(f"{name:<10} {rec['seconds']:>9.1f} {rec['peak_extra_mb']:>14.0f} {rec['mAP']:>9.6f} {rec['rank1']:>8.4f}")
    if "comparison" in entry:
        c = entry["comparison"]
        print(f"speed-up ×{c['speedup']:.1f}, memory ratio {c['memory_ratio']:.3f}, "
              f"max metric diff {c['max_abs_metric_diff']:.2e}, max distance diff {c['max_abs_distance_diff_first_rows']:.2e}")
    ours = entry["contenders"].get("ours", {})
    if "stage_seconds" in ours:
        print("ours by stage (s): " + ", ".join(f"{k} {v:.1f}" for k, v in ours["stage_seconds"].items()))


if __name__ == "__main__":
    main()
