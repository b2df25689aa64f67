"""Metric conventions: how vectors go into faiss and how its scores come back as distances.

* ``l2``: faiss stores squared L2; we return the euclidean distance (sqrt).
* ``ip``: faiss returns inner products (larger = closer); we return ``-ip``.
* ``cosine``: gallery AND queries are L2-normalised, then inner product; we return ``1 - cos``.

Every distance we return is "smaller = closer".
"""

from __future__ import annotations

import faiss
import numpy as np

from retrieval.indexes.distance import normalise
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.factory import METRICS

# Names other parts of the project use for the same conventions (eval's metric names).
METRIC_ALIASES = {
    "l2": "l2",
    "euclidean": "l2",
    "sqeuclidean": "l2",
    "ip": "ip",
    "inner_product": "ip",
    "dot": "ip",
    "cosine": "cosine",
}


def check_metric_name(metric: str) -> str:
    if metric not in METRICS:
        raise FaissIndexError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return metric


def faiss_metric(metric: str) -> int:
    return faiss.METRIC_L2 if check_metric_name(metric) == "l2" else faiss.METRIC_INNER_PRODUCT


def prepare_vectors(vectors: np.ndarray, metric: str, *, what: str = "vectors", first_row: int = 0) -> np.ndarray:
    """float32, C-contiguous, finite; L2-normalised for cosine (a zero vector is an error)."""
    x = np.asarray(vectors)
    if x.ndim != 2:
        raise FaissIndexError(f"{what} must be a 2-D array (rows × dimension), got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=1)
    if not finite.all():
        bad = np.flatnonzero(~finite)[:5] + first_row
        raise FaissIndexError(f"{what}: rows {bad.tolist()} contain NaN or infinite values")
    if metric == "cosine":
        zero = ~np.any(x != 0, axis=1)
        if zero.any():
            bad = np.flatnonzero(zero)[:5] + first_row
            raise FaissIndexError(f"{what}: rows {bad.tolist()} are zero vectors; cosine distance is undefined")
        x = normalise(x, what)  # the distance core's deterministic normalisation
    return x


def distances_from_faiss(raw: np.ndarray, metric: str) -> np.ndarray:
    """faiss scores -> our distances (smaller = closer), float32."""
    raw = np.asarray(raw, dtype=np.float64)
    if metric == "l2":
        out = np.sqrt(np.maximum(raw, 0.0))
    elif metric == "cosine":
        out = 1.0 - raw
    else:
        out = -raw
    return out.astype(np.float32)
