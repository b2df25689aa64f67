"""The aligned distance (eval/aligned.py) against a brute force over every monotone path.

The brute force takes each element distance as √ of ‖q_i − g_j‖² computed with exact fractions
and rounded once to float32 (the distance core's key), then sums every path in order: the
engine must give the same float64 values bit for bit; and within 1e-7 of the real-number
definition (no rounding of the squared distance).
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.eval.aligned import (
    AlignedDistances, AlignedReranked, PartSpace, aligned_distances, shortest_path,
)
from retrieval.eval.errors import EvaluationError


def monotone_paths(p: int):
    """Every path from (0, 0) to (p-1, p-1) by steps down or right, as lists of cells."""
    for downs in itertools.combinations(range(2 * (p - 1)), p - 1):
        i = j = 0
        cells = [(0, 0)]
        for step in range(2 * (p - 1)):
            if step in downs:
                i += 1
            else:
                j += 1
            cells.append((i, j))
        yield cells


def exact_key(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖² with exact fractions, rounded once to float32, as a Python float."""
    return float(np.float32(float(sum((Fraction(float(x)) - Fraction(float(y))) ** 2 for x, y in zip(a, b)))))


def brute_force(q: np.ndarray, g: np.ndarray, rounded: bool = True) -> float:
    """Element distances stripe by stripe (√ of the float32 key, or of the real value), then the minimum over all paths."""
    p = len(q)
    square = exact_key if rounded else (lambda a, b: sum((float(x) - float(y)) ** 2 for x, y in zip(a, b)))
    element = [[math.sqrt(square(q[i], g[j])) for j in range(p)] for i in range(p)]
    return min(sum_in_order(element[i][j] for i, j in path) for path in monotone_paths(p))


def sum_in_order(values) -> float:
    """Left-to-right float64 additions, as the path sums are defined (Python 3.12's ``sum`` of floats
    is compensated, which rounds differently)."""
    total = 0.0
    for value in values:
        total += value
    return total


def unit_parts(rng, n, p, d):
    x = rng.standard_normal((n, p, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=2, keepdims=True)


def test_hand_computed_case():
    # two stripes of 1-d "features": element matrix [[1, 3], [0, 2]] -> best path 1 + 0 + 2 = 3.
    q = np.array([[[1.0], [2.0]]], np.float32)
    g = np.array([[[2.0], [4.0]]], np.float32)
    element = np.abs(q[0, :, None, 0] - g[0, None, :, 0])
    assert element.tolist() == [[1.0, 3.0], [0.0, 2.0]]
    assert aligned_distances(q, g, 2)[0, 0] == 3.0
    assert shortest_path(np.array([[1.0, 3.0], [0.0, 2.0]])) == 3.0


@pytest.mark.parametrize("p", [1, 2, 3, 4, 5])
def test_matches_the_brute_force_over_all_paths(p):
    rng = np.random.default_rng(p)
    q, g = unit_parts(rng, 5, p, 3), unit_parts(rng, 7, p, 3)
    got = aligned_distances(q.reshape(5, -1), g.reshape(7, -1), p)
    want = np.array([[brute_force(q[a], g[b]) for b in range(7)] for a in range(5)])
    np.testing.assert_array_equal(got, want)
    real = np.array([[brute_force(q[a], g[b], rounded=False) for b in range(7)] for a in range(5)])
    np.testing.assert_allclose(got, real, rtol=1e-7)


def test_symmetric_and_a_row_against_itself_walks_next_to_the_diagonal():
    rng = np.random.default_rng(0)
    x = unit_parts(rng, 6, 4, 5)
    d = aligned_distances(x, x, 4)
    np.testing.assert_array_equal(d, d.T)
    # steps go down or right only (no diagonal step, as in the paper): the path of a row against
    # itself must leave the zero diagonal once per step down.
    for a in range(6):
        assert d[a, a] > 0
        assert d[a, a] == brute_force(x[a], x[a])


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), budget=st.sampled_from([1, 700, 5_000, 1 << 20]), dup=st.integers(0, 8))
def test_same_value_for_any_block_and_row_order(seed, budget, dup):
    rng = np.random.default_rng(seed)
    q, g = unit_parts(rng, 4, 3, 6), unit_parts(rng, 9, 3, 6)
    g[dup] = g[(dup + 3) % 9]  # an exact duplicate at another row: the same value, bit for bit
    reference = aligned_distances(q, g, 3)
    assert np.array_equal(reference[:, dup], reference[:, (dup + 3) % 9])
    perm_q, perm_g = rng.permutation(4), rng.permutation(9)
    shuffled = aligned_distances(q[perm_q], g[perm_g], 3, budget_bytes=budget)
    assert np.array_equal(shuffled, reference[perm_q][:, perm_g])
    one_by_one = np.array([[aligned_distances(q[a : a + 1], g[b : b + 1], 3)[0, 0] for b in range(9)] for a in range(4)])
    assert np.array_equal(one_by_one, reference)
    rows, cols = np.divmod(rng.permutation(36), 9)
    assert np.array_equal(PartSpace(q, g, 3).pairs(rows, cols), reference[rows, cols])  # the refinement's path


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="not a multiple of 4 parts"):
        aligned_distances(np.zeros((2, 10)), np.zeros((2, 10)), 4)
    with pytest.raises(ValueError, match="values per part"):
        aligned_distances(np.zeros((2, 8)), np.zeros((2, 12)), 4)
    assert aligned_distances(np.zeros((0, 8)), np.zeros((3, 8)), 4).shape == (0, 3)


# ---------------------------------------------------------------- the ranking distance: global + w · local


def aligned_case(seed: int, n_q: int = 5, n_g: int = 12, p: int = 3, d: int = 4, dim: int = 6):
    """Float data with an exact duplicate gallery item (vector and parts) at another row."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_q + n_g, dim)).astype(np.float32)
    parts = unit_parts(rng, n_q + n_g, p, d).reshape(n_q + n_g, p * d)
    vectors[n_q + 7], parts[n_q + 7] = vectors[n_q + 2], parts[n_q + 2]
    return vectors[:n_q], vectors[n_q:], parts[:n_q], parts[n_q:], p


def brute_aligned(qv, gv, qp, gp, p, w):
    """‖q − g‖ (√ of the float32-rounded exact square) + w · the brute-force local distance, per pair."""
    qs, gs = qp.reshape(len(qp), p, -1), gp.reshape(len(gp), p, -1)
    return np.array([[math.sqrt(exact_key(qv[a], gv[b])) + w * brute_force(qs[a], gs[b]) for b in range(len(gv))]
                     for a in range(len(qv))])


@pytest.mark.parametrize("w", [0.0, 0.5, 1.0, 3.0])
def test_aligned_ranking_distance_equals_the_brute_force(w):
    qv, gv, qp, gp, p = aligned_case(int(w * 10))
    source = AlignedDistances(qv, gv, qp, gp, p, w)
    want = brute_aligned(qv, gv, qp, gp, p, w)
    for rows in (1, 2, 5):
        exact = list(source.exact_blocks(rows))
        assert all(not block.bound.any() for block in exact)  # exact values
        np.testing.assert_array_equal(np.concatenate([b.values for b in exact]), want)
        for block in source.blocks(rows):  # the float32 filter: within its bound of the exact values
            rows_, cols_ = np.indices(block.values.shape).reshape(2, -1)
            exact_values = block.exact(rows_, cols_).reshape(block.values.shape)
            np.testing.assert_array_equal(exact_values, want[block.start:block.stop])
            assert (np.abs(block.values - exact_values) <= block.bound[:, None]).all()
            assert (block.bound < 1e-3).all()  # and the bound is tight enough to filter
    rows, cols = np.divmod(np.random.default_rng(0).permutation(want.size), want.shape[1])
    np.testing.assert_array_equal(source.exact(rows, cols), want[rows, cols])
    assert np.array_equal(want[:, 2], want[:, 7])  # the duplicate ties exactly


def test_aligned_ranking_through_the_evaluator_equals_the_matrix_with_junk_and_ties():
    from retrieval.eval.distances import PrecomputedDistances
    from retrieval.eval.evaluate import evaluate_ranking

    qv, gv, qp, gp, p = aligned_case(7, n_q=6, n_g=14)
    q_pid = np.array([0, 1, 2, 3, 0, 9])
    g_pid = np.array([0, 1, 2, 2, 3, -1, 0, 2, 1, 3, -1, 4, 9, 0])
    q_cam, g_cam = np.array([0, 1, 0, 1, 1, 0]), np.arange(14) % 3
    want = brute_aligned(qv, gv, qp, gp, p, 0.7)
    for block_rows in (1, 4, 64):
        got = evaluate_ranking(AlignedDistances(qv, gv, qp, gp, p, 0.7), q_pid, g_pid, q_cam, g_cam,
                               block_rows=block_rows, keep_top=5)
        ref = evaluate_ranking(PrecomputedDistances(want), q_pid, g_pid, q_cam, g_cam, keep_top=5)
        assert got.mAP == ref.mAP and got.mINP == ref.mINP and np.array_equal(got.cmc, ref.cmc)
        assert got.per_query.column("ap").to_pylist() == ref.per_query.column("ap").to_pylist()
        assert got.rankings.column("gallery_id").to_pylist() == ref.rankings.column("gallery_id").to_pylist()
        assert got.rankings.column("distance").to_pylist() == ref.rankings.column("distance").to_pylist()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**31), scale=st.sampled_from([1e-3, 1.0, 50.0]), w=st.sampled_from([0.0, 0.3, 4.0]))
def test_filter_bound_holds_with_duplicates_and_any_scale(seed, scale, w):
    """Exact duplicates (keys 0, where the square root's error is largest) and scaled vectors."""
    rng = np.random.default_rng(seed)
    qv = (scale * rng.standard_normal((6, 16))).astype(np.float32)
    gv = (scale * rng.standard_normal((20, 16))).astype(np.float32)
    qp = (scale * rng.standard_normal((6, 4 * 8))).astype(np.float32)
    gp = (scale * rng.standard_normal((20, 4 * 8))).astype(np.float32)
    gv[3], gp[3] = qv[0], qp[0]  # a query's duplicate
    gp[7, :8] = qp[1, 8:16]  # one stripe shared, shifted by one
    source = AlignedDistances(qv, gv, qp, gp, 4, w)
    for block in source.blocks(4):
        rows, cols = np.indices(block.values.shape).reshape(2, -1)
        exact = block.exact(rows, cols).reshape(block.values.shape)
        assert (np.abs(block.values - exact) <= block.bound[:, None]).all()


def test_ranks_do_not_depend_on_where_the_filter_lands_inside_its_bound():
    """An adversarial source moves every approximate value anywhere inside the bound (to its edge, too)."""
    from test_exact_distances import AnyKernel

    from retrieval.eval.evaluate import evaluate_ranking

    qv, gv, qp, gp, p = aligned_case(5, n_q=6, n_g=14)
    q_pid, g_pid = np.array([0, 1, 2, 3, 0, 9]), np.array([0, 1, 2, 2, 3, -1, 0, 2, 1, 3, -1, 4, 9, 0])
    reference = evaluate_ranking(AlignedDistances(qv, gv, qp, gp, p, 0.5), q_pid, g_pid, protocol="no-camera", keep_top=6)
    for seed, edge in [(0, False), (1, True), (2, True)]:
        moved = evaluate_ranking(AnyKernel(AlignedDistances(qv, gv, qp, gp, p, 0.5), seed, edge), q_pid, g_pid,
                                 protocol="no-camera", keep_top=6, block_rows=4)
        assert moved.mAP == reference.mAP and np.array_equal(moved.cmc, reference.cmc)
        assert moved.rankings.equals(reference.rankings)


def test_aligned_source_errors_are_clear():
    qv, gv, qp, gp, p = aligned_case(1)
    with pytest.raises(EvaluationError, match="local weight"):
        AlignedDistances(qv, gv, qp, gp, p, -1.0)
    with pytest.raises(EvaluationError, match="one row per embedding"):
        AlignedDistances(qv, gv, qp, gp[:-1], p)
    with pytest.raises(EvaluationError, match="not a multiple of 5"):
        AlignedDistances(qv, gv, qp, gp, 5)


# ---------------------------------------------------------------- re-ranking on the aligned distance


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31), n_q=st.integers(1, 5), n_g=st.integers(3, 14), k1=st.integers(1, 8),
       k2=st.integers(1, 8), lam=st.sampled_from([0.0, 0.3, 1.0]), toolkit=st.booleans(),
       w=st.sampled_from([0.0, 0.5, 2.0]))
def test_aligned_reranking_equals_the_dense_reference(seed, n_q, n_g, k1, k2, lam, toolkit, w):
    from _rerank_reference import dense_rerank_from

    k1 = min(k1, n_q + n_g - 1)
    k2 = min(k2, k1)
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n_q + n_g, 3)).astype(np.float32)
    parts = unit_parts(rng, n_q + n_g, 2, 3).reshape(n_q + n_g, 6)
    if n_g > 3:
        vectors[n_q + 3], parts[n_q + 3] = vectors[0], parts[0]  # a query duplicated in the gallery
    d = brute_aligned(vectors, vectors, parts, parts, 2, w)
    want = dense_rerank_from(d ** 4 if toolkit else d ** 2, n_q, k1, k2, lam)
    got = AlignedReranked(vectors[:n_q], vectors[n_q:], parts[:n_q], parts[n_q:], 2, local_weight=w, k1=k1, k2=k2,
                          lambda_=lam, distance="toolkit" if toolkit else "squared").dense(block_rows=2)
    np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)


def test_aligned_reranking_without_junk_items_equals_reranking_the_data_without_them():
    qv, gv, qp, gp, p = aligned_case(3, n_q=4, n_g=12)
    left_out = np.zeros(16, bool)
    left_out[[5, 9, 13]] = True  # gallery items 1, 5, 9
    kept = np.flatnonzero(~left_out[4:])
    got = AlignedReranked(qv, gv, qp, gp, p, k1=4, k2=2, exclude_from_graph=left_out).dense()
    alone = AlignedReranked(qv, gv[kept], qp, gp[kept], p, k1=4, k2=2).dense()
    np.testing.assert_array_equal(got[:, kept], alone)


def test_reranked_blocks_keep_the_distance_block_contract():
    """Every value of a re-ranked block is within the block's bound of its exact value."""
    qv, gv, qp, gp, p = aligned_case(9, n_q=5, n_g=16)
    source = AlignedReranked(qv, gv, qp, gp, p, local_weight=0.7, k1=5, k2=2)
    for block in source.blocks(2):
        rows, cols = np.indices(block.values.shape).reshape(2, -1)
        exact = block.exact(rows, cols).reshape(block.values.shape)
        assert (np.abs(block.values - exact) <= block.bound[:, None]).all()
    np.testing.assert_array_equal(source.dense(2), source.dense(5))
