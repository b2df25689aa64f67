"""All-rows k-NN lists through an inverted file (IVF): approximate in reach, exact and deterministic.

For sets too large for the exact all-pairs search (``indexes.knn.exact_knn``), each row searches
only the ``nprobe`` cells whose centroids are nearest to it, as an IVF index does. Within that
reach everything is exact: the k nearest rows of the probed cells by the distance core's keys,
ties by row. And the reach itself does not depend on the machine:

* centroids: k-means (Lloyd) started from the rows with the smallest seeded hash of their bits
  (not from row positions), assignments by exact nearest centroid (``exact_knn_between``, ties
  by centroid number), updates from correctly rounded sums (``indexes.group_sums``); so the
  cells are the same for any row order, BLAS kernel or block size;
* probes: each row's ``nprobe`` nearest centroids, exactly (ties by centroid number);
* search: per cell, one float32 GEMM of the rows probing it against its members, with the
  distance core's error bound. A row's k-th key is first bounded from its own cell; every entry
  that may beat the bound is kept; the kept entries within the bound of the k-th get exact keys.

Speed: the GEMMs do the work (no per-query scan), about 2·n·d·(nlist + nprobe·n/nlist) flops;
the default nlist = √(nprobe·n) minimises that.
"""

from __future__ import annotations

import math

import numpy as np

from retrieval.common.progress import ProgressCallback
from retrieval.indexes.distance import (
    BlockBounds,
    KeySpace,
    Metric,
    above,
    exact_pair_keys,
    gemm_error_coefficient,
    key_to_distance,
    metric_from_name,
    normalise,
    prepare,
    squared_norms,
)
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.group_sums import exact_group_sums
from retrieval.indexes.knn import exact_knn_between, first_k_per_row
from retrieval.indexes.arrays import nonzero_2d

DEFAULT_NPROBE = 8
TRAIN_ROWS_PER_CELL = 32
DEFAULT_ITERATIONS = 8
_HASH_CHUNK = 65_536


def default_nlist(n: int, nprobe: int) -> int:
    """√(nprobe·n): balances the centroid search (n·nlist) against the cell search (n·nprobe·n/nlist)."""
    return max(1, min(n, round(math.sqrt(nprobe * n))))


def ivf_knn(x: np.ndarray, k: int, metric: str = "cosine", nlist: int | None = None, nprobe: int | None = None,
            iterations: int = DEFAULT_ITERATIONS, seed: int = 0,
            progress: ProgressCallback | None = None) -> tuple[np.ndarray, np.ndarray, dict]:
    """(dist (n, k) float32, idx (n, k) int64, params): each row's k nearest rows (itself included)
    among the rows of its ``nprobe`` nearest cells, by (exact key, row); distances in the metric's
    units as ``indexes.knn.exact_knn`` gives them."""
    core = metric_from_name(metric)
    if not core.squared:
        raise FaissIndexError("k-NN lists through an IVF need a distance metric: cosine, euclidean or sqeuclidean")
    vectors = prepare(x, core, "vectors")
    n = len(vectors)
    if not 1 <= k <= n:
        raise FaissIndexError(f"k must be between 1 and the number of rows ({n}), got {k}")
    nprobe = max(1, nprobe or DEFAULT_NPROBE)
    nlist = max(1, min(n, nlist or default_nlist(n, nprobe)))
    nprobe = min(nprobe, nlist)
    centroids = train_centroids(vectors, nlist, iterations, seed, core.normalises, progress)
    _, probes = exact_knn_between(vectors, centroids, nprobe, metric="sqeuclidean")
    keys, idx = cell_search(vectors, probes, k, progress)
    params = {"kind": "ivf", "nlist": nlist, "nprobe": nprobe, "iterations": iterations, "seed": seed}
    return key_to_distance(keys, core), idx, params


# ----------------------------------------------------------------------------- the cells


def row_hash(vectors: np.ndarray, seed: int) -> np.ndarray:
    """(n,) uint64: Σ_j bits(x_j)·m_j mod 2^64 with seeded odd multipliers; a function of the row alone."""
    multipliers = np.random.default_rng([seed, 7]).integers(0, 2**63, vectors.shape[1], dtype=np.uint64) * 2 + 1
    out = np.empty(len(vectors), np.uint64)
    with np.errstate(over="ignore"):
        for start in range(0, len(vectors), _HASH_CHUNK):
            bits = vectors[start:start + _HASH_CHUNK].view(np.uint32).astype(np.uint64)
            out[start:start + _HASH_CHUNK] = (bits * multipliers).sum(axis=1, dtype=np.uint64)
    return out


def train_centroids(vectors: np.ndarray, nlist: int, iterations: int, seed: int, spherical: bool,
                    progress: ProgressCallback | None = None) -> np.ndarray:
    """Deterministic k-means on a sample chosen by row hash: (nlist, d) float32 centroids."""
    by_hash = np.lexsort((np.arange(len(vectors)), row_hash(vectors, seed)))
    train = vectors[by_hash[: min(len(vectors), TRAIN_ROWS_PER_CELL * nlist)]]
    centroids = train[:nlist].copy()
    for step in range(iterations):
        _, nearest = exact_knn_between(train, centroids, 1, metric="sqeuclidean")
        counts = np.bincount(nearest[:, 0], minlength=nlist)
        sums = exact_group_sums(train, nearest[:, 0], nlist)
        updated = centroids.copy()
        filled = counts > 0  # an empty cell keeps its centroid
        if spherical:
            updated[filled] = _unit(sums[filled], centroids[filled])
        else:
            updated[filled] = sums[filled] / counts[filled, None].astype(np.float32)
        if progress is not None:
            progress("ivf cells", step + 1, iterations)
        if np.array_equal(updated, centroids):
            break
        centroids = updated
    return centroids


def _unit(sums: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Rows L2-normalised (the distance core's rule); a zero sum keeps the old centroid."""
    out = fallback.copy()
    nonzero = np.any(sums != 0, axis=1)
    if nonzero.any():
        out[nonzero] = normalise(sums[nonzero])
    return out


# ----------------------------------------------------------------------------- the search


class _Cells:
    """Members of each cell (rows whose nearest centroid it is) and the rows probing it."""

    def __init__(self, probes: np.ndarray) -> None:
        n, nprobe = probes.shape
        self.count = int(probes.max(initial=-1)) + 1
        own = probes[:, 0]
        self.member_order = np.argsort(own, kind="stable")
        self.member_starts = np.searchsorted(own[self.member_order], np.arange(self.count + 1))
        flat = probes.ravel()
        self.prober_order = np.argsort(flat, kind="stable") // nprobe
        self.prober_starts = np.searchsorted(np.sort(flat, kind="stable"), np.arange(self.count + 1))

    def members(self, c: int) -> np.ndarray:
        return self.member_order[self.member_starts[c]:self.member_starts[c + 1]]

    def probers(self, c: int) -> np.ndarray:
        return self.prober_order[self.prober_starts[c]:self.prober_starts[c + 1]]


def _block(vectors: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 approximate keys of rows × cols and each row's bound."""
    space = KeySpace(vectors[rows], vectors[cols], Metric.SQEUCLIDEAN)
    return space.cpu_block(0, len(rows)), space.bounds.rows(0, len(rows))


def cell_search(vectors: np.ndarray, probes: np.ndarray, k: int,
                progress: ProgressCallback | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(keys (n, k), rows (n, k)): each row's exact k nearest among the members of its probed cells."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1, user_api="blas"):  # many small GEMMs: threads only wait on each other
        return _cell_search(vectors, probes, k, progress)


def _cell_search(vectors, probes, k, progress):
    n = len(vectors)
    cells = _Cells(probes)
    upper = _own_cell_bounds(vectors, cells, k, progress)
    rows, cols, approx = [], [], []
    for c in range(cells.count):
        members, probers = cells.members(c), cells.probers(c)
        if len(members) == 0 or len(probers) == 0:
            continue
        block, bound = _block(vectors, probers, members)
        r, m = nonzero_2d(block <= above(upper[probers], bound)[:, None])  # may reach the row's k nearest
        rows.append(probers[r])
        cols.append(members[m])
        approx.append(block[r, m])
        if progress is not None:
            progress("ivf search", c + 1, cells.count)
    rows, cols, approx = (np.concatenate(part) for part in (rows, cols, approx))
    return _exact_first_k(vectors, rows, cols, approx, n, k)


def _own_cell_bounds(vectors, cells: _Cells, k: int, progress) -> np.ndarray:
    """Per row, a value ≥ its k-th smallest key in reach: the k-th approximate key within its own
    cell plus the bound (+inf when the cell holds fewer than k rows)."""
    upper = np.full(len(vectors), np.inf)
    for c in range(cells.count):
        members = cells.members(c)
        if len(members) < k:
            continue
        block, bound = _block(vectors, members, members)
        block[np.arange(len(members)), np.arange(len(members))] = 0.0  # a row's own key is exactly 0
        upper[members] = above(np.partition(block, k - 1, axis=1)[:, k - 1], bound)
        if progress is not None:
            progress("ivf bounds", c + 1, cells.count)
    return upper


def _exact_first_k(vectors, rows, cols, approx, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's first k of the kept entries by (exact key, column): exact keys for the entries
    within twice the bound of the row's k-th approximate value. A row whose probed cells hold
    fewer than k rows (tiny cells) is searched against every row instead."""
    keys_out = np.empty((n, k), np.float32)
    idx_out = np.empty((n, k), np.int64)
    short = np.flatnonzero(np.bincount(rows, minlength=n) < k)
    if len(short):
        keys_out[short], idx_out[short] = exact_knn_between(vectors[short], vectors, k, metric="sqeuclidean")
        keep = ~np.isin(rows, short)
        rows, cols, approx = rows[keep], cols[keep], approx[keep]
    full = np.setdiff1d(np.arange(n), short)
    if len(full) == 0:
        return keys_out, idx_out
    local = np.searchsorted(full, rows)
    order = np.lexsort((approx, local))
    local, cols, approx = local[order], cols[order], approx[order]
    kth = approx[np.searchsorted(local, np.arange(len(full))) + k - 1].astype(np.float64)
    norms = np.sqrt(squared_norms(vectors).astype(np.float64)) * (1.0 + 2.0**-20)
    bounds = BlockBounds(gemm_error_coefficient(vectors.shape[1]), norms[full], float(norms.max(initial=0.0)),
                         squared=True)
    keep = approx <= above(kth, 2.0 * bounds.rows(0, len(full)))[local]  # every cell's bound is at most this one
    local, cols = local[keep], cols[keep]
    keys = exact_pair_keys(vectors, full[local], vectors, cols, Metric.SQEUCLIDEAN)
    keys_out[full], idx_out[full] = first_k_per_row(local, cols, keys, len(full), k)
    return keys_out, idx_out


