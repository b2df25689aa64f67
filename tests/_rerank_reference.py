"""A dense k-reciprocal re-ranking reference written straight from protocols.md §3 (eight steps,
N × N arrays, Python loops), for tests of the sparse engine (squared euclidean, and any given
original distance such as the aligned one)."""

import numpy as np


def dense_rerank(query, gallery, k1, k2, lam, toolkit=False):
    x = np.concatenate([query, gallery]).astype(np.float64)
    # 1. original distance: squared euclidean (toolkit: squared again)
    dist = ((x[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    return dense_rerank_from(dist ** 2 if toolkit else dist, len(query), k1, k2, lam)


def dense_rerank_from(dist, n_q, k1, k2, lam):
    """Steps 1–8 from the (N, N) original distances D (queries first): rows / row max over all N."""
    dist = dist / dist.max(axis=1, keepdims=True)
    # 2. initial ranking: stable sort of each row (ties by item order)
    rank = np.argsort(dist, axis=1, kind="stable")

    def reciprocal(i, k):  # 3. R(i, k) = {j in top-(k+1)(i) : i in top-(k+1)(j)}
        return [j for j in rank[i, : k + 1] if i in rank[j, : k + 1]]

    n = len(dist)
    v = np.zeros((n, n))
    for i in range(n):
        r_i = reciprocal(i, k1)
        expanded = set(r_i)
        for j in r_i:  # 4. expansion with R(j, round(k1/2))
            r_j = reciprocal(j, round(k1 / 2))
            if len(set(r_j) & set(r_i)) > 2.0 / 3.0 * len(r_j):
                expanded |= set(r_j)
        cols = sorted(expanded)
        w = np.exp(-dist[i, cols])  # 5. weights normalised per row
        v[i, cols] = w / w.sum()
    if k2 > 1:  # 6. local query expansion over the k2 nearest
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    n_g = n - n_q
    jaccard = np.empty((n_q, n_g))
    for q in range(n_q):  # 7. general min / max form
        for g in range(n_g):
            a, b = v[q], v[n_q + g]
            union = np.maximum(a, b).sum()  # 0 only for two empty sets (> k1 duplicates): d_J = 1
            jaccard[q, g] = 1.0 - (np.minimum(a, b).sum() / union if union > 0 else 0.0)
    return (1 - lam) * jaccard + lam * dist[:n_q, n_q:]  # 8.
