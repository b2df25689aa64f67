"""Clustering scores (protocols.md §7) against pair-by-pair and item-by-item references and scikit-learn."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.eval.cluster_metrics import cluster_metrics, size_statistics


def scored_classes(pid):
    """The §7 scoring set, written out: junk dropped, every pid-0 item a class named by its row."""
    keep = [i for i, p in enumerate(pid) if p != -1]
    return keep, [("pid", p) if p > 0 else ("row", i) for i, p in ((i, pid[i]) for i in keep)]


def harmonic(p, r):
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


labellings = st.integers(1, 40).flatmap(lambda n: st.tuples(
    st.lists(st.integers(0, 6), min_size=n, max_size=n), st.lists(st.integers(-1, 5), min_size=n, max_size=n)))


@settings(max_examples=100, deadline=None)
@given(labellings)
def test_metrics_equal_their_definitions_and_scikit_learn(data):
    labels, pid = np.array(data[0]), np.array(data[1])
    keep, classes = scored_classes(pid.tolist())
    m = cluster_metrics(labels, pid)
    if not keep:
        assert m is None
        return
    clusters = [int(labels[i]) for i in keep]
    pairs = list(combinations(range(len(keep)), 2))
    same_cluster = sum(clusters[i] == clusters[j] for i, j in pairs)
    same_class = sum(classes[i] == classes[j] for i, j in pairs)
    both = sum(clusters[i] == clusters[j] and classes[i] == classes[j] for i, j in pairs)
    precision = both / same_cluster if same_cluster else 1.0
    recall = both / same_class if same_class else 1.0
    assert (m.pairwise_precision, m.pairwise_recall) == (precision, recall)
    assert m.pairwise_f == harmonic(precision, recall)
    n = len(keep)
    bc_p = sum(sum(clusters[j] == clusters[i] and classes[j] == classes[i] for j in range(n))
               / sum(clusters[j] == clusters[i] for j in range(n)) for i in range(n)) / n
    bc_r = sum(sum(clusters[j] == clusters[i] and classes[j] == classes[i] for j in range(n))
               / sum(classes[j] == classes[i] for j in range(n)) for i in range(n)) / n
    assert m.bcubed_precision == pytest.approx(bc_p, rel=1e-12)
    assert m.bcubed_recall == pytest.approx(bc_r, rel=1e-12)
    from sklearn import metrics as sk  # here, not at collection: every test worker would import it
    from sklearn.metrics.cluster import pair_confusion_matrix

    class_ids = [hash(c) for c in classes]  # any encoding: scikit-learn's sums may differ in the last bits
    close = lambda value: pytest.approx(value, rel=1e-12, abs=1e-15)  # noqa: E731
    assert m.nmi == close(sk.normalized_mutual_info_score(class_ids, clusters, average_method="arithmetic"))
    assert m.ari == close(sk.adjusted_rand_score(class_ids, clusters))
    h, c, v = sk.homogeneity_completeness_v_measure(class_ids, clusters)
    assert (m.homogeneity, m.completeness, m.v_measure) == (close(h), close(c), close(v))
    if len(keep) > 1:  # scikit-learn's pair counts agree with ours (it counts ordered pairs)
        c = pair_confusion_matrix(class_ids, clusters)
        assert c[1, 1] == 2 * both and c[0, 1] + c[1, 1] == 2 * same_cluster and c[1, 0] + c[1, 1] == 2 * same_class
    assert m.num_classes == len(set(classes))
    assert m.num_clusters == len(set(labels.tolist()))
    sizes = {c: labels.tolist().count(c) for c in set(labels.tolist())}
    assert m.singleton_fraction == sum(sizes[c] == 1 for c in labels.tolist()) / len(labels)
    assert (m.num_items, m.num_scored) == (len(labels), n)


@settings(max_examples=30, deadline=None)
@given(labellings, st.integers(0, 2**32 - 1))
def test_row_order_changes_no_bit(data, seed):
    labels, pid = np.array(data[0]), np.array(data[1])
    perm = np.random.default_rng(seed).permutation(len(labels))
    a, b = cluster_metrics(labels, pid), cluster_metrics(labels[perm], pid[perm])
    assert (a is None and b is None) or a.to_dict() == b.to_dict()


def test_hand_computed_case():
    """Clusters {a1 a2 b1} {b2 u} {j}; classes a (2), b (2), u (pid 0), j junk (not scored)."""
    labels = np.array([0, 0, 0, 1, 1, 2])
    pid = np.array([1, 1, 2, 2, 0, -1])
    m = cluster_metrics(labels, pid)
    # same-cluster pairs: 3 + 1 = 4, of which the same person: (a1, a2) = 1; same-class pairs: a 1 + b 1 = 2
    assert (m.pairwise_precision, m.pairwise_recall) == (1 / 4, 1 / 2)
    # BCubed precision per item: a1 2/3, a2 2/3, b1 1/3, b2 1/2, u 1/2; recall: a1 1, a2 1, b1 1/2, b2 1/2, u 1
    assert m.bcubed_precision == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 / 2 + 1 / 2) / 5)
    assert m.bcubed_recall == pytest.approx((1 + 1 + 1 / 2 + 1 / 2 + 1) / 5)
    assert (m.num_clusters, m.num_classes, m.singleton_fraction) == (3, 3, 1 / 6)


def test_singletons_everywhere_give_precision_one():
    m = cluster_metrics(np.arange(5), np.array([1, 1, 2, 0, 0]))
    assert (m.pairwise_precision, m.pairwise_recall, m.bcubed_precision) == (1.0, 0.0, 1.0)


def test_size_statistics_without_labels():
    stats = size_statistics(np.array([4, 4, 4, 9, 2, 2]))
    assert stats == {"num_items": 6, "num_clusters": 3, "singleton_fraction": 1 / 6, "largest_cluster": 3,
                     "median_cluster_size": 2.0, "items_in_clusters_of_2_or_more": 5}
