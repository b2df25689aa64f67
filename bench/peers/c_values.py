"""The values check: every evaluator ranks the very same dense distance matrix.

``values-ours`` computes our euclidean distances of the .npy exports (the peers' input) once,
saves them to WORK/distmat.npy, evaluates them with our evaluator (Market protocol, and no camera
filtering for pytorch-metric-learning) and counts exact ties; the peers then evaluate the same
file. Differences left are conventions only: tie order (the peers' np.argsort is not stable),
float32 accumulation, PML's definitions.
"""

from __future__ import annotations

from pathlib import Path

from c_data import load_npy
from c_eval import PML_METRICS, _fastreid_evaluate, pml_metrics


def _distmat(args):
    import numpy as np

    return np.load(Path(args.work) / "distmat.npy")


def values_ours(args, ph) -> dict:
    import numpy as np

    import ours

    x = load_npy(args.data)
    with ph("distances"):
        distmat = ours.dense_distances(x["query_vectors"], x["gallery_vectors"], "euclidean")
    Path(args.work).mkdir(parents=True, exist_ok=True)
    np.save(Path(args.work) / "distmat.npy", distmat)
    labels = (x["query_pid"], x["gallery_pid"], x["query_camid"], x["gallery_camid"])
    with ph("evaluate"):
        market = ours.evaluate_matrix(distmat, *labels, protocol="market")
        no_camera = ours.evaluate_matrix(distmat, *labels, protocol="no-camera")
    return {"metrics": ours.ranking_metrics(market), "metrics_no_camera": ours.ranking_metrics(no_camera),
            "ties": tie_counts(distmat, *labels)}


def tie_counts(distmat, qpid, gpid, qcam, gcam) -> dict:
    """Queries where a true match has exactly the distance of a non-match (the order of a tie decides)."""
    import numpy as np

    market = no_camera = 0
    for q in range(len(qpid)):
        row = distmat[q]
        same = gpid == qpid[q]
        junk = same & (gcam == qcam[q])
        relevant, others = row[same & ~junk], row[~same]
        if len(relevant) and np.isin(relevant, others).any():
            market += 1
        if same.any() and np.isin(row[same], others).any():
            no_camera += 1
    duplicates = sum(int(len(r) - len(np.unique(r))) for r in distmat)
    return {"queries_with_match_nonmatch_ties_market": market, "queries_with_match_nonmatch_ties_no_camera": no_camera,
            "duplicate_distance_values": duplicates}


def values_fastreid(args, ph) -> dict:
    import peerlib

    x = load_npy(args.data)
    evaluate = _fastreid_evaluate(peerlib.fastreid_rank(), use_cython=not args.python)
    return evaluate(_distmat(args), x["query_pid"], x["gallery_pid"], x["query_camid"], x["gallery_camid"])


def values_torchreid(args, ph) -> dict:
    import numpy as np

    import peerlib

    rank = peerlib.torchreid_rank()
    x = load_npy(args.data)
    cmc, mean_ap = rank.evaluate_rank(_distmat(args), x["query_pid"], x["gallery_pid"], x["query_camid"],
                                      x["gallery_camid"], max_rank=50, use_cython=True)
    return {"metrics": {"mAP": float(mean_ap), "cmc": [float(v) for v in np.asarray(cmc)[:50]]},
            "evaluator": "cython" if rank.IS_CYTHON_AVAI else "python"}


class MatrixKNN:
    """A knn_func for AccuracyCalculator that ranks rows of a given distance matrix (np.argsort, as toolkits do)."""

    def __init__(self, distmat):
        self.distmat = distmat

    def __call__(self, query, k, reference=None, ref_includes_query=False):
        import numpy as np
        import torch

        order = np.argsort(self.distmat, axis=1)[:, :k]
        distances = np.take_along_axis(self.distmat, order, axis=1)
        return torch.from_numpy(distances), torch.from_numpy(order)


def values_pml(args, ph) -> dict:
    import torch

    import peerlib

    AccuracyCalculator = peerlib.pml_accuracy_calculator()
    x = load_npy(args.data)
    calculator = AccuracyCalculator(include=PML_METRICS, k=None, device=torch.device("cpu"),
                                    knn_func=MatrixKNN(_distmat(args)))
    accuracy = calculator.get_accuracy(x["query_vectors"], x["query_pid"], x["gallery_vectors"], x["gallery_pid"],
                                       ref_includes_query=False)
    return {"metrics": pml_metrics(accuracy)}
