"""Verification over Market-shape query × gallery trials: ours vs the all-pairs ROC by full sort.

Synthetic market preset (data.synth, seed 0: 3,368 queries × 15,913 gallery, 2,048-D,
L2-normalised, 6 cameras, distractors and junk), squared Euclidean distance, Market junk rules
(same pid and camid, pid -1): about 53.6 M trials. Contenders, each in its own child process
(time and peak memory measured there, inputs excluded):

* ``ours``: eval.verification.query_gallery_verification (blocked distances, monotone
  histogram, exact counts; the blocks are kept between the two passes when they fit 256 MB);
* ``ours-2pass``: the same with nothing kept (distances computed twice; what MSMT17 scale uses);
* ``full-sort``: the reference: the whole Q × G matrix, every kept trial's distance and label
  pulled out, one argsort, cumulative counts at each unique distance, the curve, AUC, EER, TAR@FAR;
* ``gemm``: the bare matrix product of the same shapes (the floor).

The metrics of ours and of the reference must be identical (==). Writes
bench/results/verify.json and prints a table. Usage: python bench/verify_market.py [--data FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
FARS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


# ----------------------------------------------------------------------------- memory


def reset_peak_rss() -> None:
    """Make the kernel's peak-RSS mark (VmHWM) restart from the current RSS."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ----------------------------------------------------------------------------- the reference


def full_sort_roc(distances: np.ndarray, same: np.ndarray, keep: np.ndarray, fars) -> dict:
    """All kept trials pulled out and sorted once; the exact curve from cumulative counts."""
    scores = distances[keep]
    labels = same[keep]
    order = np.argsort(scores, kind="stable")
    scores, labels = scores[order], labels[order]
    n_gen = int(labels.sum())
    n_imp = len(labels) - n_gen
    last_of_value = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))
    genuine = np.cumsum(labels)[last_of_value]
    impostor = (last_of_value + 1) - genuine
    x = np.concatenate([[0], impostor]).astype(np.int64)
    y = np.concatenate([[0], genuine]).astype(np.int64)
    auc = int(np.sum(np.diff(x) * (y[1:] + y[:-1]), dtype=np.int64)) / (2 * n_gen * n_imp)
    s = x * n_gen + y * n_imp - n_imp * n_gen
    i = int(np.argmax(s >= 0))
    along = Fraction(-int(s[i - 1]), int(s[i]) - int(s[i - 1]))
    eer = float((int(x[i - 1]) + along * (int(x[i]) - int(x[i - 1]))) / n_imp)
    thresholds = scores[last_of_value]
    tar_at_far = {}
    for far in fars:
        budget = int(Fraction(repr(far)) * n_imp)  # ⌊far · n_imp⌋ exactly
        ok = np.flatnonzero(x[1:] <= budget)  # curve points with FAR ≤ far
        if len(ok):
            j = int(ok[-1])
            tar_at_far[label(far)] = {"tar": int(y[j + 1]) / n_gen, "far": int(x[j + 1]) / n_imp, "threshold": float(thresholds[j])}
        else:
            tar_at_far[label(far)] = {"tar": 0.0, "far": 0.0, "threshold": None}
    return {"num_pairs": n_gen + n_imp, "num_same": n_gen, "roc_auc": auc, "eer": eer, "tar_at_far": tar_at_far}


def label(far: float) -> str:
    from retrieval.eval.roc import far_label

    return far_label(far)


# ----------------------------------------------------------------------------- contenders (child side)


def load(data: Path):
    from retrieval.data.store import read_embeddings

    emb = read_embeddings(data)
    return emb.by_split("query"), emb.by_split("gallery")


def contender(name: str, data: Path) -> dict:
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.protocol import RankingLabels
    from retrieval.eval.trials import query_gallery_verification

    query, gallery = load(data)
    source = EmbeddingDistances(query.vectors, gallery.vectors, metric="sqeuclidean", device="cpu")
    labels = RankingLabels(query.pid, gallery.pid, query.camid, gallery.camid, protocol="market")
    reset_peak_rss()
    baseline = rss_mb("VmRSS")
    started = time.perf_counter()
    if name in ("ours", "ours-2pass"):
        cache = None if name == "ours" else 0
        kwargs = {} if cache is None else {"cache_bytes": cache}
        result = query_gallery_verification(source, labels, fars=FARS, distance="sqeuclidean", **kwargs).to_dict()
        metrics = {k: result[k] for k in ("num_pairs", "num_same", "roc_auc", "eer", "tar_at_far")}
        metrics["kept_impostors"] = result["kept_impostors"]
    elif name == "full-sort":
        _, distances = next(source.blocks(source.num_queries))  # the whole matrix at once
        same = query.pid[:, None] == gallery.pid[None, :]
        keep = ~(same & (query.camid[:, None] == gallery.camid[None, :]))
        keep &= gallery.pid[None, :] != -1
        keep &= query.pid[:, None] != -1
        metrics = full_sort_roc(distances, same, keep, FARS)
    elif name == "gemm":
        product = query.vectors @ gallery.vectors.T
        metrics = {"shape": list(product.shape)}
    else:
        raise SystemExit(f"unknown contender {name}")
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_extra_mb": rss_mb("VmHWM") - baseline, "metrics": metrics}


def run_child(name: str, data: Path, timeout: float) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--child", name, "--data", str(data)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- driver


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} CPU cores, numpy {np.__version__}, {platform.python_implementation()} {platform.python_version()}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/retrieve-bench-market-seed0.parquet"))
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "verify.json")
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--child", default=None)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    if args.child:
        print(json.dumps(contender(args.child, args.data)))
        return 0

    if not args.data.exists():
        from retrieval.data.synth import generate

        print(f"generating the market preset into {args.data} ...", file=sys.stderr)
        generate("market", 0, args.data)
    results = {}
    for name in ("gemm", "ours", "ours-2pass", "full-sort"):
        print(f"running {name} ...", file=sys.stderr)
        results[name] = run_child(name, args.data, args.timeout)
    reference = results["full-sort"]["metrics"]
    shared = ("num_pairs", "num_same", "roc_auc", "eer", "tar_at_far")
    for name in ("ours", "ours-2pass"):
        ours = results[name]["metrics"]
        results[name]["identical_to_full_sort"] = all(ours[k] == reference[k] for k in shared)
        results[name]["speedup_vs_full_sort"] = results["full-sort"]["seconds"] / results[name]["seconds"]
        results[name]["x_bare_gemm"] = results[name]["seconds"] / results["gemm"]["seconds"]
    report = {
        "benchmark": "verify_market",
        "machine": machine(),
        "data": "data.synth market preset, seed 0 (3,368 x 15,913, 2,048-D, L2-normalised)",
        "distance": "sqeuclidean",
        "protocol": "market (junk: same pid and camid, pid -1)",
        "fars": [label(x) for x in FARS],
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    print(f"\nverification, Market-shape trials ({reference['num_pairs']:,} trials, {reference['num_same']:,} genuine) — {report['machine']}")
    print(f"{'contender':<12} {'seconds':>8} {'peak extra MB':>14} {'vs full sort':>13} {'x bare GEMM':>12} {'identical':>10}")
    for name, r in results.items():
        speed = f"{r['speedup_vs_full_sort']:.2f}x" if "speedup_vs_full_sort" in r else ""
        gemm = f"{r['x_bare_gemm']:.2f}" if "x_bare_gemm" in r else ""
        same = str(r.get("identical_to_full_sort", ""))
        print(f"{name:<12} {r['seconds']:>8.2f} {r['peak_extra_mb']:>14.0f} {speed:>13} {gemm:>12} {same:>10}")
    m = reference
    print(f"AUC {m['roc_auc']:.6f}  EER {m['eer']:.6f}  " + "  ".join(f"TAR@{k} {v['tar']:.4f}" for k, v in m["tar_at_far"].items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
