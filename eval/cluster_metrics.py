"""Scores of a clustering (protocols.md §7), and a quality per cluster that needs no labels.

Scoring set: items with a junk pid (default −1) are clustered but not scored; each pid-0 item is
a class of its own. With n_ij = scored items of cluster i and class j, a_i = Σ_j n_ij and
b_j = Σ_i n_ij:

* pairwise (Otto et al.): precision = Σ C(n_ij, 2) / Σ C(a_i, 2), recall = Σ C(n_ij, 2) / Σ C(b_j, 2)
  (integer counts, divided once; 1 when the denominator is 0: no pair to get wrong / to find);
* BCubed: precision = (1/N) Σ n_ij² / a_i, recall = (1/N) Σ n_ij² / b_j (exactly rounded sums);
* NMI (arithmetic normalisation), ARI, homogeneity, completeness, V-measure: scikit-learn's (its
  floating sums follow the label values: canonical cluster ids make them row-order independent);
* F = harmonic mean (0 when precision + recall = 0).

``num_clusters`` and ``singleton_fraction`` describe the whole clustering (every item);
``num_classes`` the scoring set. ``cluster_quality`` gives each cluster's mean pairwise cosine
similarity, from its sum vector: (‖Σ x̂‖² − Σ ‖x̂‖²) / (n(n − 1)), computed from correctly rounded
sums (``indexes.group_sums``), so it does not depend on the row order.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable

import numpy as np

from retrieval.indexes.group_sums import exact_group_sums
from retrieval.eval.protocol import DISTRACTOR_PID
from retrieval.indexes.distance import normalise, squared_norms


@dataclass(frozen=True)
class ClusterMetrics:
    pairwise_precision: float
    pairwise_recall: float
    pairwise_f: float
    bcubed_precision: float
    bcubed_recall: float
    bcubed_f: float
    nmi: float
    ari: float
    homogeneity: float
    completeness: float
    v_measure: float
    num_clusters: int
    num_classes: int
    singleton_fraction: float
    num_items: int
    num_scored: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def scoring_classes(pid: np.ndarray, labels: np.ndarray, junk_pids: Iterable[int] = (-1,)):
    """(scored mask (n,), class (n_scored,)): pids > 0 keep their class, each pid-0 item gets its own.

    The pid-0 classes are numbered in the order of their items' cluster ids, so that scikit-learn
    sums its terms in the same order for any row order (given canonical cluster ids).
    """
    pid = np.asarray(pid, dtype=np.int64)
    scored = ~np.isin(pid, tuple(junk_pids))
    classes = pid[scored].copy()
    unknown = np.flatnonzero(classes == DISTRACTOR_PID)
    by_cluster = unknown[np.argsort(np.asarray(labels)[scored][unknown], kind="stable")]
    classes[by_cluster] = int(classes.max(initial=0)) + 1 + np.arange(len(by_cluster))
    return scored, classes


def harmonic(p: float, r: float) -> float:
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def _pairs(counts: np.ndarray) -> int:
    counts = counts.astype(np.int64)
    return int(np.sum(counts * (counts - 1) // 2))


def _ratio(numerator: int, denominator: int) -> float:
    return 1.0 if denominator == 0 else numerator / denominator


def cluster_metrics(labels: np.ndarray, pid: np.ndarray, junk_pids: Iterable[int] = (-1,)) -> ClusterMetrics | None:
    """§7 scores of ``labels`` (n,) against ``pid`` (n,); None when no item can be scored (all junk)."""
    from sklearn import metrics as sk

    labels = np.asarray(labels, dtype=np.int64)
    scored, classes = scoring_classes(pid, labels, junk_pids)
    clusters = labels[scored]
    n = len(clusters)
    if n == 0:
        return None
    class_ids, class_index = np.unique(classes, return_inverse=True)
    cluster_index = np.unique(clusters, return_inverse=True)[1]
    cells, n_ij = np.unique(cluster_index * len(class_ids) + class_index, return_counts=True)  # the contingency
    cluster_of, class_of = cells // len(class_ids), cells % len(class_ids)
    a = np.bincount(cluster_of, weights=n_ij).astype(np.int64)
    b = np.bincount(class_of, weights=n_ij).astype(np.int64)
    together = _pairs(n_ij)
    precision, recall = _ratio(together, _pairs(a)), _ratio(together, _pairs(b))
    squares = n_ij.astype(np.float64) ** 2
    bc_precision = math.fsum((squares / a[cluster_of]).tolist()) / n
    bc_recall = math.fsum((squares / b[class_of]).tolist()) / n
    homogeneity, completeness, v_measure = sk.homogeneity_completeness_v_measure(classes, clusters)
    sizes = np.bincount(np.unique(labels, return_inverse=True)[1])
    return ClusterMetrics(
        pairwise_precision=precision, pairwise_recall=recall, pairwise_f=harmonic(precision, recall),
        bcubed_precision=bc_precision, bcubed_recall=bc_recall, bcubed_f=harmonic(bc_precision, bc_recall),
        nmi=float(sk.normalized_mutual_info_score(classes, clusters, average_method="arithmetic")),
        ari=float(sk.adjusted_rand_score(classes, clusters)),
        homogeneity=float(homogeneity), completeness=float(completeness), v_measure=float(v_measure),
        num_clusters=len(sizes), num_classes=len(b), singleton_fraction=float((sizes == 1).sum() / len(labels)),
        num_items=len(labels), num_scored=n,
    )


def size_statistics(labels: np.ndarray) -> dict[str, Any]:
    """Cluster-size statistics (what can be said without labels)."""
    sizes = np.bincount(np.unique(np.asarray(labels), return_inverse=True)[1])
    return {
        "num_items": int(sizes.sum()),
        "num_clusters": len(sizes),
        "singleton_fraction": float((sizes == 1).sum() / max(1, sizes.sum())),
        "largest_cluster": int(sizes.max(initial=0)),
        "median_cluster_size": float(np.median(sizes)) if len(sizes) else 0.0,
        "items_in_clusters_of_2_or_more": int(sizes[sizes > 1].sum()),
    }


def cluster_quality(x: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per cluster id 0..max: (size (C,), mean pairwise cosine similarity (C,), NaN for singletons)."""
    labels = np.asarray(labels, dtype=np.int64)
    num = int(labels.max(initial=-1)) + 1
    unit = normalise(x, "vectors")
    sums = exact_group_sums(unit, labels, num)
    self_terms = exact_group_sums(squared_norms(unit), labels, num).astype(np.float64)
    sizes = np.bincount(labels, minlength=num)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = (squared_norms(sums).astype(np.float64) - self_terms) / (sizes * (sizes - 1.0))
    return sizes, np.where(sizes > 1, mean, np.nan)
