"""Verification contenders: ROC / AUC / TAR@FAR over every query × gallery trial (Market protocol:
same pid and camera excluded; the .npy data hold no junk rows)."""

from __future__ import annotations

from pathlib import Path

from c_data import load_npy
from c_eval import squared_euclidean


def _fars(args) -> list[float]:
    return [float(f) for f in args.fars.split(",")]


def _trials(x, distmat):
    """Scores (higher = more alike) and labels of the kept trials, flattened."""
    same = x["query_pid"][:, None] == x["gallery_pid"][None, :]
    keep = ~(same & (x["query_camid"][:, None] == x["gallery_camid"][None, :]))
    return -distmat[keep], same[keep]


def sklearn_roc(args, ph) -> dict:
    """numpy squared distances, sklearn.metrics.roc_curve (every threshold kept) and roc_auc_score."""
    with ph("import"):
        import numpy as np
        from sklearn.metrics import roc_auc_score, roc_curve
    with ph("load"):
        x = load_npy(args.data)
    with ph("distances"):
        distmat = squared_euclidean(x["query_vectors"], x["gallery_vectors"])
        np.maximum(distmat, 0.0, out=distmat)
    with ph("trials"):
        scores, labels = _trials(x, distmat)
        del distmat
    with ph("roc_curve"):
        # drop_intermediate=False: a dropped collinear corner could hold the exact TAR at a FAR
        fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    with ph("roc_auc_score"):
        auc = roc_auc_score(labels, scores)
    tar = {f"{far:g}": float(tpr[np.searchsorted(fpr, far, side="right") - 1]) for far in _fars(args)}
    return {"metrics": {"roc_auc": float(auc), "tar_at_far": tar, "num_genuine": int(labels.sum()),
                        "num_impostor": int(len(labels) - labels.sum())}}


def fastreid_roc(args, ph) -> dict:
    """fast-reid's ROC path as its ReidEvaluator runs it: evaluate_roc (Cython) + sklearn roc_curve."""
    with ph("import"):
        import numpy as np
        from sklearn import metrics

        import peerlib

        roc = peerlib.fastreid_roc()
    with ph("load"):
        x = load_npy(args.data)
    with ph("distances"):
        distmat = squared_euclidean(x["query_vectors"], x["gallery_vectors"])
    with ph("evaluate_roc"):
        scores, labels = roc.evaluate_roc(distmat, x["query_pid"], x["gallery_pid"], x["query_camid"], x["gallery_camid"])
    with ph("roc_curve"):
        fprs, tprs, _ = metrics.roc_curve(labels, scores)
    # its labels: 0 = genuine, 1 = impostor, score = distance; the area is the same AUC
    tpr_at_fpr = {f"{f:g}": float(tprs[np.argmin(np.abs(fprs - f))]) for f in (1e-4, 1e-3, 1e-2)}
    return {"metrics": {"roc_auc": float(metrics.auc(fprs, tprs))}, "fastreid_tpr_at_fpr": tpr_at_fpr,
            "evaluator": "cython" if roc.IS_CYTHON_AVAI else "python"}


def ours_verify_lib(args, ph) -> dict:
    with ph("import"):
        import ours

        ours.import_library()
    with ph("read"):
        data = ours.read_split(Path(args.data) / "embeddings.parquet")
    with ph("verify"):
        result = ours.verify_library(data, _fars(args))
    return {"metrics": ours.verification_metrics(result)}
