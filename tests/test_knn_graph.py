"""IVF k-NN lists: exact within their reach, the same for any row order or BLAS kernel."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.indexes.distance import KeySpace
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.knn import exact_knn
from retrieval.indexes.knn_graph import ivf_knn, row_hash, train_centroids


def people(seed, identities=40, per_id=6, dim=24, noise=0.35):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((identities, dim))
    x = centres[np.repeat(np.arange(identities), per_id)] + noise * rng.standard_normal((identities * per_id, dim))
    x = x.astype(np.float32)
    x[7] = x[3]  # a duplicate: an exact tie, ordered by row
    return x


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_probing_every_cell_gives_the_exact_lists(metric):
    x = people(0)
    dist, idx, params = ivf_knn(x, 9, metric, nlist=6, nprobe=6)
    want_d, want_i = exact_knn(x, 9, metric)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(dist, want_d)
    assert params == {"kind": "ivf", "nlist": 6, "nprobe": 6, "iterations": 8, "seed": 0}


def test_fewer_probes_reach_fewer_rows_but_order_them_exactly():
    x = people(1)
    dist, idx, _ = ivf_knn(x, 6, "cosine", nlist=12, nprobe=2)
    exact_d, exact_i = exact_knn(x, 6, "cosine")
    recall = np.mean([len(set(a) & set(b)) / 6 for a, b in zip(idx, exact_i)])
    assert 0.9 <= recall < 1.0 or recall == 1.0
    assert np.all(np.diff(dist, axis=1) >= 0)  # ascending
    assert np.all(dist >= exact_d)  # the i-th found is never closer than the true i-th
    np.testing.assert_array_equal(idx[:, 0][idx[:, 0] != np.arange(len(x))], [3])  # row 7's twin (row 3) comes first


def test_row_order_changes_no_list():
    x = people(2)
    perm = np.random.default_rng(0).permutation(len(x))
    d1, i1, _ = ivf_knn(x, 7, "cosine", nlist=10, nprobe=3)
    d2, i2, _ = ivf_knn(x[perm], 7, "cosine", nlist=10, nprobe=3)
    # the same neighbours (by original row) at the same distances; only the duplicate pair's tie order may follow rows
    np.testing.assert_array_equal(d2, d1[perm])
    assert [set(perm[row]) for row in i2] == [set(row) for row in i1[perm]]


def test_lists_do_not_depend_on_the_kernel(monkeypatch):
    """Every float32 block replaced by the exact keys moved anywhere within the stated bound."""
    x = people(3)
    reference = ivf_knn(x, 7, "cosine", nlist=10, nprobe=3)
    original = KeySpace.cpu_block
    rng = np.random.default_rng(5)

    def any_kernel(self, start, stop, cols=None):
        block = original(self, start, stop, cols)
        rows, columns = np.indices(block.shape).reshape(2, -1)
        gallery = np.arange(self.num_gallery)[cols if cols is not None else slice(None)]
        exact = self.exact(rows + start, gallery[columns]).reshape(block.shape).astype(np.float64)
        bound = self.bounds.rows(start, stop)[:, None]
        moved = (exact + rng.choice([-1.0, 1.0], size=block.shape) * bound).astype(np.float32)
        outside = np.abs(moved - exact) > bound  # float32 rounding went past the edge: one step back inside
        moved[outside] = np.nextafter(moved[outside], exact[outside].astype(np.float32))
        return moved

    monkeypatch.setattr(KeySpace, "cpu_block", any_kernel)
    moved = ivf_knn(x, 7, "cosine", nlist=10, nprobe=3)
    np.testing.assert_array_equal(moved[0], reference[0])
    np.testing.assert_array_equal(moved[1], reference[1])


def test_centroids_come_from_the_row_hash_not_the_row_order():
    x = people(4)
    perm = np.random.default_rng(1).permutation(len(x))
    np.testing.assert_array_equal(row_hash(x[perm], 3), row_hash(x, 3)[perm])
    np.testing.assert_array_equal(train_centroids(x, 8, 5, 3, True), train_centroids(x[perm], 8, 5, 3, True))


def test_bad_arguments():
    x = people(5)
    with pytest.raises(FaissIndexError, match="distance metric"):
        ivf_knn(x, 3, "ip")
    with pytest.raises(FaissIndexError, match="k must be between"):
        ivf_knn(x, len(x) + 1)


def test_rows_whose_cells_hold_fewer_than_k_rows_are_searched_exactly():
    x = people(6)
    dist, idx, _ = ivf_knn(x, 40, "cosine", nlist=30, nprobe=1)  # cells of ~8 rows, k = 40
    want_d, want_i = exact_knn(x, 40, "cosine")
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(dist, want_d)
