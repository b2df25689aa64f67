"""Clustering on the whole matrix of exact distances: scikit-learn's agglomerative and DBSCAN.

Quadratic memory: the matrix (float64, the distance core's exact keys in the metric's units)
and scikit-learn's working copy; refused with one line above a byte limit, saying why. The
agglomerative tree is built once (``compute_full_tree``) and cut at any threshold with
scikit-learn's ``distance_threshold`` rule (merges below the threshold); DBSCAN runs per
threshold (neighbours at distance ≤ eps; noise points become singletons).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.eval.errors import EvaluationError
from retrieval.indexes.distance import KeySpace, key_to_distance
from retrieval.indexes.errors import FaissIndexError

LINKAGES = ("average", "complete", "single")
DEFAULT_MAX_DENSE_BYTES = 4 * 2**30
DENSE_COPIES = 2  # our exact matrix, and scikit-learn's working copy (condensed or neighbourhoods)


def dense_bytes(n: int) -> int:
    return DENSE_COPIES * 8 * n * n


def check_dense_size(method: str, n: int, max_bytes: int) -> None:
    if dense_bytes(n) > max_bytes:
        raise EvaluationError(
            f"{method} clustering needs the whole {n:,} × {n:,} distance matrix (quadratic memory): about "
            f"{dense_bytes(n) / 2**30:.1f} GiB for {n:,} items, above the {max_bytes / 2**30:.1f} GiB limit; "
            "use --method rank-order or components (k-NN lists)"
        )


def dense_distances(x: np.ndarray, metric: str, max_bytes: int, method: str) -> np.ndarray:
    """(n, n) float64 exact distances in the metric's units (the diagonal is 0)."""
    check_dense_size(method, len(x), max_bytes)
    try:
        space = KeySpace(x, x, metric)
    except FaissIndexError as error:
        raise EvaluationError(str(error)) from None
    out = np.empty((len(x), len(x)), np.float64)
    for start, keys in space.exact_blocks(max(1, (64 << 20) // max(1, 8 * len(x)))):
        out[start:start + len(keys)] = key_to_distance(keys, metric)
    return out


@dataclass(frozen=True)
class MergeTree:
    """scikit-learn's full agglomerative tree: merge i joins children[i] at distances[i] (ascending)."""

    children: np.ndarray
    distances: np.ndarray
    n: int

    def cut(self, threshold: float) -> np.ndarray:
        """Labels after every merge below ``threshold`` (scikit-learn's ``distance_threshold`` rule)."""
        merges = int(np.count_nonzero(self.distances < threshold))
        parent = np.arange(2 * self.n - 1)
        for i, (left, right) in enumerate(self.children[:merges]):
            parent[left] = parent[right] = self.n + i
        parent = parent[: self.n + merges]
        while True:  # pointer jumping to the roots
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
        return parent[: self.n]


def agglomerative_tree(distances: np.ndarray, linkage: str = "average") -> MergeTree:
    from sklearn.cluster import AgglomerativeClustering

    if linkage not in LINKAGES:
        raise EvaluationError(f"unknown linkage {linkage!r}; expected one of {', '.join(LINKAGES)}")
    model = AgglomerativeClustering(n_clusters=1, metric="precomputed", linkage=linkage, compute_full_tree=True,
                                    compute_distances=True)
    model.fit(distances)
    return MergeTree(model.children_, model.distances_, len(distances))


def dbscan_labels(distances: np.ndarray, eps: float, min_samples: int = 2) -> np.ndarray:
    """scikit-learn's DBSCAN (neighbours at distance ≤ eps); noise points become singletons."""
    from sklearn.cluster import DBSCAN

    labels = DBSCAN(eps=eps, min_samples=min_samples, metric="precomputed").fit(distances).labels_.copy()
    noise = labels < 0
    labels[noise] = labels.max(initial=-1) + 1 + np.arange(int(noise.sum()))
    return labels
