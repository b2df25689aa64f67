"""Verification metrics (protocols.md §2): exact ROC (VAL/FAR), AUC, EER, TAR@FAR, k-fold accuracy.

Every score here is a *distance*: smaller = closer, and a pair is accepted as "same" when its
distance is at most the threshold (FaceNet: TA(t) = {same pairs, d ≤ t}). Similarities are
turned into distances before they reach this module (cosine distance = 1 − cos), so no
threshold ever guesses a direction.

The exact curve
    The ROC is swept over the sorted unique distances: at each threshold t, TAR(t) = #genuine
    with d ≤ t / #genuine and FAR(t) = #impostor with d ≤ t / #impostor. Genuine and impostor
    pairs at the same distance move together (one diagonal step). The curve is kept as its
    corner points, in integer counts; points on a straight run between two corners add nothing.

    * AUC: trapezoid rule over the exact curve, i.e. P(d_impostor > d_genuine) + ½ P(tie),
      computed in integers and divided once.
    * EER: the point of the curve where FAR = 1 − TAR, found on the segment between the last
      curve point with FAR < 1 − TAR and the first with FAR ≥ 1 − TAR, by linear interpolation
      along that segment (exact rational arithmetic, one rounding at the end).
    * TAR@FAR=x: the largest TAR whose FAR ≤ x. With n impostors and k = ⌊x·n⌋, the threshold
      is the largest trial distance below the (k+1)-th smallest impostor distance; the result
      carries the achieved FAR and that threshold (None when no pair is accepted). Fewer than
      1/x impostors (k = 0) is flagged.

Query × gallery trials
    ``query_gallery_verification`` scores every query × gallery pair of a ``DistanceSource``
    under the re-ID junk rules (eval.protocol), exactly, without sorting the trials: genuine
    distances (few) are kept; impostor distances are counted in a fine monotone histogram and
    only the impostors that fall into the histogram bins that matter (bins holding a genuine
    distance or a TAR@FAR order statistic) are kept and sorted. See ``BinnedImpostors``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, Callable, Iterable, Protocol, Sequence

import numpy as np

from retrieval.eval.errors import EvaluationError
from retrieval.eval.protocol import same_identity
from retrieval.indexes.distance import Metric, exact_pair_keys, key_to_distance, normalise

DISTANCES = ("sqeuclidean", "cosine")
THRESHOLD_GRIDS = ("exact", "lfw")
DEFAULT_FARS = (1e-1, 1e-2, 1e-3)
# The classic LFW script: thresholds 0, 0.01, ..., 3.99 on squared Euclidean distance, same if d < t.
LFW_GRID = np.arange(0, 4, 0.01)

ProgressCallback = Callable[[str, int, int], None]


def _no_progress(stage: str, done: int, total: int) -> None:
    return None


# --------------------------------------------------------------------------- distances


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
            raise EvaluationError(f"cosine distance is undefined for zero vectors (pairs {_few(zero)})")
        a, b = normalise(a), normalise(b)
    rows = np.arange(len(a))
    keys = exact_pair_keys(a, rows, b, rows, Metric.SQEUCLIDEAN)
    return key_to_distance(keys, distance).astype(np.float64)


def _few(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", … ({len(rows)} in all)" if len(rows) > limit else "")


def far_label(far: float) -> str:
    """The key of a FAR target: 0.1 -> "1e-1", 0.001 -> "1e-3", 0.05 -> "5e-2", 0.025 -> "2.5e-2"."""
    mantissa, exponent = f"{far:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def _check_fars(fars: Iterable[float]) -> tuple[float, ...]:
    fars = tuple(float(x) for x in fars)
    bad = [x for x in fars if not 0 < x < 1]
    if bad:
        raise EvaluationError(f"FAR targets must lie strictly between 0 and 1, got {bad[0]!r}")
    return fars


def _accepted_impostor_budget(far: float, num_impostor: int) -> int:
    """k = ⌊x·n⌋ exactly, with x read as the decimal the user wrote (1e-3 is exactly 1/1000)."""
    return int(Fraction(repr(far)) * num_impostor)


# --------------------------------------------------------------------------- impostor indexes


class ImpostorIndex(Protocol):
    """Exact counting and selection over the impostor distances."""

    num: int

    def count_less(self, values: np.ndarray) -> np.ndarray: ...  # #impostors with d < v, per v

    def count_leq(self, values: np.ndarray) -> np.ndarray: ...  # #impostors with d ≤ v, per v

    def order_stat(self, j: int) -> Any: ...  # the (j+1)-th smallest impostor distance (0-based j)


class SortedImpostors:
    """All impostor distances, sorted: the in-memory index (pairs files, tests)."""

    def __init__(self, distances: np.ndarray) -> None:
        self.values = np.sort(np.asarray(distances).ravel())
        self.num = len(self.values)

    def count_less(self, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.values, values, side="left").astype(np.int64)

    def count_leq(self, values: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.values, values, side="right").astype(np.int64)

    def order_stat(self, j: int) -> Any:
        return self.values[j]


class MonotoneBinner:
    """Bin index of a distance: ⌊(d − lo)·scale⌋ clipped to [0, num_bins − 1], in the data's dtype.

    Floating subtraction and multiplication by a positive constant are monotone under rounding,
    so d1 ≤ d2 implies bin(d1) ≤ bin(d2): counts by bin plus exact comparisons inside one bin
    give exact counts, whatever the bin edges are. Values outside [lo, hi] fall in the end bins.
    """

    def __init__(self, lo: float, hi: float, num_bins: int, dtype: np.dtype) -> None:
        if not hi > lo:
            hi = lo + 1.0
        self.dtype = np.dtype(dtype)
        self.num_bins = int(num_bins)
        self.lo = self.dtype.type(lo)
        self.scale = self.dtype.type(num_bins / (hi - lo))

    def __call__(self, values: np.ndarray, buffers: "BlockBuffers | None" = None) -> np.ndarray:
        values = np.asarray(values, dtype=self.dtype)
        if buffers is None:
            scaled, bins = np.empty(values.shape, self.dtype), np.empty(values.shape, np.intp)
        else:
            scaled, bins = buffers.get(values.shape, self.dtype)
        np.subtract(values, self.lo, out=scaled)
        np.multiply(scaled, self.scale, out=scaled)
        np.clip(scaled, 0, self.num_bins - 1, out=scaled)
        np.copyto(bins, scaled, casting="unsafe")  # truncation = floor on [0, num_bins)
        return bins  # intp: np.bincount and fancy indexing take it without a copy


class BlockBuffers:
    """Scratch arrays reused from block to block: fresh 10–70 MB arrays per block cost page faults."""

    def __init__(self) -> None:
        self._scaled: np.ndarray | None = None
        self._bins: np.ndarray | None = None

    def get(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        size = int(np.prod(shape))
        if self._scaled is None or self._scaled.size < size or self._scaled.dtype != dtype:
            self._scaled = np.empty(size, dtype)
            self._bins = np.empty(size, np.intp)
        return self._scaled[:size].reshape(shape), self._bins[:size].reshape(shape)


class BinnedImpostors:
    """Exact impostor counts from a histogram plus the sorted impostors of a few "hot" bins.

    ``counts[b]`` is the exact number of impostors in bin b; ``kept`` holds every impostor of the
    hot bins. A question about a value v (or an order statistic) is answered exactly as long as
    its bin is hot: count = impostors in lower bins + kept impostors of v's bin below v.
    """

    def __init__(self, counts: np.ndarray, kept: np.ndarray, hot: np.ndarray, binner: MonotoneBinner) -> None:
        self.binner = binner
        self.counts = np.asarray(counts, dtype=np.int64)
        self.below_bin = np.concatenate([[0], np.cumsum(self.counts)])  # impostors in bins < b
        self.num = int(self.below_bin[-1])
        self.kept = np.sort(kept)
        self.kept_bins = binner(self.kept) if len(self.kept) else np.empty(0, np.intp)
        self.hot = hot

    def _require_hot(self, bins: np.ndarray) -> None:
        if not np.all(self.hot[bins]):
            raise RuntimeError("internal error: a verification count was asked outside the kept bins")

    def _count(self, values: np.ndarray, side: str) -> np.ndarray:
        values = np.asarray(values, dtype=self.binner.dtype)
        bins = self.binner(values)
        self._require_hot(bins)
        kept_before_bin = np.searchsorted(self.kept_bins, bins, side="left")
        kept_before_value = np.searchsorted(self.kept, values, side=side)
        return self.below_bin[bins] + (kept_before_value - kept_before_bin)

    def count_less(self, values: np.ndarray) -> np.ndarray:
        return self._count(values, "left")

    def count_leq(self, values: np.ndarray) -> np.ndarray:
        return self._count(values, "right")

    def order_stat(self, j: int) -> Any:
        b = self.bin_of_order_stat(j)
        self._require_hot(np.array([b]))
        first_kept = int(np.searchsorted(self.kept_bins, b, side="left"))
        return self.kept[first_kept + (j - int(self.below_bin[b]))]

    def bin_of_order_stat(self, j: int) -> int:
        # bin b holds order statistics below_bin[b] .. below_bin[b+1] − 1
        return int(np.searchsorted(self.below_bin, j, side="right")) - 1


def order_stat_bins(counts: np.ndarray, fars: Sequence[float]) -> np.ndarray:
    """The histogram bins that TAR@FAR needs: for each target, the bin of the (k+1)-th smallest
    impostor and the nearest non-empty bin below it (which holds the impostor just below it)."""
    counts = np.asarray(counts, dtype=np.int64)
    below_bin = np.concatenate([[0], np.cumsum(counts)])
    num = int(below_bin[-1])
    nonempty = np.flatnonzero(counts)
    bins: list[int] = []
    for far in fars:
        k = _accepted_impostor_budget(far, num)
        if k >= num:
            continue
        b = int(np.searchsorted(below_bin, k, side="right")) - 1
        bins.append(b)
        lower = nonempty[nonempty < b]
        if len(lower):
            bins.append(int(lower[-1]))
    return np.array(bins, dtype=np.int64)


# --------------------------------------------------------------------------- the exact curve


@dataclass(frozen=True)
class RocCurve:
    """Corner points of the exact ROC, in order of increasing threshold.

    ``impostor_accepted`` / ``genuine_accepted``: integer counts; ``far`` / ``tar``: the same as
    fractions; ``threshold``: the distance threshold of the point (accept d ≤ threshold); −inf at
    the start (nothing accepted), +inf at the end, NaN at a corner reached by impostors alone
    (any threshold between its neighbours' gives it).
    """

    impostor_accepted: np.ndarray
    genuine_accepted: np.ndarray
    threshold: np.ndarray
    num_genuine: int
    num_impostor: int

    @property
    def far(self) -> np.ndarray:
        return self.impostor_accepted / self.num_impostor

    @property
    def tar(self) -> np.ndarray:
        return self.genuine_accepted / self.num_genuine

    def downsampled(self, max_points: int = 2000) -> "RocCurve":
        """At most ``max_points`` points, evenly spaced in point index; first and last kept."""
        n = len(self.threshold)
        if n <= max_points:
            return self
        keep = np.unique(np.linspace(0, n - 1, max_points).round().astype(np.int64))
        return RocCurve(
            self.impostor_accepted[keep], self.genuine_accepted[keep], self.threshold[keep],
            self.num_genuine, self.num_impostor,
        )


@dataclass(frozen=True)
class TarAtFar:
    """One TAR@FAR operating point (accept d ≤ threshold)."""

    target: float
    tar: float
    far: float
    threshold: float | None
    genuine_accepted: int
    impostor_accepted: int
    too_few_impostors: bool  # fewer than 1/target impostors: FAR x cannot be resolved

    def to_dict(self) -> dict[str, Any]:
        return {"tar": self.tar, "far": self.far, "threshold": self.threshold}


@dataclass(frozen=True)
class RocMetrics:
    """AUC, EER and TAR@FAR from one exact curve."""

    roc_auc: float
    eer: float
    tar_at_far: dict[str, TarAtFar]
    curve: RocCurve
    num_genuine: int
    num_impostor: int

    def warnings(self) -> list[str]:
        return [
            f"TAR@FAR={label}: only {self.num_impostor} impostor pairs (fewer than 1/{label}); "
            f"reported at FAR {point.far:g}"
            for label, point in self.tar_at_far.items()
            if point.too_few_impostors
        ]


def roc_metrics_from(genuine: np.ndarray, impostors: ImpostorIndex, fars: Sequence[float] = DEFAULT_FARS) -> RocMetrics:
    """The exact curve, AUC, EER and TAR@FAR from the genuine distances and an impostor index."""
    fars = _check_fars(fars)
    genuine = np.sort(np.asarray(genuine).ravel())
    num_genuine, num_impostor = len(genuine), int(impostors.num)
    if num_genuine == 0:
        raise EvaluationError("no genuine (same-identity) pairs: the ROC is undefined")
    if num_impostor == 0:
        raise EvaluationError("no impostor (different-identity) pairs: the ROC is undefined")
    curve = _exact_curve(genuine, impostors)
    return RocMetrics(
        roc_auc=_auc(curve),
        eer=_eer(curve),
        tar_at_far={far_label(x): _tar_at_far(genuine, impostors, x) for x in fars},
        curve=curve,
        num_genuine=num_genuine,
        num_impostor=num_impostor,
    )


def roc_metrics(distances: np.ndarray, is_same: np.ndarray, fars: Sequence[float] = DEFAULT_FARS) -> RocMetrics:
    """Exact ROC metrics of labelled pairs: ``distances`` (n,), ``is_same`` (n,) bool."""
    distances = np.asarray(distances)
    is_same = np.asarray(is_same, dtype=bool)
    if np.isnan(distances).any():
        raise EvaluationError(f"pair distances hold NaN (pairs {_few(np.flatnonzero(np.isnan(distances)))})")
    return roc_metrics_from(distances[is_same], SortedImpostors(distances[~is_same]), fars)


def _exact_curve(genuine_sorted: np.ndarray, impostors: ImpostorIndex) -> RocCurve:
    values, counts = np.unique(genuine_sorted, return_counts=True)
    genuine_leq = np.cumsum(counts)
    genuine_before = genuine_leq - counts
    impostor_less = impostors.count_less(values)
    impostor_leq = impostors.count_leq(values)
    m = len(values)
    # start, then for each genuine value: the corner reached by impostors alone, then the step at it
    x = np.empty(2 * m + 2, np.int64)
    y = np.empty(2 * m + 2, np.int64)
    t = np.empty(2 * m + 2, np.float64)
    x[0], y[0], t[0] = 0, 0, -np.inf
    x[1:-1:2], y[1:-1:2], t[1:-1:2] = impostor_less, genuine_before, np.nan
    x[2:-1:2], y[2:-1:2], t[2:-1:2] = impostor_leq, genuine_leq, values
    x[-1], y[-1], t[-1] = impostors.num, len(genuine_sorted), np.inf
    repeated = np.zeros(len(x), bool)
    repeated[1:] = (x[1:] == x[:-1]) & (y[1:] == y[:-1])  # keep the earlier point of a repeat
    keep = ~repeated
    return RocCurve(x[keep], y[keep], t[keep], len(genuine_sorted), int(impostors.num))


def _auc(curve: RocCurve) -> float:
    x, y = curve.impostor_accepted, curve.genuine_accepted
    twice_area = int(np.sum(np.diff(x) * (y[1:] + y[:-1]), dtype=np.int64))
    return twice_area / (2 * curve.num_genuine * curve.num_impostor)


def _eer(curve: RocCurve) -> float:
    x, y = curve.impostor_accepted, curve.genuine_accepted
    n_gen, n_imp = curve.num_genuine, curve.num_impostor
    # s ∝ FAR − (1 − TAR): negative before the crossing, ≥ 0 from it on (non-decreasing along the curve)
    s = x * n_gen + y * n_imp - n_imp * n_gen
    i = int(np.argmax(s >= 0))
    s0, s1 = int(s[i - 1]), int(s[i])
    x0, x1 = int(x[i - 1]), int(x[i])
    along = Fraction(-s0, s1 - s0)
    return float((x0 + along * (x1 - x0)) / n_imp)


def _tar_at_far(genuine_sorted: np.ndarray, impostors: ImpostorIndex, far: float) -> TarAtFar:
    n_imp = impostors.num
    k = _accepted_impostor_budget(far, n_imp)
    first_rejected = impostors.order_stat(k)  # the (k+1)-th smallest impostor distance
    impostor_accepted = int(impostors.count_less(np.array([first_rejected]))[0])
    genuine_accepted = int(np.searchsorted(genuine_sorted, first_rejected, side="left"))
    # threshold: the largest trial distance below first_rejected (genuine or impostor)
    below = []
    if genuine_accepted:
        below.append(genuine_sorted[genuine_accepted - 1])
    if impostor_accepted:
        below.append(impostors.order_stat(impostor_accepted - 1))
    return TarAtFar(
        target=far,
        tar=genuine_accepted / len(genuine_sorted),
        far=impostor_accepted / n_imp,
        threshold=float(max(below)) if below else None,
        genuine_accepted=genuine_accepted,
        impostor_accepted=impostor_accepted,
        too_few_impostors=k == 0,
    )


# --------------------------------------------------------------------------- k-fold accuracy


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
    fars = _check_fars(fars)
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
        t = _tar_at_far(train_genuine, train_impostors, x).threshold
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


# --------------------------------------------------------------------------- results


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


def eer_at_closest_threshold(distances: np.ndarray, is_same: np.ndarray) -> float:
    """(FAR + FRR) / 2 at the first curve corner where |FAR − FRR| is smallest.

    The curve's points are "accept nothing" and every unique distance (accept d ≤ t); only its
    corners are candidates (points inside a straight run are dropped, as scikit-learn's
    ``roc_curve`` does by default). This is the EER that the common verification scripts print
    from that curve (a curve point, not the interpolated crossing that ``eer`` reports).
    """
    distances = np.asarray(distances, dtype=np.float64)
    is_same = np.asarray(is_same, dtype=bool)
    values, inverse = np.unique(distances, return_inverse=True)
    genuine_leq = np.cumsum(np.bincount(inverse, weights=is_same, minlength=len(values)))
    impostor_leq = np.cumsum(np.bincount(inverse, weights=~is_same, minlength=len(values)))
    impostors, genuine = np.r_[0.0, impostor_leq], np.r_[0.0, genuine_leq]
    corner = np.r_[True, (np.diff(impostors, 2) != 0) | (np.diff(genuine, 2) != 0), True]
    far = impostors[corner] / max(int((~is_same).sum()), 1)
    frr = 1.0 - genuine[corner] / max(int(is_same.sum()), 1)
    best = int(np.argmin(np.abs(far - frr)))
    return float((far[best] + frr[best]) / 2)


# --------------------------------------------------------------------------- query × gallery trials

# One histogram bin per ~1/2^20 of the distance range: fine enough that few impostors share a
# bin with a genuine distance, small enough (8 MB) to sum per block.
NUM_BINS = 1 << 20
# Distance blocks are kept between the two passes when all of them fit in this many bytes.
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
DEFAULT_BLOCK_BYTES = 32 * 1024 * 1024


def trial_masks(labels, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and excluded masks (b, G) of query rows start..stop under ``labels``' protocol.

    ``labels`` is an ``eval.protocol.RankingLabels``. Excluded = junk (same pid and camid under
    market, junk pids, the item itself under leave-one-out, every trial of a query whose pid is
    a junk pid) or same pid (i.e. not an impostor); genuine = same pid and not junk.
    """
    query_pid = labels.query_pid[start:stop]
    same = same_identity(query_pid[:, None], labels.gallery_pid[None, :])
    junk = np.repeat(labels.gallery_is_junk_pid[None, :], stop - start, axis=0)
    junk[np.isin(query_pid, labels.junk_pids)] = True
    if labels.protocol == "market":
        junk |= same & (labels.query_camid[start:stop, None] == labels.gallery_camid[None, :])
    elif labels.protocol == "leave-one-out":
        self_col = labels.query_self_column[start:stop]
        rows = np.flatnonzero(self_col >= 0)
        junk[rows, self_col[rows]] = True
    genuine = same & ~junk
    junk |= same
    return genuine, junk


def query_gallery_verification(
    source,
    labels,
    *,
    fars: Sequence[float] = DEFAULT_FARS,
    distance: str = "",
    block_rows: int | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    num_bins: int = NUM_BINS,
    progress: ProgressCallback | None = None,
) -> VerificationResult:
    """Exact ROC metrics over every query × gallery trial, without sorting the trials.

    ``source``: an ``eval.distances.DistanceSource`` (smaller = closer); ``labels``: an
    ``eval.protocol.RankingLabels`` for the same query and gallery rows.

    Pass 1 (one distance block at a time): keep the genuine distances, count every impostor
    distance into a monotone histogram. Then the bins that hold a genuine distance, or the
    impostor order statistics TAR@FAR needs, are marked. Pass 2 keeps the impostors of those
    bins only (from the blocks kept in memory when they fit in ``cache_bytes``, else from
    recomputed blocks). Counts below any genuine distance, hence the curve, AUC and EER, and
    the order statistics are then exact. Memory: one block, the histogram, the genuine
    distances and the kept impostors.
    """
    fars = _check_fars(fars)
    progress = progress or _no_progress
    num_queries, num_gallery = source.num_queries, source.num_gallery
    if (num_queries, num_gallery) != (labels.num_queries, labels.num_gallery):
        raise EvaluationError(
            f"distances are {num_queries} × {num_gallery} but the labels describe "
            f"{labels.num_queries} queries × {labels.num_gallery} gallery items"
        )
    if block_rows is None:
        block_rows = max(1, DEFAULT_BLOCK_BYTES // max(1, 4 * num_gallery))
    cache: list[tuple[int, np.ndarray]] | None = None

    genuine_parts: list[np.ndarray] = []
    binner: MonotoneBinner | None = None
    counts = np.zeros(num_bins + 1, np.int64)  # last bin: trials that are not impostors
    buffers = BlockBuffers()
    for start, block in exact_trial_blocks(source, block_rows):
        stop = start + block.shape[0]
        if np.isnan(np.sum(block)):  # a reduction, no (b, G) temporary; NaN anywhere makes the sum NaN
            rows = np.flatnonzero(np.isnan(block).any(axis=1)) + start
            raise EvaluationError(f"distances hold NaN (query rows {_few(rows)})")
        genuine, excluded = trial_masks(labels, start, stop)
        if binner is None:
            binner = _binner_for(block, excluded, genuine, num_bins)
            if num_queries * num_gallery * binner.dtype.itemsize <= cache_bytes:
                cache = []
        else:
            block = np.asarray(block, dtype=binner.dtype)
        genuine_parts.append(block[genuine])
        bins = binner(block, buffers)
        bins[excluded] = num_bins
        counts += np.bincount(bins.ravel(), minlength=num_bins + 1)
        if cache is not None:
            cache.append((start, np.array(block, copy=True)))
        progress("verification: counting trials", stop, num_queries)
    if binner is None:
        raise EvaluationError("no queries: nothing to verify")
    impostor_counts = counts[:num_bins]
    genuine = np.sort(np.concatenate(genuine_parts))
    if len(genuine) == 0:
        raise EvaluationError("no genuine trials: no query has a same-identity gallery item left after junk filtering")
    if impostor_counts.sum() == 0:
        raise EvaluationError("no impostor trials: every kept gallery item has the query's identity")

    hot = np.zeros(num_bins + 1, bool)
    hot[binner(np.unique(genuine))] = True
    hot[order_stat_bins(impostor_counts, fars)] = True

    blocks = cache if cache is not None else exact_trial_blocks(source, block_rows)
    kept: list[np.ndarray] = []
    hot_counts = np.zeros(num_bins + 1, np.int64)
    for start, block in blocks:
        stop = start + block.shape[0]
        block = np.asarray(block, dtype=binner.dtype)
        _, excluded = trial_masks(labels, start, stop)
        bins = binner(block, buffers)
        bins[excluded] = num_bins
        in_hot = hot[bins]
        kept.append(block[in_hot])
        hot_counts += np.bincount(bins[in_hot], minlength=num_bins + 1)
        progress("verification: exact counts", stop, num_queries)
    del cache, blocks  # release the kept distance blocks before the final counts
    if not np.array_equal(hot_counts[:num_bins][hot[:num_bins]], impostor_counts[hot[:num_bins]]):
        raise EvaluationError(
            "internal error: the second pass over the trials counted different impostors than the first "
            "(the distance source is not deterministic); no result was written"
        )
    impostors = BinnedImpostors(impostor_counts, np.concatenate(kept), hot, binner)
    roc = roc_metrics_from(genuine, impostors, fars)
    parameters = {
        "trials": "query-gallery",
        "protocol": labels.protocol,
        "junk_pids": list(labels.junk_pids),
        "num_queries": num_queries,
        "num_gallery": num_gallery,
        "kept_impostors": int(len(impostors.kept)),
    }
    return VerificationResult("query-gallery", distance, roc, None, parameters)


def exact_trial_blocks(source, block_rows: int):
    """(first row, (b, G) distances) with every value exact: each trial's value enters the curve.

    Sources with ``exact_blocks`` (embeddings: the distance core's keys for every pair) use them;
    others must yield exact values (a bound of 0), or verification refuses them.
    """
    blocks = source.exact_blocks(block_rows) if hasattr(source, "exact_blocks") else source.blocks(block_rows)
    for block in blocks:
        if block.exact_fn is not None or np.any(block.bound):
            raise EvaluationError("query × gallery verification needs exact distances; this source gives approximations")
        yield block.start, source.to_distance(block.values)


def _binner_for(block: np.ndarray, excluded: np.ndarray, genuine: np.ndarray, num_bins: int) -> MonotoneBinner:
    """Bin edges over the first block's kept distances, widened by an eighth on each side.

    Any edges give exact results (values outside fall in the end bins); representative edges
    only keep the number of impostors sharing a bin with a genuine distance small.
    """
    kept = block[~excluded | genuine]
    sample = kept if len(kept) else block
    lo, hi = float(sample.min()), float(sample.max())
    margin = (hi - lo) / 8
    dtype = block.dtype if np.issubdtype(block.dtype, np.floating) else np.float64
    return MonotoneBinner(lo - margin, hi + margin, num_bins, dtype)
