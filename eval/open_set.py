"""Closed-set CMC and open-set DET / TPIR@FPIR of 1:N identification (protocols.md §6).

Everything here works on *keys* (the distance core's ranking values, smaller = better; see
``indexes.distance``): "score > t" for a similarity and "d < t" for a distance are both
"key < t" for the key t of the threshold, so no code here guesses a direction. Reported
thresholds are turned into the metric's units by the caller's ``to_score``.

* Closed-set CMC over mated probes: rank-k = fraction whose mate has rank ≤ k.
* Open set, rank-1 criterion, at threshold t: FPIR(t) = fraction of non-mated probes whose top
  candidate's key < t; FNIR(t) = fraction of mated probes whose mate is not at rank 1 with key < t.
* TPIR@FPIR=f: the non-mated probes' top keys sorted ascending k_0 ≤ k_1 ≤ …, m = ⌊f·N⌋ (f read
  as the decimal written), threshold k_m, rule "key < k_m": the largest TPIR with FPIR ≤ f.
  m = 0 (fewer than 1/f non-mated probes) is flagged unreachable (its FPIR is 0).
* The DET curve: one point per distinct key among the non-mated top keys and the rank-1 mates'
  keys (accept key < it), then the point accepting everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from retrieval.eval.errors import EvaluationError
from retrieval.eval.roc import accepted_impostor_budget, far_label

DEFAULT_FPIRS = (1e-3, 1e-2, 1e-1)
DEFAULT_RANKS = (1, 5, 10, 20)

ToScore = Callable[[np.ndarray], np.ndarray]


def cmc_from_ranks(mate_rank: np.ndarray, max_rank: int) -> np.ndarray:
    """(max_rank,) CMC over the given mates' ranks (1-based; 0 = not ranked, a miss at every k)."""
    ranks = np.asarray(mate_rank, dtype=np.int64)
    if len(ranks) == 0:
        return np.full(max_rank, np.nan)
    found = ranks[ranks > 0]
    hits = np.bincount(np.minimum(found, max_rank + 1), minlength=max_rank + 2)[1:max_rank + 1]
    return np.cumsum(hits) / len(ranks)


@dataclass(frozen=True)
class TpirAtFpir:
    """One operating point: accept when key < threshold_key."""

    target: float
    tpir: float
    fpir: float
    threshold: float  # in the metric's units (similarity or distance)
    threshold_key: float
    mated_accepted: int
    nonmated_accepted: int
    reachable: bool  # False: fewer than 1/target non-mated probes, reported at FPIR 0

    def to_dict(self) -> dict[str, Any]:
        return {"tpir": self.tpir, "fpir": self.fpir, "threshold": self.threshold, "reachable": self.reachable}


@dataclass(frozen=True)
class DetCurve:
    """FNIR vs FPIR at every threshold, ordered from "accept nothing" to "accept everything"."""

    threshold_key: np.ndarray  # accept key < it (+inf: everything)
    threshold: np.ndarray  # the same in the metric's units
    nonmated_accepted: np.ndarray
    mated_accepted: np.ndarray  # mated probes with the mate at rank 1 and key < threshold
    num_mated: int
    num_nonmated: int

    @property
    def fpir(self) -> np.ndarray:
        return self.nonmated_accepted / self.num_nonmated if self.num_nonmated else np.full(len(self.threshold), np.nan)

    @property
    def fnir(self) -> np.ndarray:
        return (self.num_mated - self.mated_accepted) / self.num_mated if self.num_mated else np.full(len(self.threshold), np.nan)


def det_curve(hit_keys: np.ndarray, nonmated_keys: np.ndarray, num_mated: int, to_score: ToScore) -> DetCurve:
    """``hit_keys``: keys of the mated probes whose mate is at rank 1; ``nonmated_keys``: top keys."""
    hits = np.sort(np.asarray(hit_keys, dtype=np.float32))
    nonmated = np.sort(np.asarray(nonmated_keys, dtype=np.float32))
    values = np.unique(np.concatenate([hits, nonmated]))
    thresholds = np.concatenate([values, [np.float32(np.inf)]]).astype(np.float32)
    return DetCurve(
        threshold_key=thresholds,
        threshold=to_score(thresholds),
        nonmated_accepted=np.searchsorted(nonmated, thresholds, side="left").astype(np.int64),
        mated_accepted=np.searchsorted(hits, thresholds, side="left").astype(np.int64),
        num_mated=num_mated,
        num_nonmated=len(nonmated),
    )


def tpir_at_fpir(hit_keys: np.ndarray, nonmated_keys: np.ndarray, num_mated: int, fpir: float,
                 to_score: ToScore) -> TpirAtFpir:
    """The §6 operating point (needs at least one non-mated and one mated probe)."""
    nonmated = np.sort(np.asarray(nonmated_keys, dtype=np.float32))
    hits = np.asarray(hit_keys, dtype=np.float32)
    m = accepted_impostor_budget(fpir, len(nonmated))  # < N for fpir < 1
    threshold = nonmated[m]
    nonmated_accepted = int(np.searchsorted(nonmated, threshold, side="left"))
    mated_accepted = int(np.count_nonzero(hits < threshold))
    return TpirAtFpir(
        target=fpir,
        tpir=mated_accepted / num_mated,
        fpir=nonmated_accepted / len(nonmated),
        threshold=float(to_score(np.array([threshold], np.float32))[0]),
        threshold_key=float(threshold),
        mated_accepted=mated_accepted,
        nonmated_accepted=nonmated_accepted,
        reachable=m > 0,
    )


def operating_points(hit_keys, nonmated_keys, num_mated: int, fpirs: Sequence[float],
                     to_score: ToScore) -> tuple[dict[str, TpirAtFpir] | None, str | None]:
    """TPIR@FPIR for every target, or (None, why) when no target can be computed."""
    fpirs = check_fpirs(fpirs)
    if len(nonmated_keys) == 0:
        return None, "no non-mated probes: FPIR is undefined, so TPIR@FPIR is not reported"
    if num_mated == 0:
        return None, "no mated probes: TPIR is undefined"
    points = {far_label(f): tpir_at_fpir(hit_keys, nonmated_keys, num_mated, f, to_score) for f in fpirs}
    return points, None


def check_fpirs(fpirs: Sequence[float]) -> tuple[float, ...]:
    fpirs = tuple(float(x) for x in fpirs)
    bad = [x for x in fpirs if not 0 < x < 1]
    if bad:
        raise EvaluationError(f"FPIR targets must lie strictly between 0 and 1, got {bad[0]!r}")
    return fpirs


def unreachable_warnings(points: dict[str, TpirAtFpir] | None, num_nonmated: int) -> list[str]:
    return [
        f"TPIR@FPIR={label}: only {num_nonmated} non-mated probes (fewer than 1/{label}): "
        f"unreachable, reported at FPIR {point.fpir:g}"
        for label, point in (points or {}).items()
        if not point.reachable
    ]
