"""A clustering at one or several thresholds, each scored (§7) when labels exist, with the oracle choice.

Each point holds the canonical labels, cluster sizes, every cluster's mean pairwise cosine
similarity (``cluster_metrics.cluster_quality``: reviewable without labels) and the §7 scores
when the items carry pids. With several thresholds and labels, the point with the best pairwise
F is *chosen with the labels*: an oracle choice (ties: the lower threshold), named as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

from retrieval.eval.cluster_metrics import ClusterMetrics, cluster_metrics, cluster_quality, size_statistics
from retrieval.eval.clustering import Clusterer

ORACLE = "oracle: the best pairwise F of the sweep, chosen with the labels"
GIVEN = "the given threshold"


@dataclass(frozen=True)
class SweepPoint:
    threshold: float
    labels: np.ndarray  # (n,) canonical cluster ids
    sizes: np.ndarray  # (C,) per cluster id
    quality: np.ndarray  # (C,) mean pairwise cosine similarity (NaN for singletons)
    scores: ClusterMetrics | None  # None without labels

    def statistics(self) -> dict[str, Any]:
        """Size statistics, plus the §7 scores when labelled."""
        out = size_statistics(self.labels)
        if self.scores is not None:
            out.update(self.scores.to_dict())
        return out


@dataclass(frozen=True)
class Sweep:
    points: list[SweepPoint]
    chosen: int | None  # index of the chosen point (None: several thresholds and no labels)
    chosen_by: str | None

    @property
    def chosen_point(self) -> SweepPoint | None:
        return None if self.chosen is None else self.points[self.chosen]


def run_sweep(clusterer: Clusterer, x: np.ndarray, thresholds: Sequence[float] | str, pid: np.ndarray | None,
              junk_pids: Iterable[int] = (-1,)) -> Sweep:
    """Cluster at every threshold (``"auto"``: the method's own), score, and choose."""
    points = []
    for clustering in clusterer.sweep(thresholds):
        sizes, quality = cluster_quality(x, clustering.labels)
        scores = None if pid is None else cluster_metrics(clustering.labels, pid, junk_pids)
        points.append(SweepPoint(clustering.threshold, clustering.labels, sizes, quality, scores))
    if len(points) == 1:
        return Sweep(points, 0, GIVEN)
    if pid is None or any(p.scores is None for p in points):
        return Sweep(points, None, None)
    best = max(range(len(points)), key=lambda i: (points[i].scores.pairwise_f, -points[i].threshold))
    return Sweep(points, best, ORACLE)
