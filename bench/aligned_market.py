"""Benchmark: ranking by the aligned distance (AlignedReID: global + w · aligned local) at Market shape.

Synthetic data at Market-1501's shape (3,368 queries × 15,913 gallery, 751 identities in the
gallery), global embeddings of 2,048 values and P = 8 stripes of 128 values (AlignedReID's local
branch on a 256 × 128 image), each stripe an identity's stripe plus noise, L2-normalised. Timed,
same data, same process: the euclidean evaluation of the global embeddings alone, and the
aligned evaluation (global + 1 · local); re-ranking on the aligned distance at a smaller shape
(its neighbour pass computes every item against every item: (Q + G)² pairs).

No peer: no package on the index computes the aligned local distance (AlignedReID's code is not
published as a package), so the table gives our own throughput only.

    .venv/bin/python bench/aligned_market.py [--scale 1.0] [--rerank-scale 0.25]

Writes bench/results/aligned.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import time
from pathlib import Path

import numpy as np

from retrieval.eval.aligned import AlignedDistances, AlignedReranked
from retrieval.eval.distances import EmbeddingDistances
from retrieval.eval.evaluate import evaluate_ranking

RESULTS = Path(__file__).parent / "results" / "aligned.json"
PARTS, PART_DIM, DIM = 8, 128, 2048


def market_like(scale: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    n_q, n_g, people = int(3368 * scale), int(15913 * scale), max(2, int(751 * scale))
    q_pid, g_pid = rng.integers(0, people, n_q), rng.integers(0, people, n_g)
    q_cam, g_cam = rng.integers(0, 6, n_q), rng.integers(0, 6, n_g)

    def side(pid):
        centre_rng = np.random.default_rng(seed + 1)
        centres = centre_rng.standard_normal((people, DIM), dtype=np.float32)
        stripes = centre_rng.standard_normal((people, PARTS, PART_DIM), dtype=np.float32)
        vectors = centres[pid] + 4.5 * rng.standard_normal((len(pid), DIM), dtype=np.float32)
        parts = stripes[pid] + 3.0 * rng.standard_normal((len(pid), PARTS, PART_DIM), dtype=np.float32)
        shift = rng.integers(-1, 2, len(pid))  # misaligned boxes: stripes moved up or down by one
        parts = np.stack([np.roll(p, s, axis=0) for p, s in zip(parts, shift)])
        parts /= np.linalg.norm(parts, axis=2, keepdims=True)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True), parts.reshape(len(pid), -1)

    (qv, qp), (gv, gp) = side(q_pid), side(g_pid)
    return qv, gv, qp, gp, q_pid, g_pid, q_cam, g_cam


def timed(label: str, make, labels) -> dict:
    clock = time.perf_counter()
    result = evaluate_ranking(make(), *labels, keep_top=10)
    seconds = time.perf_counter() - clock
    print(f"{label}: {seconds:.1f} s, mAP {100 * result.mAP:.2f}, rank-1 {100 * result.cmc[0]:.2f}", flush=True)
    return {"seconds": seconds, "mAP": float(result.mAP), "rank-1": float(result.cmc[0])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--rerank-scale", type=float, default=0.25)
    args = parser.parse_args()
    out = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
           "parts": PARTS, "part_dim": PART_DIM, "dim": DIM, "rows": []}
    for scale, rerank in ((args.scale, False), (args.rerank_scale, True)):
        qv, gv, qp, gp, *labels = market_like(scale)
        shape = f"{len(qv):,} × {len(gv):,}"
        rows = {"shape": shape, "pairs": len(qv) * len(gv),
                "euclidean": timed(f"{shape} euclidean", lambda: EmbeddingDistances(qv, gv), labels),
                "aligned": timed(f"{shape} aligned", lambda: AlignedDistances(qv, gv, qp, gp, PARTS), labels)}
        if rerank:
            rows["aligned_rerank"] = timed(f"{shape} aligned + re-ranking",
                                           lambda: AlignedReranked(qv, gv, qp, gp, PARTS), labels)
        out["rows"].append(rows)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    RESULTS.write_text(json.dumps(out, indent=1) + "\n")
    print("| shape (Q × G) | euclidean (global) | aligned (global + local) | pairs/s aligned | aligned + re-ranking |")
    print("|---|---|---|---|---|")
    for row in out["rows"]:
        rerank = row.get("aligned_rerank")
        reranked = "—" if rerank is None else f"{rerank['seconds']:.1f} s, mAP {100 * rerank['mAP']:.1f}"
        print(f"| {row['shape']} | {row['euclidean']['seconds']:.1f} s, mAP {100 * row['euclidean']['mAP']:.1f} "
              f"| {row['aligned']['seconds']:.1f} s, mAP {100 * row['aligned']['mAP']:.1f} "
              f"| {row['pairs'] / row['aligned']['seconds'] / 1e6:.2f} M "
              f"| {reranked} |")
    print(f"peak RSS {out['peak_rss_gb']:.2f} GB; {out['machine']}")


if __name__ == "__main__":
    main()
