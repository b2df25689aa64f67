"""Exact blocked k-NN: same lists as a stable full sort of each row, ties by row index."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.distance import float32_at_least, float32_at_most
from retrieval.indexes.knn import exact_knn, exact_knn_between, first_k_per_row, stable_smallest_k

from _gpu import requires_cuda
from _torch import requires_torch


def brute_force(queries, base, k):
    """Squared euclidean distances in float64 and a stable full sort of each row."""
    d = ((queries[:, None, :].astype(np.float64) - base[None, :, :]) ** 2).sum(axis=2)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order, d.max(axis=1)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 60),
    dim=st.integers(1, 4),
    spread=st.integers(0, 3),
    data=st.data(),
)
def test_exact_knn_equals_stable_sort_with_ties_and_duplicates(n, dim, spread, data):
    # small integer coordinates: distances are exact in float32, so ties are real ties
    seed = data.draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).integers(-spread, spread + 1, size=(n, dim)).astype(np.float32)
    k = data.draw(st.integers(1, n))
    block_rows = data.draw(st.integers(1, n + 3))
    dist, idx, row_max = exact_knn(x, k, block_rows=block_rows, with_row_max=True)
    want_d, want_i, want_max = brute_force(x, x, k)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(dist, want_d)
    np.testing.assert_array_equal(row_max, want_max)
    # without the row maxima (their candidates are not collected then): the same lists
    dist_only, idx_only = exact_knn(x, k, block_rows=block_rows)
    np.testing.assert_array_equal(idx_only, idx)
    np.testing.assert_array_equal(dist_only, dist)


def test_self_is_first_without_duplicates_and_distance_zero():
    x = np.random.default_rng(1).standard_normal((300, 32)).astype(np.float32)
    dist, idx = exact_knn(x, 5, block_rows=64)
    np.testing.assert_array_equal(idx[:, 0], np.arange(300))
    assert (dist[:, 0] == 0).all()
    want = np.sort(((x[:, None] - x[None]) ** 2).sum(-1), axis=1)[:, :5]
    np.testing.assert_allclose(dist, want, atol=1e-4)


def test_between_and_metrics():
    rng = np.random.default_rng(2)
    q = rng.integers(-3, 4, size=(7, 3)).astype(np.float32)
    b = rng.integers(-3, 4, size=(40, 3)).astype(np.float32)
    d, i = exact_knn_between(q, b, 6, block_rows=3)
    want_d, want_i, _ = brute_force(q, b, 6)
    np.testing.assert_array_equal(i, want_i)
    de, ie = exact_knn_between(q, b, 6, metric="euclidean")
    np.testing.assert_array_equal(ie, want_i)
    np.testing.assert_allclose(de, np.sqrt(want_d), rtol=1e-6)
    # cosine: 1 − cos of the unit rows
    dc, ic = exact_knn_between(q + 0.5, b + 0.25, 4, metric="cosine")
    qn = (q + 0.5) / np.linalg.norm(q + 0.5, axis=1, keepdims=True)
    bn = (b + 0.25) / np.linalg.norm(b + 0.25, axis=1, keepdims=True)
    np.testing.assert_allclose(dc, np.sort(1 - qn @ bn.T, axis=1)[:, :4], atol=1e-5)  # cosine = 1 − cos


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 12), st.integers(1, 40), st.integers(0, 3), st.integers(0, 2**32 - 1))
def test_first_k_per_row_is_the_stable_order_whatever_the_input_order(n_rows, per_row, levels, seed):
    """Rows' candidates given in any order, with many equal values (and -0.0): each row's first k by
    (value, column), as a stable sort of the row by value would give."""
    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_rows), per_row)
    cols = np.concatenate([rng.permutation(1000)[:per_row] for _ in range(n_rows)])
    values = rng.integers(-levels, levels + 1, len(rows)).astype(np.float32) * np.float32(0.5)
    values[values == 0] *= rng.choice(np.array([1, -1], np.float32), int((values == 0).sum()))  # ±0.0
    shuffle = rng.permutation(len(rows))
    k = int(rng.integers(1, per_row + 1))
    got_d, got_i = first_k_per_row(rows[shuffle], cols[shuffle], values[shuffle], n_rows, k)
    for row in range(n_rows):
        mine = rows == row
        order = np.lexsort((cols[mine], values[mine] + np.float32(0.0)))[:k]
        np.testing.assert_array_equal(got_i[row], cols[mine][order])
        np.testing.assert_array_equal(got_d[row], values[mine][order] + np.float32(0.0))


def test_stable_smallest_k_orders_equal_values_by_column():
    block = np.array([[3.0, 1.0, 1.0, 0.5, 1.0, 1.0]], dtype=np.float32)
    values, cols = stable_smallest_k(block, 4)
    np.testing.assert_array_equal(cols, [[3, 1, 2, 4]])
    np.testing.assert_array_equal(values, [[0.5, 1.0, 1.0, 1.0]])


def test_bad_arguments():
    x = np.zeros((4, 2), dtype=np.float32)
    with pytest.raises(FaissIndexError, match="k must be"):
        exact_knn(x, 5)
    with pytest.raises(FaissIndexError, match="metric"):
        exact_knn(x, 2, metric="manhattan")
    with pytest.raises(FaissIndexError, match="dimension"):
        exact_knn_between(x, np.zeros((4, 3), np.float32), 2)
    with pytest.raises(FaissIndexError, match="device"):
        exact_knn(x, 2, device="tpu")


@requires_cuda
def test_cuda_same_lists_as_cpu():
    x = np.random.default_rng(3).integers(-3, 4, size=(500, 8)).astype(np.float32)
    for metric in ("sqeuclidean", "cosine"):
        cpu = exact_knn(x + 0.5, 11, metric=metric, block_rows=128, with_row_max=True)
        gpu = exact_knn(x + 0.5, 11, metric=metric, block_rows=128, device="cuda", with_row_max=True)
        for a, b in zip(cpu, gpu):
            np.testing.assert_array_equal(a, b)


@requires_torch
@settings(max_examples=30, deadline=None)
@given(n=st.integers(1, 60), dim=st.integers(1, 4), spread=st.integers(0, 3), self_search=st.booleans(),
       data=st.data())
def test_device_selection_equals_stable_sort(n, dim, spread, self_search, data):
    """The CUDA path's selection (``torch.topk`` and the near-maximum entries on the device, whatever
    order topk gives equal values), run here with torch on the CPU: the same exact lists."""
    from retrieval.indexes import knn
    from retrieval.indexes.distance import KeySpace, Metric

    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(-spread, spread + 1, size=(n, dim)).astype(np.float32)
    queries = x if self_search else rng.integers(-spread, spread + 1, size=(data.draw(st.integers(1, 9)), dim)).astype(np.float32)
    k = data.draw(st.integers(1, n))
    space = KeySpace(queries, x, Metric.SQEUCLIDEAN, "cpu")
    lists = knn._blocked_lists(space, k, data.draw(st.integers(1, n + 3)), None, self_search, True, torch_device="cpu")
    dist, idx, row_max = knn._finish(space, lists, k, True, self_search)
    want_d, want_i, want_max = brute_force(queries, x, k)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(dist, want_d)
    np.testing.assert_array_equal(row_max, want_max)


@given(st.floats(allow_nan=False, width=64), st.floats(allow_nan=False, width=32))
def test_float32_thresholds_keep_every_comparison(value, x):
    """The device compares float32 with float32 thresholds: the same answers as float64."""
    x = np.float32(x)
    assert (x >= float32_at_least(np.array([value]))[0]) == (float(x) >= value)
    assert (x <= float32_at_most(np.array([value]))[0]) == (float(x) <= value)


def test_sampled_bound_path_keeps_exact_ties():
    # wide base (n > 2 x sample): the k-th value is bounded from a column sample, then refined
    rng = np.random.default_rng(4)
    base = rng.integers(-2, 3, size=(9000, 2)).astype(np.float32)
    queries = base[:25]
    d, i = exact_knn_between(queries, base, 30)
    want_d, want_i, _ = brute_force(queries, base, 30)
    np.testing.assert_array_equal(i, want_i)
    np.testing.assert_array_equal(d, want_d)


def test_all_rows_search_in_panels_with_many_ties():
    # wider than twice the column sample (2,048 for k = 25): the first panel bounds its k-th from
    # the sample; later panels use the running k-th; 49 distinct points, so every list ends in ties
    rng = np.random.default_rng(5)
    n = 5000
    x = rng.integers(-3, 4, size=(n, 2)).astype(np.float32)
    d, i, row_max = exact_knn(x, 25, block_rows=700, with_row_max=True)
    rows = np.r_[0:5, 695:705, n - 10:n]
    want_d, want_i, want_max = brute_force(x[rows], x, 25)
    np.testing.assert_array_equal(i[rows], want_i)
    np.testing.assert_array_equal(d[rows], want_d)
    np.testing.assert_array_equal(row_max[rows], want_max)
