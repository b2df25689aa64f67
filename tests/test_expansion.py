"""Query expansion (AQE, α-QE) and database-side augmentation: hand-worked cases, a dense brute-force
reference, and exactness (block size, row order, duplicates, any kernel downstream)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _gpu import requires_cuda
from test_exact_distances import AnyKernel, clustered_data, evaluate, same_result

from retrieval.eval.distances import EmbeddingDistances
from retrieval.eval.errors import EvaluationError
from retrieval.eval.expansion import (
    Expansion,
    database_augmentation,
    deterministic_power,
    expand,
    log_unit,
    query_expansion,
    similarity_weights,
)
from retrieval.eval.rerank import RerankedDistances
from retrieval.indexes.distance import Metric, exact_pair_keys, normalise


def unit(*v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


# ----------------------------------------------------------------------------- worked by hand

# q̂ = (0.6, 0.8); cos with g0 = (1, 0) is 0.6, with g1 = (0, 1) 0.8, with g2 = (−1, 0) −0.6.
QUERY = np.array([[3.0, 4.0]], np.float32)
GALLERY = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], np.float32)


@pytest.mark.parametrize("k, alpha, expected", [
    (1, 0.0, unit(0.6, 1.8)),  # AQE: q̂ + g1
    (3, 0.0, unit(0.6, 1.8)),  # AQE: q̂ + g1 + g0 + g2, g0 and g2 cancel
    (2, 1.0, unit(0.6, 0.8)),  # α = 1: q̂ + 0.8 g1 + 0.6 g0 = 2 q̂
    (2, 2.0, unit(2.0, 3.0)),  # α = 2: q̂ + 0.64 g1 + 0.36 g0 = (0.96, 1.44)
    (3, 1.0, unit(0.6, 0.8)),  # the opposite neighbour g2 (cos −0.6) weighs 0
])
def test_query_expansion_by_hand(k, alpha, expected):
    got = query_expansion(QUERY, GALLERY, k, alpha)
    np.testing.assert_allclose(got[0], expected, rtol=0, atol=2e-7)


def test_database_augmentation_by_hand():
    # cos(g0, g1) = 0.6, cos(g1, g2) = 0.8, cos(g0, g2) = 0: each item's nearest other item
    gallery = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
    got = database_augmentation(gallery, 1)
    np.testing.assert_allclose(got, [unit(1.6, 0.8), unit(0.6, 1.8), unit(0.6, 1.8)], atol=2e-7)
    weighted = database_augmentation(gallery, 2, alpha=1.0)  # g0: + 0.6 g1 + 0 g2
    np.testing.assert_allclose(weighted[0], unit(1.36, 0.48), atol=2e-7)


def test_dba_then_query_expansion_uses_the_augmented_gallery():
    gallery = np.array([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]], np.float32)
    out = expand(QUERY, gallery, Expansion(("aqe", "dba"), qe_k=1, dba_k=1))
    # augmented: g1' = g2' = (1, 3)/√10, g0' = (2, 1)/√5; q̂ = (0.6, 0.8) is nearest to g1' (row 1)
    np.testing.assert_allclose(out.gallery[1], unit(1.0, 3.0), atol=2e-7)
    np.testing.assert_allclose(out.queries[0], unit(0.6 + 1 / np.sqrt(10), 0.8 + 3 / np.sqrt(10)), atol=2e-7)
    assert out.expansion.to_dict()["methods"] == ["dba", "aqe"]


def test_untouched_sets_come_back_normalised():
    out = expand(QUERY, GALLERY, Expansion(("dba",), dba_k=1))
    np.testing.assert_array_equal(out.queries, normalise(QUERY))


# ----------------------------------------------------------------------------- brute force


def reference_expansion(own, base, k, alpha, exclude_self=False):
    """Dense reference: neighbours by a stable sort of every exact cosine key, weights by np.power,
    sums by one matrix product, normalisation in float64."""
    own_hat, base_hat = normalise(own), normalise(base)
    a, b = normalise(own_hat), normalise(base_hat)  # what the k-NN's key space ranks
    rows, cols = np.indices((len(a), len(b))).reshape(2, -1)
    keys = exact_pair_keys(a, rows, b, cols, Metric.SQEUCLIDEAN).reshape(len(a), len(b)).astype(np.float64)
    if exclude_self:
        keys[np.arange(len(a)), np.arange(len(a))] = np.inf
    order = np.argsort(keys, axis=1, kind="stable")[:, :k]
    similarity = 1.0 - np.take_along_axis(keys, order, axis=1) / 2.0
    weights = np.ones_like(similarity) if alpha == 0 else np.power(np.maximum(similarity, 0.0), alpha)
    w = np.zeros((len(a), len(b)))
    np.put_along_axis(w, order, weights, axis=1)
    if exclude_self:
        w += np.eye(len(a))
        total = w @ base_hat.astype(np.float64)
    else:
        total = own_hat.astype(np.float64) + w @ base_hat.astype(np.float64)
    return order, total / np.linalg.norm(total, axis=1, keepdims=True)


def clustered(seed, n, dim=12, duplicates=5):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, dim))
    x = (centres[rng.integers(0, 6, n)] + 0.5 * rng.standard_normal((n, dim))).astype(np.float32)
    for src, dst in rng.integers(0, n, (duplicates, 2)):
        x[dst] = x[src]
    return x


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 8), st.sampled_from([0.0, 1.0, 3.0, 2.5]))
def test_query_expansion_equals_a_dense_reference(seed, k, alpha):
    gallery = clustered(seed, 50)
    queries = clustered(seed + 1, 15)
    _, want = reference_expansion(queries, gallery, k, alpha)
    got = query_expansion(queries, gallery, k, alpha)
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-7)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31), st.integers(1, 8), st.sampled_from([0.0, 3.0]))
def test_database_augmentation_equals_a_dense_reference(seed, k, alpha):
    gallery = clustered(seed, 45, duplicates=8)
    _, want = reference_expansion(gallery, gallery, k, alpha, exclude_self=True)
    got = database_augmentation(gallery, k, alpha)
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-7)


def test_dba_with_more_duplicates_than_k_skips_only_itself():
    gallery = clustered(3, 30)
    gallery[[4, 9, 17, 22]] = gallery[2]  # five copies: row 22's three nearest others are copies at lower rows
    _, want = reference_expansion(gallery, gallery, 3, 0.0, exclude_self=True)
    got = database_augmentation(gallery, 3)
    np.testing.assert_allclose(got, want, rtol=0, atol=3e-7)
    np.testing.assert_array_equal(got[22], got[2])  # copies average the same vectors: identical bits


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("methods", [("aqe",), ("alpha-qe",), ("dba",), ("dba", "alpha-qe")])
def test_block_size_changes_no_bit(methods):
    queries, gallery = clustered(5, 40, dim=24), clustered(6, 120, dim=24)
    expansion = Expansion(methods, qe_k=4, dba_k=3)
    reference = expand(queries, gallery, expansion)
    for block_rows in (1, 7, 64):
        other = expand(queries, gallery, expansion, block_rows=block_rows)
        np.testing.assert_array_equal(other.queries, reference.queries)
        np.testing.assert_array_equal(other.gallery, reference.gallery)


def test_row_order_changes_no_bit():
    queries, gallery = clustered(7, 40, dim=24), clustered(8, 120, dim=24, duplicates=12)
    expansion = Expansion(("dba", "alpha-qe"), qe_k=5, dba_k=4)
    reference = expand(queries, gallery, expansion)
    rng = np.random.default_rng(1)
    qp, gp = rng.permutation(len(queries)), rng.permutation(len(gallery))
    shuffled = expand(queries[qp], gallery[gp], expansion)
    np.testing.assert_array_equal(shuffled.queries, reference.queries[qp])
    np.testing.assert_array_equal(shuffled.gallery, reference.gallery[gp])


@requires_cuda
def test_gpu_neighbours_give_the_same_bits():
    queries, gallery = clustered(9, 300, dim=64), clustered(10, 2000, dim=64)
    expansion = Expansion(("dba", "alpha-qe"), qe_k=6, dba_k=5)
    cpu = expand(queries, gallery, expansion)
    gpu = expand(queries, gallery, expansion, device="cuda")
    np.testing.assert_array_equal(cpu.queries, gpu.queries)
    np.testing.assert_array_equal(cpu.gallery, gpu.gallery)


def test_expanded_sets_rank_exactly_under_any_kernel_and_feed_reranking():
    d = clustered_data(11)
    out = expand(d["q"], d["g"], Expansion(("dba", "aqe"), qe_k=3, dba_k=3))
    source = EmbeddingDistances(out.queries, out.gallery, metric="cosine")
    reference = evaluate(source, d)
    same_result(evaluate(AnyKernel(source, 4, edge=True), d, block_rows=6), reference)
    reranked = RerankedDistances(out.queries, out.gallery, k1=8, k2=3, metric="cosine")
    same_result(evaluate(AnyKernel(reranked, 5, edge=True), d, block_rows=5), evaluate(reranked, d))


# ----------------------------------------------------------------------------- weights


def test_deterministic_power_and_log_agree_with_numpy():
    x = np.concatenate([np.linspace(1e-6, 1.0, 5001), [1.0, 0.5, 2.0**-1000, np.nextafter(1.0, 0)]])
    np.testing.assert_allclose(log_unit(x), np.log(x), rtol=1e-15, atol=1e-15)
    for alpha in (0.5, 1.0, 3.0, 7.25, 40.0):
        np.testing.assert_allclose(deterministic_power(x, alpha), np.power(x, alpha), rtol=3e-13, atol=1e-300)
    assert deterministic_power(np.array([1.0]), 3.0)[0] == 1.0
    assert deterministic_power(np.array([0.5]), 1.0)[0] == 0.5


def test_weights_clip_negative_similarity_and_alpha_zero_is_uniform():
    s = np.array([0.9, 0.0, -0.3])
    np.testing.assert_array_equal(similarity_weights(s, 0.0), [1.0, 1.0, 1.0])
    np.testing.assert_allclose(similarity_weights(s, 3.0), [0.729, 0.0, 0.0], rtol=1e-14)


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, message", [
    (dict(methods=("qe",)), "unknown expansion 'qe'"),
    (dict(methods=()), "no expansion named"),
    (dict(methods=("aqe", "alpha-qe")), "at most one of aqe / alpha-qe"),
    (dict(methods=("aqe",), qe_k=0), "qe_k must be a whole number"),
    (dict(methods=("dba",), dba_k=2.5), "dba_k must be a whole number"),
    (dict(methods=("alpha-qe",), qe_alpha=-1.0), "qe_alpha must be a finite number"),
    (dict(methods=("alpha-qe",), qe_alpha=float("nan")), "qe_alpha must be a finite number"),
])
def test_bad_parameters_are_named(kwargs, message):
    with pytest.raises(EvaluationError, match=message):
        Expansion(**kwargs)


def test_bad_inputs_are_named():
    with pytest.raises(EvaluationError, match="qe_k = 4 is larger than the gallery"):
        query_expansion(QUERY, GALLERY, 4)
    with pytest.raises(EvaluationError, match="dba_k = 3 needs more than 3"):
        database_augmentation(GALLERY, 3)
    with pytest.raises(EvaluationError, match="zero vectors"):
        query_expansion(np.zeros((1, 2), np.float32), GALLERY, 1)
    with pytest.raises(EvaluationError, match="dimension mismatch"):
        query_expansion(np.ones((1, 3), np.float32), GALLERY, 1)
    # q̂ = (1, 0), nearest (−1, 0) in a gallery holding only that: AQE sums to zero
    with pytest.raises(EvaluationError, match="query rows 0: the weighted sum is the zero vector"):
        query_expansion(np.array([[1.0, 0.0]], np.float32), np.array([[-1.0, 0.0]], np.float32), 1)
