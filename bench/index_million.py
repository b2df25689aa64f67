"""Index benchmark on the million preset: flat, IVF, IVF-PQ, HNSW built and searched in the same run.

For every kind: build seconds, index bytes, queries/s and recall@k against the exact (flat)
search of the same queries, for a sweep of nprobe / efSearch; and the cheapest setting meeting
the recall target with its speed-up over flat. The target (docs/performance.md): IVF recall@10
≥ 0.95 at ≥ 10 × flat's queries/s.

Data: by default the project's synthetic generator (``data.synth``, the million preset's shape
scaled to ``--gallery``/``--queries``: identities in groups, 50 camera directions, pose and noise
terms, L2-normalised float32), written to a temporary Parquet file; the indexes are built by
STREAMING that file (``data.store.iter_embedding_batches``), as ``retrieve build-index`` does.
``--data numpy`` uses a plain clustered generator instead (identity centres + noise). Full size is
10,000 queries × 1,000,000 gallery × 256 d, 100,000 identities; the machine is shared, so
scaled-down runs (``--gallery 200000 --queries 1000``) are the usual ones.

    .venv/bin/python bench/index_million.py --gallery 200000 --queries 1000
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.indexes.store import build_index  # noqa: E402
from retrieval.indexes.tuning import recall_at_k  # noqa: E402


def clustered_unit_vectors(rows: int, dim: int, centres: np.ndarray, noise: float, rng, chunk: int = 100_000):
    """Rows of centre + noise, normalised; returns (vectors float32, identity per row)."""
    identity = rng.integers(0, len(centres), rows)
    out = np.empty((rows, dim), dtype=np.float32)
    for start in range(0, rows, chunk):
        ids = identity[start : start + chunk]
        x = centres[ids] + (noise / np.sqrt(dim)) * rng.standard_normal((len(ids), dim), dtype=np.float32)
        out[start : start + chunk] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, identity


def make_data(gallery: int, queries: int, dim: int, identities: int, noise: float, seed: int, group_size: int = 10):
    """Identities in groups (similar-looking people): centre = normalise(group + 0.5·own direction)."""
    rng = np.random.default_rng(seed)
    groups = rng.standard_normal((-(-identities // group_size), dim), dtype=np.float32)
    groups /= np.linalg.norm(groups, axis=1, keepdims=True)
    own = rng.standard_normal((identities, dim), dtype=np.float32)
    own /= np.linalg.norm(own, axis=1, keepdims=True)
    centres = groups[np.arange(identities) // group_size] + 0.5 * own
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    g, _ = clustered_unit_vectors(gallery, dim, centres, noise, rng)
    q, _ = clustered_unit_vectors(queries, dim, centres, noise, rng)
    return g, q


def make_synth_file(gallery: int, queries: int, dim: int, identities: int, seed: int, folder: Path) -> Path:
    """The data.synth generator at the million preset's shape, scaled; returns the Parquet path."""
    from dataclasses import replace

    from retrieval.data.synth import PRESETS, generate

    preset = replace(PRESETS["million"], name=f"million-{gallery}", queries=queries, gallery=gallery, dim=dim,
                     identities=identities)
    return generate(preset, seed, folder / "embeddings.parquet")


class FileGallery:
    """Re-iterable gallery batches streamed from the embeddings file (what build-index does)."""

    def __init__(self, path: Path):
        self.path = path

    def __call__(self):
        from retrieval.data.store import iter_embedding_batches

        return iter_embedding_batches(self.path, batch_rows=65536, splits="gallery")


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed_search(handle, queries, k, repeats: int = 2, **params):
    """Rows of the search and its best time over ``repeats`` runs (after a small warm-up search)."""
    handle.search(queries[:8], k, **params)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        _, rows = handle.search(queries, k, **params)
        best = min(best, time.perf_counter() - started)
    return rows, best


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.iterdir() if p.is_file())


def bench_kind(name, kind_args, sweep_param, sweep_values, gallery, queries, truth, k, flat_qps, workdir, target,
               repeats):
    started = time.perf_counter()
    result = build_index(workdir / name, gallery, metric="l2", **kind_args)
    build_seconds = time.perf_counter() - started
    handle = result.handle
    entries = []
    for value in sweep_values:
        rows, seconds = timed_search(handle, queries, k, repeats, **({sweep_param: value} if sweep_param else {}))
        qps = len(queries) / seconds
        entries.append({sweep_param or "setting": value, "recall": recall_at_k(rows, truth), "qps": qps,
                        "speedup_vs_flat": qps / flat_qps})
        print(f"  {name:6s} {sweep_param or '':9s} {value!s:>6}  recall@{k} {entries[-1]['recall']:.4f}  "
              f"{qps:10.0f} q/s  ×{qps / flat_qps:6.1f} flat", flush=True)
    meeting = [e for e in entries if e["recall"] >= target]
    best = max(meeting, key=lambda e: e["qps"]) if meeting else None
    return {
        "kind": name,
        "factory": handle.manifest["factory"],
        "build_seconds": build_seconds,
        "train_rows": handle.manifest["build"].get("train_rows"),
        "index_bytes": folder_bytes(workdir / name),
        "warnings": result.warnings,
        "sweep": entries,
        "fastest_meeting_target": best,
        "peak_rss_mb_after": peak_rss_mb(),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--identities", type=int, default=None, help="default: gallery / 10")
    parser.add_argument("--data", choices=["synth", "numpy"], default="synth")
    parser.add_argument("--noise", type=float, default=0.3, help="--data numpy: noise norm relative to the unit centres")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--kinds", default="ivf,ivfpq,hnsw")
    parser.add_argument("--nlist", type=int, default=None, help="default: the build default 4·sqrt(n)")
    parser.add_argument("--threads", type=int, default=None, help="faiss OpenMP threads (default: faiss's)")
    parser.add_argument("--repeats", type=int, default=2, help="timed searches per setting (best kept)")
    parser.add_argument("--nprobes", default="2,4,8,16,32,64,128,256", help="IVF nprobe sweep")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "index.json"))
    args = parser.parse_args(argv)
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    identities = args.identities or max(1, args.gallery // 10)
    k = args.k

    with tempfile.TemporaryDirectory(prefix="index-bench-") as tmp:
        workdir = Path(tmp)
        t0 = time.perf_counter()
        if args.data == "synth":
            from retrieval.data.store import read_embeddings

            path = make_synth_file(args.gallery, args.queries, args.dim, identities, args.seed, workdir)
            gallery = FileGallery(path)
            queries = read_embeddings(path, splits="query").vectors
        else:
            gallery, queries = make_data(args.gallery, args.queries, args.dim, identities, args.noise, args.seed)
        gen_seconds = time.perf_counter() - t0
        print(f"data ({args.data}): {args.queries} queries × {args.gallery} gallery × {args.dim} d, "
              f"{identities} identities ({gen_seconds:.1f} s)", flush=True)
        started = time.perf_counter()
        flat = build_index(workdir / "flat", gallery, kind="flat", metric="l2").handle
        flat_build = time.perf_counter() - started
        truth, flat_seconds = timed_search(flat, queries, k, args.repeats)
        flat_qps = len(queries) / flat_seconds
        print(f"  flat   build {flat_build:.1f} s  {flat_qps:10.0f} q/s (the exact reference)", flush=True)
        results = [{
            "kind": "flat", "factory": "Flat", "build_seconds": flat_build, "index_bytes": folder_bytes(workdir / "flat"),
            "sweep": [{"setting": "exact", "recall": 1.0, "qps": flat_qps, "speedup_vs_flat": 1.0}],
            "fastest_meeting_target": {"recall": 1.0, "qps": flat_qps, "speedup_vs_flat": 1.0},
            "peak_rss_mb_after": peak_rss_mb(),
        }]
        del flat
        nprobes = [int(v) for v in args.nprobes.split(",")]
        plans = {
            "ivf": ({"kind": "ivf", "nlist": args.nlist}, "nprobe", nprobes),
            "ivfpq": ({"kind": "ivfpq", "nlist": args.nlist}, "nprobe", nprobes),
            "hnsw": ({"kind": "hnsw"}, "ef_search", [16, 32, 64, 128, 256]),
        }
        for name in [s.strip() for s in args.kinds.split(",") if s.strip()]:
            kind_args, param, values = plans[name]
            print(f"building {name} ...", flush=True)
            entry = bench_kind(name, kind_args, param, values, gallery, queries, truth, k, flat_qps, workdir, args.target,
                               args.repeats)
            print(f"  {name:6s} build {entry['build_seconds']:.1f} s, {entry['index_bytes'] / 1e6:.0f} MB", flush=True)
            results.append(entry)
            if name != "hnsw":
                nlist = int(entry["factory"].split(",")[0][3:])
                entry["sweep"] = [e for e in entry["sweep"] if e["nprobe"] <= nlist]

    ivf = next((r for r in results if r["kind"] == "ivf"), None)
    target_met = None
    if ivf is not None:
        best = ivf["fastest_meeting_target"]
        target_met = bool(best and best["speedup_vs_flat"] >= 10)
    report = {
        "benchmark": "index_million",
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": faiss.omp_get_max_threads(),
                    "note": "shared 2-core machine: absolute times are noisy, ratios are measured in the same run"},
        "versions": {"faiss": faiss.__version__, "numpy": np.__version__},
        "data": {"generator": args.data, "gallery": args.gallery, "queries": args.queries, "dim": args.dim, "identities": identities,
                 "noise": args.noise, "seed": args.seed, "generate_seconds": gen_seconds},
        "k": k,
        "threads": faiss.omp_get_max_threads(),
        "repeats": args.repeats,
        "target": {"recall": args.target, "speedup_vs_flat": 10, "ivf_met": target_met},
        "results": results,
        "peak_rss_mb": peak_rss_mb(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")

    print()
    print(f"{'kind':6s} {'factory':18s} {'build s':>8s} {'MB':>7s} {'setting':>14s} {'recall@' + str(k):>10s} "
          f"{'q/s':>10s} {'× flat':>7s}")
    for r in results:
        best = r["fastest_meeting_target"]
        setting = "-"
        if best:
            setting = next((f"{key} {best[key]}" for key in ("nprobe", "ef_search", "setting") if key in best), "-")
        recall = f"{best['recall']:.4f}" if best else "miss"
        qps = f"{best['qps']:.0f}" if best else "-"
        speed = f"{best['speedup_vs_flat']:.1f}" if best else "-"
        print(f"{r['kind']:6s} {r['factory']:18s} {r['build_seconds']:8.1f} {r['index_bytes'] / 1e6:7.0f} "
              f"{setting:>14s} {recall:>10s} {qps:>10s} {speed:>7s}")
    print(f"(fastest setting with recall@{k} ≥ {args.target}; IVF target ≥ 10 × flat: {target_met}; "
          f"peak RSS {report['peak_rss_mb']:.0f} MB) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
