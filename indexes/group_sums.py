"""Sums of float32 rows per group, correctly rounded: the same float32 for any row order or kernel.

``exact_group_sums`` returns, for every group and dimension, the float32 nearest (ties to even)
to the exact real sum of the group's float32 values. As in the distance core
(``indexes.distance``): a float64 sum in any order lies within a proven bound of the exact sum;
where the bound straddles a float32 rounding point (rare) the sum is taken exactly in integer
arithmetic. A correctly rounded result is unique, so the rows may come in any order.

Used for 1:N ``mean`` templates (protocols §6), clusters' mean similarities (§7) and the
deterministic k-means of ``indexes.knn_graph``.
"""

from __future__ import annotations

import numpy as np

from retrieval.indexes.distance import U64, round_scaled_integer, round_with_bound
from retrieval.indexes.arrays import nonzero_2d

_COLUMN_CHUNK_BYTES = 64 * 1024 * 1024  # float64 copies of a column strip of the rows


def exact_group_sums(x: np.ndarray, groups: np.ndarray, num_groups: int) -> np.ndarray:
    """(num_groups, d) float32: Σ of the rows of each group, correctly rounded (empty groups: 0).

    ``x`` (n, d) float32; ``groups`` (n,) ints in 0..num_groups-1.
    """
    x = np.asarray(x, dtype=np.float32)
    if x.ndim == 1:
        return exact_group_sums(x[:, None], groups, num_groups)[:, 0]
    groups = np.asarray(groups, dtype=np.int64)
    order = np.argsort(groups, kind="stable")
    sorted_groups = groups[order]
    present, starts, counts = np.unique(sorted_groups, return_index=True, return_counts=True)
    out = np.zeros((num_groups, x.shape[1]), dtype=np.float32)
    if len(present) == 0:
        return out
    columns = max(1, _COLUMN_CHUNK_BYTES // max(1, 8 * len(x)))
    # any summation order of m terms: |float64 sum − exact| ≤ γ_{m−1}·Σ|x| (the Σ|x| computed carries as much)
    coefficient = ((counts + 2) * U64 * (1.0 + 2.0**-20))[:, None]
    for c0 in range(0, x.shape[1], columns):
        strip = x[order, c0:c0 + columns].astype(np.float64)
        sums = np.add.reduceat(strip, starts, axis=0)
        magnitude = np.add.reduceat(np.abs(strip), starts, axis=0)
        keys, unsure = round_with_bound(sums, coefficient * magnitude)
        if unsure.any():
            exact = unsure & _float64_sum_is_exact(strip, starts, magnitude)
            keys[exact] = sums[exact].astype(np.float32)  # round half to even, as integer_sum
            unsure &= ~exact
        for g, c in zip(*nonzero_2d(unsure)):
            members = order[starts[g]:starts[g] + counts[g]]
            keys[g, c] = integer_sum(x[members, c0 + c])
        out[present, c0:c0 + columns] = keys
    return out


def _float64_sum_is_exact(strip: np.ndarray, starts: np.ndarray, magnitude: np.ndarray) -> np.ndarray:
    """Per (group, column): whether the float64 sum of the group's float32 values is their exact sum.

    A float32 v = f·2^e (frexp, f of at most 24 significant bits) is a multiple of 2^(e − 24), so
    every value of a group, and every partial sum in any order, is a multiple of 2^m with m the
    smallest such exponent. float64 holds every multiple of 2^m below 2^(m + 53) exactly, and no
    partial sum exceeds Σ|v| in size: when Σ|v| < 2^(m + 53) no addition rounds. (Σ|v| itself is
    then exact; when it is not below the limit, its float64 value is not either, rounding being
    monotone.) The common case this settles: a few float32 values whose exact sum lies exactly
    halfway between two float32 values, which no error bound can decide.
    """
    exponents = np.frexp(strip)[1].astype(np.int64) - 24
    exponents[strip == 0] = np.iinfo(np.int32).max  # zeros do not lower the grid
    lowest = np.minimum.reduceat(exponents, starts, axis=0)
    return magnitude < np.ldexp(1.0, np.minimum(lowest + 53, 1023))


def integer_sum(values: np.ndarray) -> np.float32:
    """The float32 nearest to the exact sum of float32 values (every float32 is an integer × 2^-149)."""
    total = sum(int(v) for v in np.asarray(values, dtype=np.float64) * 2.0**149)
    if total < 0:
        return np.float32(-round_scaled_integer(-total, -149))
    return round_scaled_integer(total, -149)
