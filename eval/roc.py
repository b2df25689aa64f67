"""The exact ROC of verification trials (protocols.md §2): VAL/FAR curve, AUC, EER, TAR@FAR.

Every score is a *distance*: smaller = closer, and a pair is accepted as "same" when its distance
is at most the threshold (FaceNet: TA(t) = {same pairs, d ≤ t}).

The ROC is swept over the sorted unique distances: at each threshold t, TAR(t) = #genuine with
d ≤ t / #genuine and FAR(t) = #impostor with d ≤ t / #impostor. Genuine and impostor pairs at the
same distance move together (one diagonal step). The curve is kept as its corner points, in
integer counts; points on a straight run between two corners add nothing.

* AUC: trapezoid rule over the exact curve, i.e. P(d_impostor > d_genuine) + ½ P(tie), computed
  in integers and divided once.
* EER: the point of the curve where FAR = 1 − TAR, found on the segment between the last curve
  point with FAR < 1 − TAR and the first with FAR ≥ 1 − TAR, by linear interpolation along that
  segment (exact rational arithmetic, one rounding at the end). ``eer_at_closest_threshold`` is
  the common scripts' curve-point convention (``eer_approx``).
* TAR@FAR=x: the largest TAR whose FAR ≤ x. With n impostors and k = ⌊x·n⌋, the threshold is the
  largest trial distance below the (k+1)-th smallest impostor distance; the result carries the
  achieved FAR and that threshold (None when no pair is accepted). Fewer than 1/x impostors
  (k = 0) is flagged.

Impostor distances are asked through ``ImpostorIndex``: all of them sorted in memory
(``SortedImpostors``), or a histogram with a few kept bins (``eval.trials``).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from retrieval.eval.errors import EvaluationError
from retrieval.common.text import few

DEFAULT_FARS = (1e-1, 1e-2, 1e-3)

def far_label(far: float) -> str:
    """The key of a FAR target: 0.1 -> "1e-1", 0.001 -> "1e-3", 0.05 -> "5e-2", 0.025 -> "2.5e-2"."""
    mantissa, exponent = f"{far:e}".split("e")
    mantissa = mantissa.rstrip("0").rstrip(".")
    return f"{mantissa}e{int(exponent)}"


def check_fars(fars: Iterable[float]) -> tuple[float, ...]:
    fars = tuple(float(x) for x in fars)
    bad = [x for x in fars if not 0 < x < 1]
    if bad:
        raise EvaluationError(f"FAR targets must lie strictly between 0 and 1, got {bad[0]!r}")
    return fars


def accepted_impostor_budget(far: float, num_impostor: int) -> int:
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
    fars = check_fars(fars)
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
        tar_at_far={far_label(x): tar_at_far_point(genuine, impostors, x) for x in fars},
        curve=curve,
        num_genuine=num_genuine,
        num_impostor=num_impostor,
    )


def roc_metrics(distances: np.ndarray, is_same: np.ndarray, fars: Sequence[float] = DEFAULT_FARS) -> RocMetrics:
    """Exact ROC metrics of labelled pairs: ``distances`` (n,), ``is_same`` (n,) bool."""
    distances = np.asarray(distances)
    is_same = np.asarray(is_same, dtype=bool)
    if np.isnan(distances).any():
        raise EvaluationError(f"pair distances hold NaN (pairs {few(np.flatnonzero(np.isnan(distances)))})")
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


def tar_at_far_point(genuine_sorted: np.ndarray, impostors: ImpostorIndex, far: float) -> TarAtFar:
    n_imp = impostors.num
    k = accepted_impostor_budget(far, n_imp)
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


def eer_at_closest_threshold(distances: np.ndarray, is_same: np.ndarray) -> float:
    """(FAR + FRR) / 2 at the first curve corner where |FAR − FRR| is smallest.

    The curve's points are "accept nothing" and every unique distance (accept d ≤ t); only its
    corners are candidates (points inside a straight run of the thresholds' points are dropped,
    as scikit-learn's ``roc_curve`` does by default, which always keeps the first threshold). This is the EER that the common verification scripts print
    from that curve (a curve point, not the interpolated crossing that ``eer`` reports).
    """
    distances = np.asarray(distances, dtype=np.float64)
    is_same = np.asarray(is_same, dtype=bool)
    values, inverse = np.unique(distances, return_inverse=True)
    genuine_leq = np.cumsum(np.bincount(inverse, weights=is_same, minlength=len(values)))
    impostor_leq = np.cumsum(np.bincount(inverse, weights=~is_same, minlength=len(values)))
    # straight runs are dropped among the thresholds' points, then "accept nothing" is put in
    # front: the first threshold's point always stays (scikit-learn's roc_curve does the same)
    corner = np.r_[True, (np.diff(impostor_leq, 2) != 0) | (np.diff(genuine_leq, 2) != 0), True][: len(values)]
    impostors, genuine = np.r_[0.0, impostor_leq[corner]], np.r_[0.0, genuine_leq[corner]]
    far = impostors / max(int((~is_same).sum()), 1)
    frr = 1.0 - genuine / max(int(is_same.sum()), 1)
    best = int(np.argmin(np.abs(far - frr)))
    return float((far[best] + frr[best]) / 2)
