"""Evaluation contenders (query × gallery ranking metrics), one per process.

Each computes its distances the way a user of that toolkit would, then calls the toolkit's
evaluator; ours reads the Parquet file, the peers the .npy exports of the same embeddings.
"""

from __future__ import annotations

import time
from pathlib import Path

from c_data import load_npy


# ----------------------------------------------------------------------------- the floor


def gemm(args, ph) -> dict:
    """The bare float32 matrix product of the same shapes, in-process, in our block size (min of repeats)."""
    import numpy as np

    import ours

    with ph("read"):
        data = ours.read_split(Path(args.data) / "embeddings.parquet")
    q, g = data["query"], data["gallery"]
    g_kept = np.ascontiguousarray(g[data["gallery_pid"] != -1])
    rows = ours.block_rows(len(g))
    out = np.empty((min(rows, len(q)), len(g)), dtype=np.float32)

    def blocked(gallery: np.ndarray) -> float:
        start = time.perf_counter()
        for first in range(0, len(q), rows):
            last = min(first + rows, len(q))
            np.matmul(q[first:last], gallery.T, out=out[: last - first, : len(gallery)])
        return time.perf_counter() - start

    full = [blocked(g) for _ in range(max(1, args.repeats))]
    kept = [blocked(g_kept) for _ in range(max(1, args.repeats))] if len(g_kept) < len(g) else full
    return {"shape": [len(q), len(g), q.shape[1]], "block_rows": rows, "gemm_s": min(full), "gemm_s_all": full,
            "gemm_no_junk_s": min(kept), "gallery_no_junk": len(g_kept)}


# ----------------------------------------------------------------------------- ours, as a library


def ours_lib(args, ph) -> dict:
    """read_embeddings + evaluate_ranking(EmbeddingDistances) in one process (the library call)."""
    with ph("import"):
        import ours

        ours.import_library()
    with ph("read"):
        data = ours.read_split(Path(args.data) / "embeddings.parquet")
    with ph("evaluate"):
        result = ours.evaluate_library(data)
    return {"metrics": ours.ranking_metrics(result)}


def ours_profile(args, ph) -> dict:
    """Where `retrieve evaluate`'s time goes: imports, Parquet read, distances alone, distances + ranking."""
    with ph("import"):
        import ours

        ours.import_library()
    with ph("read"):
        data = ours.read_split(Path(args.data) / "embeddings.parquet")
    with ph("distances_only"):
        for _ in ours.distance_blocks(data["query"], data["gallery"]):
            pass
    with ph("evaluate"):
        result = ours.evaluate_library(data)
    out = {"metrics": ours.ranking_metrics(result)}
    if args.cprofile:
        out["cprofile"] = _profile(lambda: ours.evaluate_library(data))
    return out


def _profile(fn) -> dict:
    import cProfile
    import io
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    out = {}
    for key in ("tottime", "cumulative"):
        buffer = io.StringIO()
        pstats.Stats(profiler, stream=buffer).sort_stats(key).print_stats(20)
        out[key] = buffer.getvalue()
    return out


# ----------------------------------------------------------------------------- the peers


def squared_euclidean(q, g):
    """||q||² + ||g||² − 2 q·g in float32 with numpy: what fast-reid's distance function computes."""
    import numpy as np

    d = q @ g.T
    d *= np.float32(-2.0)
    d += np.einsum("ij,ij->i", q, q)[:, None]
    d += np.einsum("ij,ij->i", g, g)[None, :]
    return d


def _fastreid_metrics(cmc, all_ap, all_inp) -> dict:
    import numpy as np

    return {"mAP": float(np.mean(all_ap)), "mINP": float(np.mean(all_inp)), "cmc": [float(v) for v in cmc[:50]],
            "num_valid_queries": len(all_ap)}


def _load_distances_evaluate(args, ph, distances, evaluate) -> dict:
    """The path every full-matrix toolkit takes: load the .npy files, a dense distance matrix, its evaluator."""
    with ph("load"):
        x = load_npy(args.data)
    with ph("distances"):
        distmat = distances(x["query_vectors"], x["gallery_vectors"])
    with ph("evaluate_rank"):
        return evaluate(distmat, x["query_pid"], x["gallery_pid"], x["query_camid"], x["gallery_camid"])


def _fastreid_evaluate(rank, use_cython: bool = True):
    def evaluate(distmat, *labels) -> dict:
        cmc, all_ap, all_inp = rank.evaluate_rank(distmat, *labels, max_rank=50, use_cython=use_cython)
        return {"metrics": _fastreid_metrics(cmc, all_ap, all_inp),
                "evaluator": "cython" if use_cython and rank.IS_CYTHON_AVAI else "python"}

    return evaluate


def fastreid(args, ph) -> dict:
    """numpy distances + fast-reid's evaluate_rank (Cython, or its Python loop with --python)."""
    with ph("import"):
        import peerlib

        rank = peerlib.fastreid_rank()  # imports numpy too
    return _load_distances_evaluate(args, ph, squared_euclidean, _fastreid_evaluate(rank, use_cython=not args.python))


def fastreid_builddist(args, ph) -> dict:
    """fast-reid's own distance function (build_dist, torch) + its Cython evaluate_rank."""
    with ph("import"):
        import torch

        import peerlib

        build_dist = peerlib.fastreid_build_dist()
        rank = peerlib.fastreid_rank()

    def distances(q, g):
        return build_dist(torch.from_numpy(q), torch.from_numpy(g), "euclidean")

    return _load_distances_evaluate(args, ph, distances, _fastreid_evaluate(rank))


def torchreid(args, ph) -> dict:
    """torchreid's compute_distance_matrix (torch, squared euclidean) + its evaluate_rank, as its engine runs them."""
    with ph("import"):
        import numpy as np
        import torch

        import peerlib

        compute_distance_matrix = peerlib.torchreid_distance()
        rank = peerlib.torchreid_rank()

    def distances(q, g):
        return compute_distance_matrix(torch.from_numpy(q), torch.from_numpy(g), "euclidean").numpy()

    def evaluate(distmat, *labels) -> dict:
        cmc, mean_ap = rank.evaluate_rank(distmat, *labels, max_rank=50, use_cython=True)
        return {"metrics": {"mAP": float(mean_ap), "cmc": [float(v) for v in np.asarray(cmc)[:50]]},
                "evaluator": "cython" if rank.IS_CYTHON_AVAI else "python"}

    return _load_distances_evaluate(args, ph, distances, evaluate)


PML_METRICS = ("precision_at_1", "mean_average_precision", "mean_average_precision_at_r", "r_precision")


def pml_metrics(accuracy: dict) -> dict:
    return {"rank1": accuracy["precision_at_1"], "mAP": accuracy["mean_average_precision"],
            "mAP_at_R": accuracy["mean_average_precision_at_r"], "R_precision": accuracy["r_precision"]}


def pml(args, ph) -> dict:
    """pytorch-metric-learning's AccuracyCalculator over the whole gallery (k=None), its own faiss k-NN."""
    with ph("import"):
        import torch

        import peerlib

        AccuracyCalculator = peerlib.pml_accuracy_calculator()
    with ph("load"):
        x = load_npy(args.data)
    with ph("get_accuracy"):
        calculator = AccuracyCalculator(include=PML_METRICS, k=None, device=torch.device("cpu"))
        accuracy = calculator.get_accuracy(x["query_vectors"], x["query_pid"], x["gallery_vectors"],
                                           x["gallery_pid"], ref_includes_query=False)
    return {"metrics": pml_metrics(accuracy), "protocol": "labels only (no camera filtering)"}
