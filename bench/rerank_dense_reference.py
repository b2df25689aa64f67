"""The dense re-ranking approach (what the public k-reciprocal code does), written from protocols.md §3.

Dense N × N float32 arrays throughout (N = queries + gallery): the original distance matrix,
the full initial ranking (every row argsorted, stable), the weight matrix V and its query
expansion, and a per-query Jaccard loop over an inverted index of V's columns. Only for the
benchmark: it is the reference approach that ``eval.rerank`` is measured against.
"""

from __future__ import annotations

import numpy as np


def dense_rerank(query: np.ndarray, gallery: np.ndarray, k1: int = 20, k2: int = 6, lambda_: float = 0.3) -> np.ndarray:
    """(Q, G) float32 re-ranked distances (squared euclidean original distance)."""
    x = np.concatenate([query, gallery]).astype(np.float32)
    n_q, n = len(query), len(query) + len(gallery)
    # 1. squared euclidean, each row divided by its maximum
    sq = np.einsum("ij,ij->i", x, x)
    dist = x @ x.T
    dist *= -2.0
    dist += sq[:, None]
    dist += sq[None, :]
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    dist /= dist.max(axis=1, keepdims=True)
    # 2. initial ranking: the whole of every row, stable
    rank = np.argsort(dist, axis=1, kind="stable").astype(np.int32)
    kh = int(round(k1 / 2))

    def reciprocal(i: int, k: int) -> np.ndarray:  # 3.
        forward = rank[i, : k + 1]
        backward = rank[forward, : k + 1]
        return forward[np.any(backward == i, axis=1)]

    v = np.zeros((n, n), dtype=np.float32)
    for i in range(n):
        r_i = reciprocal(i, k1)
        expanded = r_i
        for j in r_i:  # 4.
            r_j = reciprocal(j, kh)
            if len(np.intersect1d(r_j, r_i)) > 2.0 / 3.0 * len(r_j):
                expanded = np.append(expanded, r_j)
        expanded = np.unique(expanded)
        weight = np.exp(-dist[i, expanded].astype(np.float64))  # 5.
        v[i, expanded] = weight / weight.sum()
    if k2 > 1:  # 6.
        expanded_v = np.zeros_like(v)
        for i in range(n):
            expanded_v[i] = v[rank[i, :k2]].mean(axis=0)
        v = expanded_v
    rank = None  # frees the N × N ranking before the Jaccard pass (the closure above is done with it)
    # 7. inverted index: for every column, the rows where V is non-zero
    rows, cols = np.nonzero(v.T)
    inverted = np.split(cols, np.cumsum(np.bincount(rows, minlength=n))[:-1])
    jaccard = np.empty((n_q, n), dtype=np.float32)
    for i in range(n_q):
        minima = np.zeros(n, dtype=np.float32)
        support = np.flatnonzero(v[i])
        for j in support:
            items = inverted[j]
            minima[items] += np.minimum(v[i, j], v[items, j])
        jaccard[i] = 1.0 - minima / (2.0 - minima)
    # 8.
    return (1.0 - lambda_) * jaccard[:, n_q:] + lambda_ * dist[:n_q, n_q:]
