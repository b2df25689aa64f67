"""N:N clustering (protocols.md §7): the methods against plain references of their definitions.

Rank-order distances and merges are recomputed here with Python sets and a union-find over the
brute-force k-NN lists (every pair's exact key, sorted by (key, row)); scikit-learn's methods
against scikit-learn itself; exactness by row permutations of float data (no ties), where the
partition must not change.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.eval.cluster_metrics import cluster_metrics, cluster_quality
from retrieval.eval.clustering import (
    Clusterer,
    NeighbourLists,
    ThresholdError,
    canonical_labels,
    neighbour_lists,
    rank_order_links,
    self_first,
)
from retrieval.eval.errors import EvaluationError
from retrieval.indexes.distance import Metric, exact_pair_keys, key_to_distance, prepare


def faces(seed, identities=25, per_id=6, dim=16, noise=0.45, junk=0.0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities + 1, dim))
    pid = np.repeat(np.arange(1, identities + 1), per_id)
    x = (centres[pid] + noise * rng.standard_normal((len(pid), dim))).astype(np.float32)
    pid[rng.random(len(pid)) < junk] = -1
    return x, pid


def brute_lists(x, k, metric="cosine"):
    """Each row: itself, then the k nearest other rows by (exact key, row)."""
    core = Metric(metric)
    p = prepare(x, core)
    rows, cols = np.indices((len(x), len(x))).reshape(2, -1)
    keys = exact_pair_keys(p, rows, p, cols, core).reshape(len(x), len(x))
    lists = []
    for i in range(len(x)):
        others = sorted((j for j in range(len(x)) if j != i), key=lambda j: (keys[i, j], j))[:k]
        lists.append([i] + others)
    idx = np.array(lists, np.int64)
    dist = key_to_distance(np.take_along_axis(keys, idx, axis=1), core)
    dist[:, 0] = 0
    return NeighbourLists(idx, dist, metric)


def reference_rank_order(idx):
    """D(a, b) for pairs on each other's lists, from the definition (sets and positions)."""
    lists = [list(row) for row in idx]
    members = [set(row) for row in lists]
    out = {}
    for a, row in enumerate(lists):
        for j, b in enumerate(row[1:], start=1):
            if a not in members[b]:
                continue
            o_ab, o_ba = j, lists[b].index(a)
            d_ab = sum(f not in members[b] for f in lists[a][: o_ab + 1])
            d_ba = sum(f not in members[a] for f in lists[b][: o_ba + 1])
            out[(min(a, b), max(a, b))] = (d_ab + d_ba) / min(o_ab, o_ba)
    return out


def union_find_partition(n, pairs):
    parent = list(range(n))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        parent[root(a)] = root(b)
    return partition([root(i) for i in range(n)])


def partition(labels, ids=None):
    ids = range(len(labels)) if ids is None else ids
    groups = {}
    for item, label in zip(ids, labels):
        groups.setdefault(int(label), set()).add(item)
    return sorted(sorted(g) for g in groups.values())


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 8), st.floats(0.1, 5.0))
def test_rank_order_equals_its_definition(seed, k, threshold):
    x, _ = faces(seed % 1000, identities=8, per_id=5, noise=0.6)
    x[3] = x[7]  # a duplicate: exact ties ordered by row
    lists = brute_lists(x, k)
    links = rank_order_links(lists)
    want = reference_rank_order(lists.idx)
    got = {(int(a), int(b)): float(v) for a, b, v in zip(links.a, links.b, links.value)}
    assert got == want
    t = min(threshold, k)
    labels = Clusterer(x, "rank-order", k=k, lists=lists).cluster(t).labels
    assert partition(labels) == union_find_partition(len(x), [p for p, v in want.items() if v < t])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_engine_lists_equal_the_brute_force_lists(metric):
    x, _ = faces(1, identities=10, per_id=5)
    x[4] = x[9]
    x[11] = x[2]
    got = neighbour_lists(x, 6, metric)
    want = brute_lists(x, 6, metric)
    np.testing.assert_array_equal(got.idx, want.idx)
    np.testing.assert_array_equal(got.dist, want.dist)


def test_self_first_moves_each_row_to_the_front_of_its_list():
    idx = np.array([[1, 0, 2], [0, 1, 2], [0, 1, 3], [3, 2, 0]])  # row 2 is missing from its own list
    dist = np.array([[0, 0, 1], [0, 0, 2], [0, 0, 1], [0, 1, 2]], np.float32)
    d, i = self_first(dist, idx)
    np.testing.assert_array_equal(i, [[0, 1, 2], [1, 0, 2], [2, 0, 1], [3, 2, 0]])
    np.testing.assert_array_equal(d[:, 0], 0)


@pytest.mark.parametrize("threshold", [0.05, 0.2, 0.5])
def test_components_are_the_thresholded_knn_graph(threshold):
    x, _ = faces(2)
    lists = brute_lists(x, 5)
    pairs = [(a, int(b)) for a in range(len(x)) for b, d in zip(lists.idx[a, 1:], lists.dist[a, 1:]) if d < threshold]
    labels = Clusterer(x, "components", k=5, lists=lists).cluster(threshold).labels
    assert partition(labels) == union_find_partition(len(x), pairs)


@pytest.mark.parametrize("linkage", ["average", "complete", "single"])
def test_agglomerative_cuts_equal_scikit_learn(linkage):
    from sklearn.cluster import AgglomerativeClustering

    x, _ = faces(3)
    clusterer = Clusterer(x, "agglomerative", linkage=linkage)
    for t in clusterer.auto_thresholds():
        model = AgglomerativeClustering(n_clusters=None, distance_threshold=t, metric="precomputed", linkage=linkage)
        want = model.fit(clusterer.distances).labels_
        assert partition(clusterer.cluster(t).labels) == partition(want)


def test_dbscan_equals_scikit_learn_with_noise_as_singletons():
    from sklearn.cluster import DBSCAN

    x, _ = faces(4, noise=0.8)
    clusterer = Clusterer(x, "dbscan", min_samples=3)
    for t in (0.1, 0.3, 0.5):
        want = DBSCAN(eps=t, min_samples=3, metric="precomputed").fit(clusterer.distances).labels_
        groups = partition(clusterer.cluster(t).labels)
        noise = {i for i in range(len(x)) if want[i] < 0}
        assert [g for g in groups if not (len(g) == 1 and g[0] in noise)] == partition(want[want >= 0],
                                                                                       np.flatnonzero(want >= 0))
        assert all([i] in groups for i in noise)


@pytest.mark.parametrize("method", ["rank-order", "components", "agglomerative", "dbscan"])
def test_row_order_does_not_change_the_clusters_or_their_ids(method):
    x, pid = faces(5, noise=0.7)
    ids = np.array([f"item{i:03d}" for i in range(len(x))])
    perm = np.random.default_rng(0).permutation(len(x))
    a = Clusterer(x, method, k=8, ids=ids)
    b = Clusterer(x[perm], method, k=8, ids=ids[perm])
    for t in a.auto_thresholds():
        first, second = a.cluster(t).labels, b.cluster(t).labels
        assert dict(zip(ids, first)) == dict(zip(ids[perm], second))  # same partition, same canonical ids


def test_canonical_ids_are_by_size_then_smallest_id():
    labels = np.array([7, 7, 3, 3, 5, 5, 5, 9])
    id_rank = np.array([5, 6, 0, 4, 2, 3, 7, 1])
    np.testing.assert_array_equal(canonical_labels(labels, id_rank), [2, 2, 1, 1, 0, 0, 0, 3])


def test_ivf_lists_cluster_like_exact_lists_on_separated_identities():
    x, pid = faces(6, identities=60, per_id=8, noise=0.3)
    exact = Clusterer(x, "rank-order", k=10)
    ivf = Clusterer(x, "rank-order", k=10, kind="ivf", nlist=8, nprobe=8)  # every cell probed: exact lists
    np.testing.assert_array_equal(ivf.lists.idx, exact.lists.idx)
    assert ivf.source["kind"] == "ivf" and ivf.source["nprobe"] == 8
    few_cells = Clusterer(x, "rank-order", k=10, kind="ivf", nlist=8, nprobe=2)
    assert (few_cells.lists.idx != exact.lists.idx).any()  # some neighbours missed ...
    assert cluster_metrics(few_cells.cluster(0.5).labels, pid).pairwise_f >= 0.95  # ... and identities still found


# ----------------------------------------------------------------------------- thresholds and limits


def test_thresholds_outside_the_range_are_usage_errors():
    x, _ = faces(7)
    with pytest.raises(ThresholdError, match=r"outside the range \(0, 2\] of cosine distance"):
        Clusterer(x, "components", k=5).cluster(2.5)
    with pytest.raises(ThresholdError, match=r"rank-order distance with k = 5"):
        Clusterer(x, "rank-order", k=5).sweep([1.0, 6.0])
    with pytest.raises(ThresholdError, match=r"\(0, ∞\)"):
        Clusterer(x, "components", k=5, metric="euclidean").cluster(0.0)


@pytest.mark.parametrize("method", ["rank-order", "components", "agglomerative"])
def test_auto_sweep_gives_at_least_8_distinct_thresholds_inside_the_range(method):
    x, _ = faces(8)
    clusterer = Clusterer(x, method, k=6)
    thresholds = clusterer.auto_thresholds()
    assert len(set(thresholds)) >= 8 and thresholds == sorted(thresholds)
    for t in thresholds:
        clusterer.check(t)
    assert len(clusterer.sweep("auto")) == len(thresholds)


def test_dense_methods_refuse_sizes_that_cannot_fit():
    x, _ = faces(9)
    with pytest.raises(EvaluationError, match=r"quadratic memory.*use --method rank-order"):
        Clusterer(x, "agglomerative", max_dense_bytes=len(x) ** 2)


def test_bad_method_metric_and_k():
    x, _ = faces(10)
    with pytest.raises(EvaluationError, match="unknown clustering method"):
        Clusterer(x, "kmeans")
    with pytest.raises(EvaluationError, match="unknown clustering metric"):
        Clusterer(x, metric="ip")
    with pytest.raises(EvaluationError, match="k must be between 1"):
        Clusterer(x, k=len(x))


# ----------------------------------------------------------------------------- per-cluster quality


def test_cluster_quality_is_the_mean_pairwise_cosine():
    x, _ = faces(11, noise=0.9)
    labels = Clusterer(x, "components", k=5).cluster(0.4).labels
    sizes, quality = cluster_quality(x, labels)
    unit = x / np.linalg.norm(x.astype(np.float64), axis=1, keepdims=True)
    for c in range(len(sizes)):
        members = unit[labels == c]
        assert sizes[c] == len(members)
        if len(members) < 2:
            assert np.isnan(quality[c])
            continue
        sims = members @ members.T
        want = (sims.sum() - np.trace(sims)) / (len(members) * (len(members) - 1))
        assert quality[c] == pytest.approx(want, abs=1e-6)
