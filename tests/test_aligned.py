"""The aligned local distance (eval/aligned.py) against a brute force over every monotone path."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.eval.aligned import aligned_distances, shortest_path


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


def brute_force(q: np.ndarray, g: np.ndarray) -> float:
    """Python floats: element distances stripe by stripe, then the minimum over all paths."""
    p = len(q)
    element = [[math.sqrt(sum((float(a) - float(b)) ** 2 for a, b in zip(q[i], g[j]))) for j in range(p)] for i in range(p)]
    return min(sum(element[i][j] for i, j in path) for path in monotone_paths(p))


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
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_symmetric_and_a_row_against_itself_walks_next_to_the_diagonal():
    rng = np.random.default_rng(0)
    x = unit_parts(rng, 6, 4, 5)
    d = aligned_distances(x, x, 4)
    np.testing.assert_array_equal(d, d.T)
    # steps go down or right only (no diagonal step, as in the paper): the path of a row against
    # itself must leave the zero diagonal once per step down.
    for a in range(6):
        assert d[a, a] > 0
        assert d[a, a] == pytest.approx(brute_force(x[a], x[a]), rel=1e-12)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), chunk=st.sampled_from([1, 700, 5_000, 1 << 20]), dup=st.integers(0, 8))
def test_same_value_for_any_chunk_and_row_order(seed, chunk, dup):
    rng = np.random.default_rng(seed)
    q, g = unit_parts(rng, 4, 3, 6), unit_parts(rng, 9, 3, 6)
    g[dup] = g[(dup + 3) % 9]  # an exact duplicate at another row: the same value, bit for bit
    reference = aligned_distances(q, g, 3)
    assert np.array_equal(reference[:, dup], reference[:, (dup + 3) % 9])
    perm_q, perm_g = rng.permutation(4), rng.permutation(9)
    shuffled = aligned_distances(q[perm_q], g[perm_g], 3, chunk_bytes=chunk)
    assert np.array_equal(shuffled, reference[perm_q][:, perm_g])
    one_by_one = np.array([[aligned_distances(q[a : a + 1], g[b : b + 1], 3)[0, 0] for b in range(9)] for a in range(4)])
    assert np.array_equal(one_by_one, reference)


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="not a multiple of 4 parts"):
        aligned_distances(np.zeros((2, 10)), np.zeros((2, 10)), 4)
    with pytest.raises(ValueError, match="values per part"):
        aligned_distances(np.zeros((2, 8)), np.zeros((2, 12)), 4)
    assert aligned_distances(np.zeros((0, 8)), np.zeros((3, 8)), 4).shape == (0, 3)
