"""GPU benchmark: the engine's CUDA paths (PyTorch, TF32 off) against its CPU paths, same data, same run.

Run on a machine with a CUDA GPU and PyTorch (the faiss GPU build is not needed: without it the
engine computes distances, exact searches and re-ranking's k-NN lists with torch). Each workload
runs on ``cpu`` (numpy/OpenBLAS and faiss-cpu on all cores) and on ``cuda``, one after the other
in this process, and the two results are compared **bit for bit** (metrics, per-query tables,
top-100 rankings, neighbour lists): the engine's claim is that the device changes the time, never a
rank or a metric.

Workloads (synthetic presets of ``retrieval.data.synth``, seed 0):
  * eval-market / eval-msmt17: query × gallery ranking with CMC, mAP, mINP and the top-100
    rankings table (``evaluate_ranking(EmbeddingDistances(..., device=...), keep_top=100)``);
  * rerank-market / rerank-msmt17: k-reciprocal re-ranking (k1 20, k2 6, λ 0.3) then evaluation;
  * verify-market: every query × gallery trial (about 53.6 M) -> ROC AUC, EER, TAR at FAR;
  * knn-faces: exact 10-NN lists of N faces (128-D cosine), the graph of ``retrieve cluster``;
  * identify-faces: 1:N identification of 10,000 probes (half never enrolled) against N faces.

Times are wall seconds of one call after one untimed warm-up call on small data (CUDA context,
cuBLAS handles); the GPU's peak memory is torch's ``max_memory_allocated``. Writes
bench/results/gpu.json (or ``--out``) and prints a table.

    python bench/gpu.py [--workloads eval-market,...] [--faces 200000] [--knn-faces 50000] [--cpu-skip rerank-msmt17]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "gpu.json"
# cheap ones first; on one H100 with 16 host cores (27 November 2026) the first four took about 2 min
# of data and timing, identify-faces at 1,000,000 did not finish in 2 min: hence 200,000 by default
WORKLOADS = ("eval-market", "rerank-market", "verify-market", "knn-faces", "eval-msmt17", "rerank-msmt17",
             "identify-faces")


# ----------------------------------------------------------------------------- data


def reid(preset: str):
    """(query, gallery) Embeddings of a re-ID preset, generated once per process."""
    from retrieval.data.store import read_embeddings
    from retrieval.data.synth import generate

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"retrieve_gpu_{preset}_seed0.parquet"
    if not path.exists():
        generate(preset, 0, path)
    emb = read_embeddings(path)
    return emb.by_split("query"), emb.by_split("gallery")


def faces(gallery: int, probes: int, seed: int = 0):
    """(probe vectors, probe pid, gallery vectors, gallery pid) of the faces preset at this size."""
    from retrieval.data.synth import PRESETS, in_memory

    preset = replace(PRESETS["faces"], name=f"faces-{gallery}", queries=probes, gallery=gallery,
                     identities=max(gallery // 10, 1))
    vectors, pid = in_memory(preset, seed)
    return vectors[:probes], pid[:probes], vectors[probes:], pid[probes:]


# ----------------------------------------------------------------------------- workloads
# Each returns (call, compare): call(device) runs the workload and returns its result; compare(a, b)
# returns (equal, detail) for the CPU and CUDA results.


def ranking_compare(a, b):
    same_metrics = a.mAP == b.mAP and a.mINP == b.mINP and np.array_equal(a.cmc, b.cmc)
    same_tables = a.per_query.equals(b.per_query) and a.rankings.equals(b.rankings)
    detail = {"mAP": a.mAP, "mINP": a.mINP, "rank1": float(a.cmc[0]),
              "max_metric_difference": float(max(abs(a.mAP - b.mAP), abs(a.mINP - b.mINP),
                                                 np.abs(a.cmc - b.cmc).max())),
              "tables_identical": bool(same_tables)}
    return bool(same_metrics and same_tables), detail


def eval_workload(preset: str):
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.evaluate import evaluate_ranking

    q, g = reid(preset)
    labels = (q.pid, g.pid, q.camid, g.camid)

    def call(device):
        return evaluate_ranking(EmbeddingDistances(q.vectors, g.vectors, device=device), *labels, keep_top=100)
    return call, ranking_compare, f"{len(q):,} × {len(g):,} × {q.dim}"


def rerank_workload(preset: str):
    from retrieval.eval.evaluate import evaluate_ranking
    from retrieval.eval.rerank import RerankedDistances

    q, g = reid(preset)
    labels = (q.pid, g.pid, q.camid, g.camid)

    def call(device):
        source = RerankedDistances(q.vectors, g.vectors, k1=20, k2=6, lambda_=0.3, device=device)
        return evaluate_ranking(source, *labels, keep_top=100)
    return call, ranking_compare, f"{len(q):,} + {len(g):,} × {q.dim}"


def verify_workload(preset: str):
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.protocol import RankingLabels
    from retrieval.eval.trials import query_gallery_verification

    q, g = reid(preset)
    labels = RankingLabels(q.pid, g.pid, q.camid, g.camid, protocol="market")

    def call(device):
        source = EmbeddingDistances(q.vectors, g.vectors, metric="sqeuclidean", device=device)
        return query_gallery_verification(source, labels, distance="sqeuclidean").to_dict()

    def compare(a, b):
        detail = {"num_pairs": a["num_pairs"], "roc_auc": a["roc_auc"], "eer": a["eer"]}
        return a == b, detail
    return call, compare, f"{len(q):,} × {len(g):,} trials"


def knn_workload(items: int):
    from retrieval.indexes.knn import exact_knn

    _, _, vectors, _ = faces(items, 0)

    def call(device):
        return exact_knn(vectors, 10, metric="cosine", device=device)

    def compare(a, b):
        equal = all(np.array_equal(x, y) for x, y in zip(a, b))
        return equal, {"items": items, "k": 10}
    return call, compare, f"{items:,} × 128, k 10"


def identify_workload(items: int, probes: int = 10_000):
    from retrieval.eval.identification import identify

    probe_vectors, probe_pid, gallery, gallery_pid = faces(items, probes)

    def call(device):
        return identify(probe_vectors, gallery, probe_pid, gallery_pid, fpirs=(1e-3, 1e-2, 1e-1),
                        device=device).to_dict()

    def compare(a, b):
        return a == b, {"rank1": a["cmc"]["1"], "tpir_at_fpir": {k: v["tpir"] for k, v in a["tpir_at_fpir"].items()}}
    return call, compare, f"{probes:,} probes × {items:,} × 128"


# ----------------------------------------------------------------------------- measuring


def synchronize() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(call, device: str):
    import torch

    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    synchronize()
    start = time.perf_counter()
    result = call(device)
    synchronize()
    seconds = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated() / 2**20 if device == "cuda" else None
    return seconds, peak, result


def warm_up(devices) -> None:
    """CUDA context, cuBLAS handle and the engine's imports, outside every timing."""
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.evaluate import evaluate_ranking

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 64)).astype(np.float32)
    pid = rng.integers(0, 30, 300)
    for device in devices:
        evaluate_ranking(EmbeddingDistances(x[:100], x[100:], device=device), pid[:100], pid[100:],
                         protocol="no-camera", keep_top=10)
    synchronize()


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    import faiss

    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "torch": torch.__version__,
            "cuda": torch.version.cuda, "faiss": faiss.__version__, "faiss_gpus": faiss.get_num_gpus(),
            "numpy": np.__version__, "python": platform.python_version()}


def build(name: str, args):
    if name.startswith("eval-"):
        return eval_workload(name.split("-", 1)[1])
    if name.startswith("rerank-"):
        return rerank_workload(name.split("-", 1)[1])
    if name == "verify-market":
        return verify_workload("market")
    if name == "knn-faces":
        return knn_workload(args.knn_faces)
    if name == "identify-faces":
        return identify_workload(args.faces)
    raise SystemExit(f"unknown workload {name!r}: expected one of {', '.join(WORKLOADS)}")


def save(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=str))


def print_table(report: dict) -> None:
    m = report["machine"]
    print(f"\nGPU vs CPU, same data, same run — {m['gpu']}, {m['cpu']} ({m['cores']} cores), torch {m['torch']}")
    print(f"{'workload':16} {'shape':30} {'CPU s':>8} {'CUDA s':>8} {'speed-up':>8} {'GPU MB':>8} {'identical':>9}")
    for row in report["rows"]:
        cpu = f"{row['cpu_s']:.2f}" if row.get("cpu_s") is not None else "—"
        speed = f"{row['cpu_s'] / row['cuda_s']:.1f}×" if row.get("cpu_s") is not None else "—"
        same = str(row["identical"]) if row.get("identical") is not None else "—"
        print(f"{row['workload']:16} {row['shape']:30} {cpu:>8} {row['cuda_s']:8.2f} {speed:>8} "
              f"{row['gpu_peak_mb'] or 0:8.0f} {same:>9}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--cpu-skip", default="rerank-msmt17",
                        help="workloads timed on CUDA only (comma list; MSMT17 re-ranking takes minutes on a CPU)")
    parser.add_argument("--faces", type=int, default=200_000, help="gallery faces of identify-faces")
    parser.add_argument("--knn-faces", type=int, default=50_000,
                        help="faces of knn-faces (100,000: 108 s on 16 CPU cores, 2.2 s on an H100)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--gpu-device", default="cuda", help=argparse.SUPPRESS)  # `cpu`: a dry run of this script
    args = parser.parse_args(argv)

    import torch

    if args.gpu_device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu.py: no CUDA GPU visible to torch; nothing to measure", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False  # the engine sets this itself; said here for the reader
    cpu_skip = {w for w in args.cpu_skip.split(",") if w}
    gpu = args.gpu_device
    warm_up(("cpu", gpu))
    report = {"benchmark": "gpu", "machine": machine(), "rows": []}
    for name in [w for w in args.workloads.split(",") if w]:
        clock = time.perf_counter()
        call, compare, shape = build(name, args)
        print(f"{name}: data ready in {time.perf_counter() - clock:.1f} s", flush=True)
        row = {"workload": name, "shape": shape, "cpu_s": None, "identical": None, "detail": None}
        row["cuda_s"], row["gpu_peak_mb"], on_gpu = timed(call, gpu)
        print(f"  {gpu} {row['cuda_s']:.2f} s, GPU peak {row['gpu_peak_mb'] or 0:.0f} MB", flush=True)
        report["rows"].append(row)
        save(report, args.out)  # kept if the CPU run that follows is cut short
        if name not in cpu_skip:
            row["cpu_s"], _, on_cpu = timed(call, "cpu")
            row["identical"], row["detail"] = compare(on_cpu, on_gpu)
            print(f"  cpu  {row['cpu_s']:.2f} s, identical {row['identical']}", flush=True)
            save(report, args.out)
    print_table(report)
    return 0 if all(row["identical"] is not False for row in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
