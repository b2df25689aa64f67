"""Approximate all-rows k-NN lists from an in-memory faiss IVF index (for sets too large to scan).

Every row of ``x`` searches an IVF-Flat index of all rows (itself included). The lists faiss
returns are re-ranked by the distance core's exact keys, ties by row, so a list's order and its
distances are exact; which rows reach a list is faiss's approximation (``nprobe`` of ``nlist``
cells). ``indexes.knn.exact_knn`` is the exact counterpart.
"""

from __future__ import annotations

from typing import Callable

import faiss
import numpy as np

from retrieval.indexes.distance import Metric, exact_pair_keys, key_to_distance, metric_from_name, prepare
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.factory import TRAIN_POINTS_PER_CENTROID, default_nlist, default_nprobe
from retrieval.indexes.search import fill_missing, set_search_parameters

ProgressCallback = Callable[[str, int, int], None]
_SEARCH_ROWS = 32_768  # rows searched per faiss call
_MARGIN = 8  # extra candidates fetched so that the exact re-ranking can reorder near-ties


def ivf_knn(x: np.ndarray, k: int, metric: str = "cosine", nlist: int | None = None, nprobe: int | None = None,
            seed: int = 0, progress: ProgressCallback | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(dist (n, k) float32, idx (n, k) int64, params): each row's k nearest rows found by an IVF
    index, ordered by exact key then row; distances in the metric's units (see ``indexes.knn``)."""
    core = metric_from_name(metric)
    if core is Metric.INNER_PRODUCT:
        raise FaissIndexError("k-NN lists by an IVF index need a distance metric: cosine, euclidean or sqeuclidean")
    vectors = prepare(x, core, "vectors")
    n = len(vectors)
    if not 1 <= k <= n:
        raise FaissIndexError(f"k must be between 1 and the number of rows ({n}), got {k}")
    nlist = nlist or default_nlist(n)
    nprobe = min(nlist, nprobe or default_nprobe(nlist))
    index = _trained_index(vectors, nlist, seed, progress)
    set_search_parameters(index, nprobe, None)
    wanted = min(n, k + _MARGIN)
    dist = np.empty((n, k), np.float32)
    idx = np.empty((n, k), np.int64)
    for start in range(0, n, _SEARCH_ROWS):
        block = vectors[start:start + _SEARCH_ROWS]
        raw, rows = index.search(block, wanted)
        _, rows, _ = fill_missing(index, block, raw, rows, nprobe, None)
        keys, rows = _exact_order(vectors, start, rows, k)
        dist[start:start + len(block)], idx[start:start + len(block)] = key_to_distance(keys, core), rows
        if progress is not None:
            progress("neighbours", start + len(block), n)
    return dist, idx, {"kind": "ivf", "nlist": nlist, "nprobe": nprobe, "k": k}


def _trained_index(vectors: np.ndarray, nlist: int, seed: int, progress) -> faiss.Index:
    quantizer = faiss.IndexFlatL2(vectors.shape[1])
    index = faiss.IndexIVFFlat(quantizer, vectors.shape[1], nlist, faiss.METRIC_L2)
    index.cp.seed = seed
    sample = TRAIN_POINTS_PER_CENTROID * nlist
    rng = np.random.default_rng(seed)
    train = vectors if sample >= len(vectors) else vectors[np.sort(rng.choice(len(vectors), sample, replace=False))]
    if progress is not None:
        progress("training", 0, 1)
    index.train(train)
    index.add(vectors)
    return index


def _exact_order(vectors: np.ndarray, start: int, rows: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The candidates' first k by (exact key, row)."""
    n, c = rows.shape
    owner = np.repeat(np.arange(start, start + n), c)
    keys = exact_pair_keys(vectors, owner, vectors, rows.ravel(), Metric.SQEUCLIDEAN).reshape(n, c)
    order = np.lexsort((rows, keys), axis=-1)[:, :k]
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(rows, order, axis=1)
