"""Per-query precision metrics from the kept ranks of the true matches (protocols.md §1).

Inputs everywhere: ``query`` (M,) and ``rank`` (M,) flat arrays grouped by query row with ranks
ascending inside a query (what ``eval.ranking`` returns), ``num_relevant`` (Q,) = R, the number
of true matches of each query. A query with R = 0 gets NaN (it is not a valid query).
"""

from __future__ import annotations

import numpy as np

AP_VARIANTS = ("standard", "market")


def match_ordinals(query: np.ndarray) -> np.ndarray:
    """j = 1, 2, ... : the ordinal of each match inside its query's group."""
    if len(query) == 0:
        return np.empty(0, np.int64)
    group_start = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
    group_sizes = np.diff(np.r_[group_start, len(query)])
    return np.arange(len(query)) - np.repeat(group_start, group_sizes) + 1


def _per_query_sum(query: np.ndarray, weights: np.ndarray, num_queries: int) -> np.ndarray:
    return np.bincount(query, weights=weights, minlength=num_queries).astype(np.float64)


def _divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    out = np.full(len(numerator), np.nan)
    ok = denominator > 0
    out[ok] = numerator[ok] / denominator[ok]
    return out


def average_precision(
    query: np.ndarray,
    rank: np.ndarray,
    num_relevant: np.ndarray,
    *,
    variant: str = "standard",
    denominator: np.ndarray | None = None,
) -> np.ndarray:
    """AP per query.

    ``standard``: (1/R) Σ_j j / r_j (non-interpolated). ``market``: the Market-1501 official
    trapezoid, (1/R) Σ_j (P_prev + j/r_j)/2 with P_prev = (j−1)/(r_j−1), or 1 when r_j = 1.
    ``denominator`` replaces R (top-k mode divides by min(R, k)).
    """
    if variant not in AP_VARIANTS:
        raise ValueError(f"unknown AP variant {variant!r}")
    j = match_ordinals(query).astype(np.float64)
    r = rank.astype(np.float64)
    precision = j / r
    if variant == "market":
        previous = np.ones_like(precision)
        later = r > 1
        previous[later] = (j[later] - 1) / (r[later] - 1)
        precision = (previous + precision) / 2
    total = _per_query_sum(query, precision, len(num_relevant))
    return _divide(total, num_relevant if denominator is None else denominator)


def inverse_negative_penalty(query: np.ndarray, rank: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """INP = R / rank of the hardest (last) true match; NaN when not every match was ranked."""
    num_queries = len(num_relevant)
    found = np.bincount(query, minlength=num_queries)
    last_rank = np.zeros(num_queries, np.int64)
    np.maximum.at(last_rank, query, rank)
    complete = (found == num_relevant) & (num_relevant > 0)
    out = np.full(num_queries, np.nan)
    out[complete] = num_relevant[complete] / last_rank[complete]
    return out


def r_precision(query: np.ndarray, rank: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """R-precision = (number of true matches within the first R) / R."""
    hits = rank <= num_relevant[query]
    return _divide(_per_query_sum(query, hits.astype(np.float64), len(num_relevant)), num_relevant)


def average_precision_at_r(query: np.ndarray, rank: np.ndarray, num_relevant: np.ndarray) -> np.ndarray:
    """MAP@R per query = (1/R) Σ_{r ≤ R} P(r)·rel(r) (A Metric Learning Reality Check)."""
    j = match_ordinals(query).astype(np.float64)
    within = rank <= num_relevant[query]
    weights = np.where(within, j / rank, 0.0)
    return _divide(_per_query_sum(query, weights, len(num_relevant)), num_relevant)
