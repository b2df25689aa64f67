"""N:N clustering (protocols.md §7): k-NN-list methods for millions of items, scikit-learn's for few.

Methods (a threshold each; items merge when a value is *below* it, and merges are transitive):

* ``rank-order`` — approximate rank-order clustering (Otto, Wang & Jain, 2018). Each item a has a
  list L_a = (a, f_a(1), …, f_a(k)): itself, then its k nearest items. For b = f_a(j), O_a(b) = j,
  and d(a, b) = #{i ≤ O_a(b): f_a(i) ∉ L_b} counts a's neighbours up to b that b's list lacks.
  Pairs on each other's lists get D(a, b) = (d(a, b) + d(b, a)) / min(O_a(b), O_b(a)) ∈ [0, k − 1];
  other pairs are never linked. Range of the threshold: (0, k].
* ``components`` — the thresholded k-NN graph: a linked to each listed neighbour closer than the
  threshold (a distance in the metric's units), connected components by union-find (scipy).
* ``agglomerative`` (scikit-learn, average linkage by default) and ``dbscan`` (scikit-learn,
  ``min_samples`` = 2 by default; noise points become singletons) on the whole matrix of exact
  distances (``eval.clustering_dense``): quadratic memory, refused above ``max_dense_bytes``.

Distances are the distance core's exact keys (``indexes.distance``) in the metric's units, and
the k-NN lists are exact (``indexes.knn.exact_knn``, ties by row) or an IVF index's lists
re-ranked exactly (``indexes.knn_graph``; which items reach a list is then approximate). So a
clustering depends on the data, not on block sizes or kernels; exact ties (duplicates) are
ordered by row like everywhere in the engine. Cluster ids are canonical: by size (largest
first), then by the smallest item id (or row) in the cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from retrieval.common.progress import ProgressCallback
from retrieval.eval.clustering_dense import (  # noqa: F401  (LINKAGES, MergeTree: public here too)
    DEFAULT_MAX_DENSE_BYTES,
    LINKAGES,
    MergeTree,
    agglomerative_tree,
    dbscan_labels,
    dense_distances,
)
from retrieval.eval.errors import EvaluationError
from retrieval.indexes.errors import FaissIndexError

METHODS = ("rank-order", "components", "agglomerative", "dbscan")
NEIGHBOUR_KINDS = ("flat", "ivf")
METRICS = ("cosine", "euclidean", "sqeuclidean")
DEFAULT_K = 20
AUTO_POINTS = 12
MIN_AUTO_POINTS = 8
_LOOKUP_CHUNK = 8_000_000  # membership look-ups per chunk of the rank-order distances


class ThresholdError(EvaluationError):
    """A threshold outside the method's range (a usage error)."""


# --------------------------------------------------------------------------- k-NN lists


@dataclass(frozen=True)
class NeighbourLists:
    """Each item's list: itself first, then its k nearest items by (exact distance, row)."""

    idx: np.ndarray  # (n, k + 1) int64
    dist: np.ndarray  # (n, k + 1) float32, the metric's units; column 0 is 0
    metric: str
    source: dict = field(default_factory=dict)  # how the lists were found (kind, nlist, nprobe)

    @property
    def k(self) -> int:
        return self.idx.shape[1] - 1


def neighbour_lists(x: np.ndarray, k: int = DEFAULT_K, metric: str = "cosine", kind: str = "flat",
                    nlist: int | None = None, nprobe: int | None = None, device: str = "cpu",
                    progress: ProgressCallback | None = None) -> NeighbourLists:
    """k-NN lists of every row among all rows: exact (``flat``) or from an IVF index (``ivf``)."""
    _check_metric(metric)
    if kind not in NEIGHBOUR_KINDS:
        raise EvaluationError(f"unknown neighbour-list kind {kind!r}; expected one of {', '.join(NEIGHBOUR_KINDS)}")
    n = len(x)
    if not 1 <= k < n:
        raise EvaluationError(f"k must be between 1 and the number of items − 1 ({n - 1}), got {k}")
    try:
        if kind == "flat":
            from retrieval.indexes.knn import exact_knn

            dist, idx = exact_knn(x, k + 1, metric=metric, device=device, progress=progress)
            source = {"kind": "flat", "k": k}
        else:
            from retrieval.indexes.knn_graph import ivf_knn

            dist, idx, source = ivf_knn(x, k + 1, metric=metric, nlist=nlist, nprobe=nprobe, progress=progress)
            source["k"] = k
    except FaissIndexError as error:
        raise EvaluationError(str(error)) from None
    dist, idx = self_first(dist, idx)
    return NeighbourLists(idx, dist, metric, source)


def self_first(dist: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lists with each row itself in front (a duplicate at a lower row may precede it in a list)."""
    n, width = idx.shape
    rows = np.arange(n)[:, None]
    own = idx == rows
    # keep the other entries in order; a row missing from its own list (many duplicates) drops its last entry
    keep = ~own
    keep[~own.any(axis=1), width - 1] = False
    order = np.argsort(~keep, axis=1, kind="stable")[:, : width - 1]
    others_i = np.take_along_axis(idx, order, axis=1)
    others_d = np.take_along_axis(dist, order, axis=1)
    return (np.concatenate([np.zeros((n, 1), dist.dtype), others_d], axis=1),
            np.concatenate([rows.astype(np.int64), others_i], axis=1))


# --------------------------------------------------------------------------- links of the k-NN methods


@dataclass(frozen=True)
class Links:
    """Candidate merges: item pairs and the value a threshold is compared with (merge if below)."""

    a: np.ndarray
    b: np.ndarray
    value: np.ndarray  # float64


def distance_links(lists: NeighbourLists) -> Links:
    """Every (item, listed neighbour) pair with its distance (the k-NN graph)."""
    n, width = lists.idx.shape
    return Links(np.repeat(np.arange(n), width - 1), lists.idx[:, 1:].ravel(),
                 lists.dist[:, 1:].ravel().astype(np.float64))


class _Membership:
    """Is item m on row o's list, and where: one sorted key o·n + m per list entry."""

    def __init__(self, idx: np.ndarray) -> None:
        n, width = idx.shape
        self.n = n
        keys = np.repeat(np.arange(n, dtype=np.int64), width) * n + idx.ravel()
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.position = (order % width).astype(np.int64)

    def position_of(self, owner: np.ndarray, member: np.ndarray) -> np.ndarray:
        """Position of ``member`` in ``owner``'s list, −1 when absent."""
        wanted = owner * self.n + member
        where = np.minimum(np.searchsorted(self.keys, wanted), len(self.keys) - 1)
        return np.where(self.keys[where] == wanted, self.position[where], -1)


def rank_order_links(lists: NeighbourLists, progress: ProgressCallback | None = None) -> Links:
    """The approximate rank-order distance D(a, b) of every pair on each other's lists (a < b)."""
    idx = lists.idx
    n, width = idx.shape
    member = _Membership(idx)
    a = np.repeat(np.arange(n, dtype=np.int64), width - 1)
    j = np.tile(np.arange(1, width, dtype=np.int64), n)  # O_a(b)
    b = idx[:, 1:].ravel()
    o_ba = member.position_of(b, a)
    mutual = o_ba > 0
    a, b, j, o_ba = a[mutual], b[mutual], j[mutual], o_ba[mutual]
    d = _missing_neighbours(idx, member, a, b, j, progress)
    # each mutual pair appears once from each side: pair the two records and combine
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    order = np.lexsort((a != lo, hi, lo))
    lo, hi, a, d, j, o_ba = lo[order], hi[order], a[order], d[order], j[order], o_ba[order]
    first, second = slice(0, None, 2), slice(1, None, 2)
    value = (d[first] + d[second]) / np.minimum(j[first], o_ba[first])
    return Links(lo[first], hi[first], value.astype(np.float64))


def _missing_neighbours(idx, member: _Membership, a, b, j, progress) -> np.ndarray:
    """d(a, b) = #{1 ≤ i < O_a(b): f_a(i) ∉ L_b} (a and b are on both lists)."""
    out = np.zeros(len(a), np.int64)
    counts = j - 1
    ends = np.cumsum(counts)
    start = 0
    while start < len(a):
        stop = int(np.searchsorted(ends, (ends[start - 1] if start else 0) + _LOOKUP_CHUNK, side="right"))
        stop = max(stop, start + 1)
        c = counts[start:stop]
        pair = np.repeat(np.arange(start, stop), c)
        i = np.arange(c.sum()) - np.repeat(np.cumsum(c) - c, c) + 1
        absent = member.position_of(b[pair], idx[a[pair], i]) < 0
        out[start:stop] = np.bincount(pair - start, weights=absent, minlength=stop - start).astype(np.int64)
        if progress is not None:
            progress("rank-order distances", stop, len(a))
        start = stop
    return out


def link_components(links: Links, n: int, threshold: float) -> np.ndarray:
    """Connected components of the pairs whose value is below ``threshold`` (union-find, transitive)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    keep = links.value < threshold
    graph = coo_matrix((np.ones(int(keep.sum()), np.int8), (links.a[keep], links.b[keep])), shape=(n, n)).tocsr()
    return connected_components(graph, directed=False)[1]


# --------------------------------------------------------------------------- thresholds


def threshold_range(method: str, metric: str, k: int) -> tuple[float, float]:
    """(low, high): a threshold must satisfy low < t ≤ high."""
    if method == "rank-order":
        return 0.0, float(k)
    return 0.0, (2.0 if metric == "cosine" else np.inf)


def check_threshold(method: str, metric: str, k: int, threshold: float) -> float:
    low, high = threshold_range(method, metric, k)
    t = float(threshold)
    if not low < t <= high:
        what = f"the rank-order distance with k = {k}" if method == "rank-order" else f"{metric} distance"
        upper = f"{high:g}]" if np.isfinite(high) else "∞)"
        raise ThresholdError(f"threshold {t:g} is outside the range ({low:g}, {upper} of {what} ({method})")
    return t


def auto_thresholds(values: np.ndarray, method: str, metric: str, k: int, count: int = AUTO_POINTS) -> list[float]:
    """At least ``MIN_AUTO_POINTS`` thresholds inside the method's range, from the values it
    compares (link values, or neighbour distances): halfway between the value at each of ``count``
    quantiles from 2% to 98% and the next larger value (so "below the threshold" takes every value
    up to that quantile); when ties leave fewer, evenly spaced points over the values' span are added."""
    low, high = threshold_range(method, metric, k)
    distinct = np.unique(np.asarray(values, dtype=np.float64))
    chosen: set[float] = set()
    if len(distinct):
        ranks = np.searchsorted(distinct, np.quantile(values, np.linspace(0.02, 0.98, count), method="lower"))
        upper = np.append(distinct[1:], distinct[-1] + max(distinct[-1] - distinct[0], 1.0) / count)
        chosen = {float((distinct[j] + upper[j]) / 2) for j in ranks}
    chosen = {t for t in chosen if low < t <= high}
    if len(chosen) < MIN_AUTO_POINTS:
        top = min(float(distinct[-1]) if len(distinct) and distinct[-1] > low else 1.0, high)
        chosen |= {float(t) for t in np.linspace(low, top, MIN_AUTO_POINTS + 1)[1:]}
    return sorted(chosen)


# --------------------------------------------------------------------------- one door


@dataclass(frozen=True)
class Clustering:
    """One clustering: canonical cluster ids (largest first, then smallest item id)."""

    method: str
    threshold: float
    labels: np.ndarray  # (n,) int64

    @property
    def num_clusters(self) -> int:
        return int(self.labels.max(initial=-1)) + 1

    @property
    def sizes(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_clusters)


def canonical_labels(labels: np.ndarray, id_rank: np.ndarray) -> np.ndarray:
    """Renumber clusters 0.. by (size descending, smallest id rank)."""
    _, labels = np.unique(np.asarray(labels), return_inverse=True)
    sizes = np.bincount(labels)
    smallest = np.full(len(sizes), np.iinfo(np.int64).max)
    np.minimum.at(smallest, labels, id_rank)
    order = np.lexsort((smallest, -sizes))
    new = np.empty(len(order), np.int64)
    new[order] = np.arange(len(order))
    return new[labels]


class Clusterer:
    """The expensive part of a method (k-NN lists and links, or the dense matrix) computed once,
    then cut at any number of thresholds."""

    def __init__(self, x: np.ndarray, method: str = "rank-order", *, k: int = DEFAULT_K, metric: str = "cosine",
                 kind: str = "flat", lists: NeighbourLists | None = None, ids: np.ndarray | None = None,
                 linkage: str = "average", min_samples: int = 2, max_dense_bytes: int = DEFAULT_MAX_DENSE_BYTES,
                 nlist: int | None = None, nprobe: int | None = None, device: str = "cpu",
                 progress: ProgressCallback | None = None) -> None:
        if method not in METHODS:
            raise EvaluationError(f"unknown clustering method {method!r}; expected one of {', '.join(METHODS)}")
        _check_metric(metric)
        self.method, self.metric, self.n = method, metric, len(x)
        if self.n < 2:
            raise EvaluationError(f"clustering needs at least 2 items, got {self.n}")
        self.id_rank = _id_rank(ids, self.n)
        self.min_samples, self.source = min_samples, {}
        if method in ("rank-order", "components"):
            self.lists = lists or neighbour_lists(x, k, metric, kind, nlist, nprobe, device, progress)
            self.k, self.source = self.lists.k, self.lists.source
            self.links = rank_order_links(self.lists, progress) if method == "rank-order" else distance_links(self.lists)
            self.values = self.links.value
        else:
            self.k = min(k, self.n - 1)
            self.distances = dense_distances(x, metric, max_dense_bytes, method)
            self.values = np.partition(self.distances, self.k, axis=1)[:, 1:self.k + 1].ravel()
            self.tree = agglomerative_tree(self.distances, linkage) if method == "agglomerative" else None
            self.source = {"kind": "dense", "linkage": linkage} if method == "agglomerative" else \
                {"kind": "dense", "min_samples": min_samples}

    def auto_thresholds(self, count: int = AUTO_POINTS) -> list[float]:
        return auto_thresholds(self.values, self.method, self.metric, self.k, count)

    def check(self, threshold: float) -> float:
        return check_threshold(self.method, self.metric, self.k, threshold)

    def cluster(self, threshold: float) -> Clustering:
        t = self.check(threshold)
        if self.method in ("rank-order", "components"):
            labels = link_components(self.links, self.n, t)
        elif self.method == "agglomerative":
            labels = self.tree.cut(t)
        else:
            labels = dbscan_labels(self.distances, t, self.min_samples)
        return Clustering(self.method, t, canonical_labels(labels, self.id_rank))

    def sweep(self, thresholds: Sequence[float] | str) -> list[Clustering]:
        """Clusterings at each threshold (``"auto"``: :meth:`auto_thresholds`)."""
        values = self.auto_thresholds() if isinstance(thresholds, str) and thresholds == "auto" else list(thresholds)
        checked = [self.check(t) for t in values]  # every threshold checked before any work
        return [self.cluster(t) for t in checked]


def _id_rank(ids, n: int) -> np.ndarray:
    if ids is None:
        return np.arange(n, dtype=np.int64)
    ids = np.asarray(ids).astype(str)
    if len(ids) != n:
        raise EvaluationError(f"{len(ids)} ids given for {n} items")
    rank = np.empty(n, np.int64)
    rank[np.argsort(ids, kind="stable")] = np.arange(n)
    return rank


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise EvaluationError(f"unknown clustering metric {metric!r}; expected one of {', '.join(METRICS)}")
