"""Sweep nprobe (IVF) or efSearch (HNSW): recall@k against exact search and queries per second.

recall@k of a query = |approximate top-k ∩ exact top-k| / k (row sets), averaged over queries.
The cheapest setting is the smallest nprobe / efSearch whose recall meets the target. The exact
search that gives the ground truth is a flat scan of the same queries: its queries per second
are measured too, so a result can say when no setting of the index beats a flat scan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.search import check_k, exact_search


@dataclass(frozen=True)
class TuneResult:
    parameter: str | None  # "nprobe" | "ef_search" | None (nothing to tune: exact index)
    k: int
    target_recall: float
    sweep: list[dict]  # one {parameter value, recall, qps, seconds} per setting, cheapest first
    best: dict | None  # the cheapest setting meeting the target, or None when none does
    flat_qps: float | None = None  # queries/s of an exact flat scan of the same queries (same run)

    @property
    def beats_flat(self) -> bool | None:
        """Whether the cheapest setting meeting the target is faster than a flat scan (None: not measured)."""
        if self.parameter is None or self.flat_qps is None:
            return None
        return self.best is not None and self.best["qps"] > self.flat_qps

    def to_dict(self) -> dict:
        return {
            "parameter": self.parameter,
            "k": self.k,
            "target_recall": self.target_recall,
            "sweep": self.sweep,
            "best": self.best,
            "met": self.best is not None,
            "flat_qps": self.flat_qps,
            "beats_flat": self.beats_flat,
            "recommendation": "flat" if self.beats_flat is False else None,
        }


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean over queries of |found ∩ truth| / k, both (n, k) row arrays."""
    k = truth.shape[1]
    hits = [np.intersect1d(f, t, assume_unique=True).size for f, t in zip(found, truth)]
    return float(np.mean(hits) / k) if hits else 0.0


def sweep_values(limit: int, start: int = 1) -> list[int]:
    """1, 2, 4, ... up to ``limit`` (inclusive, always ending at it)."""
    values, v = [], max(1, start)
    while v < limit:
        values.append(v)
        v *= 2
    values.append(limit)
    return values


def exact_truth(handle, queries: np.ndarray, k: int, gallery: np.ndarray | None) -> tuple[np.ndarray, float]:
    """Exact top-k rows (the index itself when exact, its stored vectors, or the given gallery) and
    the seconds the flat scan took."""
    if handle.is_exact:
        started = time.perf_counter()
        rows = handle.search(queries, k)[1]
        return rows, time.perf_counter() - started
    if gallery is None and handle.stores_vectors:
        gallery = handle.index.reconstruct_n(0, handle.count)
    if gallery is None:
        raise FaissIndexError(
            f"{handle.path}: this index stores compressed codes, so exact search needs the gallery "
            "embeddings: pass the embeddings file the index was built from (--embeddings)"
        )
    if len(gallery) != handle.count:
        raise FaissIndexError(f"the gallery given has {len(gallery)} rows, the index {handle.count}")
    started = time.perf_counter()
    rows = exact_search(gallery, queries, k, handle.metric)[1]
    return rows, time.perf_counter() - started


def tune(
    handle,
    queries: np.ndarray,
    *,
    k: int = 10,
    target_recall: float = 0.95,
    gallery: np.ndarray | None = None,
    values: list[int] | None = None,
    progress=None,
) -> TuneResult:
    """Measure recall@k and queries/s for each setting; the cheapest meeting ``target_recall`` is ``best``."""
    if not 0 < target_recall <= 1:
        raise FaissIndexError(f"--target-recall must be in (0, 1], got {target_recall}")
    check_k(k, handle.count)
    progress = progress or (lambda stage, done, total: None)
    if handle.nlist is not None:
        parameter, limit = "nprobe", handle.nlist
    elif handle.is_hnsw:
        parameter, limit = "ef_search", max(handle.count, k)
    else:
        return TuneResult(None, k, target_recall, [], None if not handle.is_exact else {"recall": 1.0})
    truth, flat_seconds = exact_truth(handle, queries, k, gallery)
    if values is None:
        values = sweep_values(limit) if parameter == "nprobe" else [v for v in sweep_values(min(limit, 4096), 16) if v >= k] or [k]
    sweep: list[dict] = []
    best = None
    for done, value in enumerate(values, 1):
        started = time.perf_counter()
        _, rows = handle.search(queries, k, **{parameter: value})
        seconds = time.perf_counter() - started
        recall = recall_at_k(rows, truth)
        entry = {parameter: value, "recall": recall, "qps": len(queries) / max(seconds, 1e-9), "seconds": seconds}
        sweep.append(entry)
        progress("tune", done, len(values))
        if recall >= target_recall:
            best = entry
            break  # larger settings only cost more
    return TuneResult(parameter, k, target_recall, sweep, best, flat_qps=len(queries) / max(flat_seconds, 1e-9))
