"""indexes.arrays: the fast 2-D nonzero equals numpy's."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.indexes.arrays import nonzero_2d


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 7), st.integers(0, 9), st.floats(0, 1), st.booleans(), st.integers(0, 2**32 - 1))
def test_nonzero_2d_equals_numpy(rows, cols, density, transposed, seed):
    mask = np.random.default_rng(seed).random((rows, cols)) < density
    if transposed:  # a non-contiguous view, as the k-NN search passes
        mask = mask.T
    got, want = nonzero_2d(mask), np.nonzero(mask)
    for g, w in zip(got, want):
        assert g.dtype == np.intp
        np.testing.assert_array_equal(g, w)
