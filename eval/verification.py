"""Verification (protocols.md §2): labelled pairs and query × gallery trials, one result type.

Where each part lives:
* ``eval.roc``: the exact ROC (VAL/FAR), AUC, EER, TAR@FAR over any set of trials;
* ``eval.kfold``: LFW-style k-fold accuracy and VAL@FAR per fold;
* ``eval.trials``: every query × gallery pair as a trial, counted without sorting;
* here: exact pair distances, ``evaluate_pairs`` and ``VerificationResult`` (the ``--json`` keys).

Every score is a *distance*: smaller = closer, and a pair is accepted as "same" when its distance
is at most the threshold. Similarities are turned into distances before they reach these modules
(cosine distance = 1 − cos), so no threshold ever guesses a direction.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from retrieval.eval.errors import EvaluationError
from retrieval.eval.kfold import LFW_GRID, THRESHOLD_GRIDS, KFoldResult, kfold_accuracy  # noqa: F401
from retrieval.eval.roc import (  # noqa: F401
    DEFAULT_FARS,
    RocMetrics,
    eer_at_closest_threshold,
    far_label,
    roc_metrics,
)
from retrieval.indexes.distance import Metric, exact_pair_keys, key_to_distance, normalise
from retrieval.common.text import few

DISTANCES = ("sqeuclidean", "cosine")


def pair_distances(first: np.ndarray, second: np.ndarray, distance: str = "sqeuclidean") -> np.ndarray:
    """Row-wise distances (n,) between two (n, d) arrays, exact (the distance core's keys), as float64.

    ``sqeuclidean``: ‖a − b‖²; ``cosine``: 1 − cos = ½‖â − b̂‖² of the L2-normalised rows.
    """
    if distance not in DISTANCES:
        raise EvaluationError(f"unknown distance {distance!r}; expected one of {', '.join(DISTANCES)}")
    a = np.ascontiguousarray(first, dtype=np.float32)
    b = np.ascontiguousarray(second, dtype=np.float32)
    if a.shape != b.shape or a.ndim != 2:
        raise EvaluationError(f"pair vectors must be two (n, d) arrays of one shape, got {a.shape} and {b.shape}")
    if distance == "cosine":
        zero = np.flatnonzero((np.abs(a).max(axis=1, initial=0) == 0) | (np.abs(b).max(axis=1, initial=0) == 0))
        if len(zero):
            raise EvaluationError(f"cosine distance is undefined for zero vectors (pairs {few(zero)})")
        a, b = normalise(a), normalise(b)
    rows = np.arange(len(a))
    keys = exact_pair_keys(a, rows, b, rows, Metric.SQEUCLIDEAN)
    return key_to_distance(keys, distance).astype(np.float64)


@dataclass(frozen=True)
class VerificationResult:
    """Everything ``retrieve verify`` reports, for labelled pairs or query × gallery trials."""

    mode: str  # "pairs" | "query-gallery"
    distance: str
    roc: RocMetrics
    kfold: KFoldResult | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    eer_approx: float | None = None  # pairs mode only (see eer_at_closest_threshold)

    @property
    def warnings(self) -> list[str]:
        return self.roc.warnings()

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` keys (fractions, not percent)."""
        kfold = self.kfold
        return {
            "mode": self.mode,
            "num_pairs": self.roc.num_genuine + self.roc.num_impostor,
            "num_same": self.roc.num_genuine,
            "num_different": self.roc.num_impostor,
            "accuracy_mean": kfold.accuracy_mean if kfold else None,
            "accuracy_std": kfold.accuracy_std if kfold else None,
            "fold_accuracy": kfold.fold_accuracy if kfold else None,
            "fold_threshold": [f.threshold for f in kfold.folds] if kfold else None,
            "roc_auc": self.roc.roc_auc,
            "eer": self.roc.eer,
            "eer_approx": self.eer_approx,
            "tar_at_far": {label: point.to_dict() for label, point in self.roc.tar_at_far.items()},
            "val_at_far": kfold.val_at_far_summary() if kfold else None,
            "distance": self.distance,
            "threshold_grid": kfold.threshold_grid if kfold else None,
            "folds": len(kfold.folds) if kfold else None,
            **self.parameters,
            "conventions": CONVENTIONS,
            "warnings": self.warnings,
        }


CONVENTIONS = {
    "accept": "same if distance <= threshold (ROC, TAR@FAR, VAL@FAR); k-fold accuracy: same if distance < threshold",
    "roc": "exact, swept over the sorted unique distances; ties between same and different pairs are one step",
    "roc_auc": "trapezoid over the exact curve (= P(d_diff > d_same) + 1/2 P(tie))",
    "eer": "FAR where the curve crosses FAR = 1 - TAR, linear along the bracketing curve segment",
    "eer_approx": "(FAR + FRR) / 2 at the first corner of the curve where |FAR - FRR| is smallest (points inside straight runs dropped, as scikit-learn roc_curve does); the common scripts' convention (pairs mode only)",
    "tar_at_far": "largest TAR with FAR <= target; threshold = largest distance below the (floor(target*n_diff)+1)-th smallest different-pair distance",
    "accuracy_std": "population standard deviation over folds (ddof=0)",
    "folds": "contiguous, unshuffled; threshold chosen on the other folds, first best",
}


def evaluate_pairs(
    distances: np.ndarray,
    is_same: np.ndarray,
    *,
    distance: str = "sqeuclidean",
    folds: int = 10,
    threshold_grid: str = "exact",
    fars: Sequence[float] = DEFAULT_FARS,
) -> VerificationResult:
    """Exact ROC metrics over all pairs plus k-fold accuracy and VAL@FAR, for labelled pairs."""
    if threshold_grid not in THRESHOLD_GRIDS:
        raise EvaluationError(f"unknown threshold grid {threshold_grid!r}; expected exact or lfw")
    roc = roc_metrics(distances, is_same, fars)
    kfold = kfold_accuracy(distances, is_same, folds=folds, threshold_grid=threshold_grid, fars=fars)
    return VerificationResult("pairs", distance, roc, kfold, eer_approx=eer_at_closest_threshold(distances, is_same))

