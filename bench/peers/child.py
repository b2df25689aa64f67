"""One contender, one process: ``python bench/peers/child.py NAME [options]``.

The parent (harness.run_child) times the whole process and reads its peak RSS; this side times the
phases inside (imports, loading, distances, the peer's function, ...) and reports the metrics, as a
JSON object written to $BENCH_RESULT. A failure (MemoryError, a peer's exception) is reported as
``error`` with exit code 3: the tables show it.
"""

from __future__ import annotations

import time

T0 = time.perf_counter()

import argparse  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
import traceback  # noqa: E402

from harness import Phases, write_report  # noqa: E402

# contender -> module holding a function of the same name (dashes -> underscores)
CONTENDERS = {
    "machine": "c_data", "generate": "c_data", "export": "c_data",
    "gemm": "c_eval", "ours-lib": "c_eval", "ours-profile": "c_eval", "fastreid": "c_eval",
    "fastreid-builddist": "c_eval", "torchreid": "c_eval", "pml": "c_eval",
    "values-ours": "c_values", "values-fastreid": "c_values", "values-torchreid": "c_values",
    "values-pml": "c_values",
    "fastreid-rerank": "c_rerank",
    "sklearn-roc": "c_verify", "fastreid-roc": "c_verify", "ours-verify-lib": "c_verify",
    "index-exact": "c_index", "faiss-raw": "c_index", "ours-search-lib": "c_index", "hnswlib": "c_index",
}


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("contender", choices=sorted(CONTENDERS))
    p.add_argument("--data", help="a shape's folder (embeddings.parquet, npy/)")
    p.add_argument("--work", help="a folder for files shared between contenders (distance matrix, ground truth)")
    p.add_argument("--python", action="store_true", help="the peer's Python evaluator instead of its Cython one")
    p.add_argument("--repeats", type=int, default=1, help="in-process repeats (min taken)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", default="", help="comma-separated nprobe values")
    p.add_argument("--ef", default="", help="comma-separated hnswlib ef values")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--factory", default="")
    p.add_argument("--index-file", default="")
    p.add_argument("--index-dir", default="")
    p.add_argument("--train-rows", type=int, default=0)
    p.add_argument("--fars", default="1e-1,1e-2,1e-3,1e-4")
    p.add_argument("--cprofile", action="store_true", help="ours-profile: also profile the evaluate call")
    # generate: preset fields to override
    p.add_argument("--preset")
    p.add_argument("--out")
    for field in ("dim", "gallery", "queries", "identities"):
        p.add_argument(f"--{field}", type=int)
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse(argv)
    phases = Phases()
    phases.start = T0
    report: dict = {"contender": args.contender}
    try:
        module = importlib.import_module(CONTENDERS[args.contender])
        report.update(getattr(module, args.contender.replace("-", "_"))(args, phases) or {})
        code = 0
    except BaseException as exc:  # MemoryError, a peer's own exception: report it, exit 3
        if isinstance(exc, KeyboardInterrupt):
            raise
        report["error"] = f"{type(exc).__name__}: {exc}".strip()
        report["traceback"] = traceback.format_exc()[-4000:]
        code = 3
    report["phases_s"] = phases.times
    report["peak_rss_mb_after_phase"] = phases.peak_rss_mb
    report["in_process_s"] = time.perf_counter() - T0
    write_report(report)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
