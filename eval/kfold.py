"""LFW-style k-fold verification accuracy (protocols.md §2).

Folds are contiguous and unshuffled, matching the official 10 sets of the 6000-pair file. Per
fold the threshold that maximises accuracy on the other k−1 folds is chosen (over the exact
unique distances, or the classic LFW grid 0, 0.01, …, 3.99 of squared distances) and the
held-out accuracy reported; VAL@FAR per fold likewise, with the threshold chosen on the training
folds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from retrieval.eval.errors import EvaluationError
from retrieval.eval.roc import DEFAULT_FARS, SortedImpostors, check_fars, tar_at_far_point, far_label

THRESHOLD_GRIDS = ("exact", "lfw")
# The classic LFW script: thresholds 0, 0.01, ..., 3.99 on squared Euclidean distance, same if d < t.
LFW_GRID = np.arange(0, 4, 0.01)


def fold_bounds(num_pairs: int, folds: int) -> list[tuple[int, int]]:
    """Contiguous, unshuffled folds; the first ``num_pairs % folds`` folds hold one pair more."""
    if folds < 2:
        raise EvaluationError(f"k-fold accuracy needs at least 2 folds, got {folds}")
    if num_pairs < folds:
        raise EvaluationError(f"{num_pairs} pairs cannot be split into {folds} folds")
    sizes = [num_pairs // folds + (1 if i < num_pairs % folds else 0) for i in range(folds)]
    stops = np.cumsum(sizes)
    return [(int(stop - size), int(stop)) for stop, size in zip(stops, sizes)]


def candidate_thresholds(distances: np.ndarray, threshold_grid: str) -> np.ndarray:
    """Thresholds tried on the training folds (rule: same if d < t), ascending.

    ``lfw``: 0, 0.01, …, 3.99. ``exact``: one threshold per distinct split of the training
    distances: below the smallest, every midpoint between consecutive distinct distances, and
    just above the largest.
    """
    if threshold_grid == "lfw":
        return LFW_GRID
    if threshold_grid != "exact":
        raise EvaluationError(f"unknown threshold grid {threshold_grid!r}; expected exact or lfw")
    u = np.unique(np.asarray(distances, dtype=np.float64))
    mids = u[:-1] + (u[1:] - u[:-1]) / 2
    mids = np.where(mids > u[:-1], mids, u[1:])  # adjacent floats: the midpoint rounds down onto u_i
    return np.concatenate([u[:1], mids, [np.nextafter(u[-1], np.inf)]])


def best_threshold(distances: np.ndarray, is_same: np.ndarray, candidates: np.ndarray) -> float:
    """The first candidate t (ascending) that maximises accuracy of "same if d < t"."""
    same_sorted = np.sort(distances[is_same])
    diff_sorted = np.sort(distances[~is_same])
    true_accepts = np.searchsorted(same_sorted, candidates, side="left")
    true_rejects = len(diff_sorted) - np.searchsorted(diff_sorted, candidates, side="left")
    return float(candidates[int(np.argmax(true_accepts + true_rejects))])


@dataclass(frozen=True)
class FoldResult:
    """One held-out fold: accuracy at the threshold chosen on the other folds, and VAL@FAR."""

    fold: int
    start: int
    stop: int
    threshold: float
    accuracy: float
    val_at_far: dict[str, dict[str, Any]]  # label -> {val, far, threshold} (threshold from training folds)


@dataclass(frozen=True)
class KFoldResult:
    threshold_grid: str
    folds: list[FoldResult]

    @property
    def fold_accuracy(self) -> list[float]:
        return [f.accuracy for f in self.folds]

    @property
    def accuracy_mean(self) -> float:
        return float(np.mean(self.fold_accuracy))

    @property
    def accuracy_std(self) -> float:
        """Population standard deviation over folds (ddof = 0), as the LFW script reports it."""
        return float(np.std(self.fold_accuracy))

    def val_at_far_summary(self) -> dict[str, dict[str, float]]:
        labels = self.folds[0].val_at_far.keys() if self.folds else []
        out = {}
        for label in labels:
            vals = np.array([f.val_at_far[label]["val"] for f in self.folds], dtype=np.float64)
            fars = np.array([f.val_at_far[label]["far"] for f in self.folds], dtype=np.float64)
            out[label] = {"val_mean": float(np.mean(vals)), "val_std": float(np.std(vals)), "far_mean": float(np.mean(fars))}
        return out


def kfold_accuracy(
    distances: np.ndarray,
    is_same: np.ndarray,
    folds: int = 10,
    threshold_grid: str = "exact",
    fars: Sequence[float] = DEFAULT_FARS,
) -> KFoldResult:
    """LFW-style k-fold accuracy: contiguous folds, threshold chosen on the other k − 1 folds.

    Accuracy uses "same if d < t" (the LFW script's rule); VAL@FAR per fold uses the TAR@FAR
    threshold of the training folds (accept d ≤ t) applied to the held-out fold.
    """
    distances = np.asarray(distances, dtype=np.float64)
    is_same = np.asarray(is_same, dtype=bool)
    fars = check_fars(fars)
    results = []
    for number, (start, stop) in enumerate(fold_bounds(len(distances), folds)):
        test = np.zeros(len(distances), bool)
        test[start:stop] = True
        train_d, train_same = distances[~test], is_same[~test]
        test_d, test_same = distances[test], is_same[test]
        threshold = best_threshold(train_d, train_same, candidate_thresholds(train_d, threshold_grid))
        accuracy = float(np.mean((test_d < threshold) == test_same))
        results.append(
            FoldResult(number, start, stop, threshold, accuracy, _fold_val_at_far(train_d, train_same, test_d, test_same, fars))
        )
    return KFoldResult(threshold_grid, results)


def _fold_val_at_far(train_d, train_same, test_d, test_same, fars) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if not train_same.any() or train_same.all():
        return {far_label(x): {"val": float("nan"), "far": float("nan"), "threshold": None} for x in fars}
    train_genuine = np.sort(train_d[train_same])
    train_impostors = SortedImpostors(train_d[~train_same])
    for x in fars:
        t = tar_at_far_point(train_genuine, train_impostors, x).threshold
        accepted = test_d <= t if t is not None else np.zeros(len(test_d), bool)
        out[far_label(x)] = {
            "val": _fraction(accepted & test_same, test_same),
            "far": _fraction(accepted & ~test_same, ~test_same),
            "threshold": t,
        }
    return out


def _fraction(hits: np.ndarray, of: np.ndarray) -> float:
    total = int(of.sum())
    return int(hits.sum()) / total if total else float("nan")
