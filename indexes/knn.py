"""Exact k-nearest-neighbour lists computed in row blocks (BLAS GEMM, or torch on a GPU).

Distances are squared euclidean ``|x|^2 + |y|^2 - 2 x.y`` (clamped at 0), or ``2 - 2 cos`` for
``metric="cosine"`` (the squared euclidean distance of the L2-normalised rows). The k nearest of
every row are put in the order of a *stable* full sort of that row: equal distances are ordered
by row index, so the lists are reproducible and do not depend on the block size.

Selection never sorts a whole row: a bound ≥ the row's k-th smallest value (from a partition of
an evenly spaced column sample) keeps a few hundred candidates per row, and only those are
sorted by (distance, row index). On the CPU, the all-rows search (:func:`exact_knn`) computes each
pair once: a panel of rows against the rows from the panel on, the transposed part feeding the
later rows' running lists (columns reach every row in increasing order, so a running list only
needs the candidates strictly below its current k-th distance).
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from retrieval.indexes.errors import FaissIndexError

ProgressCallback = Callable[[str, int, int], None]

_METRICS = ("sqeuclidean", "euclidean", "cosine")
_BLOCK_BYTES = 256 * 1024 * 1024  # budget for one block of distances


def exact_knn(
    x: np.ndarray,
    k: int,
    metric: str = "sqeuclidean",
    block_rows: int | None = None,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    with_row_max: bool = False,
    on_panel: Callable[[int, int, np.ndarray], None] | None = None,
):
    """The k nearest rows of every row of ``x`` among all rows (itself included).

    Returns ``(dist (n, k) float32, idx (n, k) int64)``, ascending, ties by row index; the
    distance of a row to itself is exactly 0. ``metric="euclidean"`` returns the square root of
    the squared distances (same order). With ``with_row_max=True`` a third array (n,) float64
    holds each row's largest squared distance over all n rows, found in the same pass.
    ``block_rows``: rows per block (CPU: per panel). ``on_panel(first_row, first_column, panel)``
    (CPU only) sees every float32 squared-distance panel computed (rows first_row.., columns
    first_column..n), e.g. to keep a sub-matrix that is needed later instead of recomputing it.
    """
    x = _as_matrix(x, "x")
    _check(x, x, k, metric)
    if metric == "cosine":
        x = _l2_normalise(x)
    if _resolve_device(device) == "cuda":
        dist, idx, row_max = _blocked_knn(x, x, k, block_rows, "cuda", progress, self_search=True)
    else:
        dist, idx, row_max = _symmetric_knn(x, k, block_rows, progress, on_panel)
    return _finish(dist, idx, row_max, metric, with_row_max)


def exact_knn_between(
    queries: np.ndarray,
    base: np.ndarray,
    k: int,
    metric: str = "sqeuclidean",
    block_rows: int | None = None,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    with_row_max: bool = False,
):
    """The k nearest rows of ``base`` for every row of ``queries`` (see :func:`exact_knn`)."""
    queries = _as_matrix(queries, "queries")
    base = _as_matrix(base, "base")
    _check(queries, base, k, metric)
    if metric == "cosine":
        queries, base = _l2_normalise(queries), _l2_normalise(base)
    dist, idx, row_max = _blocked_knn(
        queries, base, k, block_rows, _resolve_device(device), progress, self_search=False
    )
    return _finish(dist, idx, row_max, metric, with_row_max)


def squared_distance_blocks(
    queries: np.ndarray, base: np.ndarray, block_rows: int, device: str = "cpu", self_search: bool = False
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first row, (b, n_base) float32 squared distances)`` for row blocks of ``queries``."""
    if _resolve_device(device) == "cuda":
        for start, block in _torch_squared_blocks(queries, base, block_rows, self_search):
            yield start, block.cpu().numpy()
        return
    base_sq = _squared_norms(base)
    for start in range(0, queries.shape[0], block_rows):
        yield start, _squared_block(queries[start:start + block_rows], base, base_sq, start if self_search else None)


def stable_smallest_k(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest entries of every row, ordered as a stable full sort of the row would order them."""
    b, n = block.shape
    if k == n:
        order = np.argsort(block, axis=1, kind="stable")
        return np.take_along_axis(block, order, axis=1), order
    rows, cols = np.nonzero(block <= _kth_smallest_upper_bound(block, k)[:, None])
    return first_k_per_row(rows, cols, block[rows, cols], b, k)


def first_k_per_row(rows, cols, values, n_rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From candidate entries (each row has ≥ k), each row's first k by (value, column).

    Values are non-negative float32, so their bit patterns order like the values: one 64-bit key
    (value bits, column) per entry and one two-key sort replace a three-key sort.
    """
    values = np.asarray(values, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0
    key = (values.view(np.uint32).astype(np.uint64) << np.uint64(32)) | cols.astype(np.uint64)
    order = np.lexsort((key, rows))
    counts = np.bincount(rows, minlength=n_rows)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    take = order[(first[:, None] + np.arange(k)[None, :]).ravel()]
    return values[take].reshape(n_rows, k), cols[take].reshape(n_rows, k).astype(np.int64)


# ----------------------------------------------------------------------------- search strategies


def _blocked_knn(queries, base, k, block_rows, device, progress, self_search):
    """Row blocks of ``queries`` against all of ``base``; candidates chosen where the block lives."""
    n, n_base = queries.shape[0], base.shape[0]
    if block_rows is None:
        block_rows = max(1, min(4096, _BLOCK_BYTES // max(1, 4 * n_base)))
    dist = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    row_max = np.empty(n, dtype=np.float64)
    blocks = (
        _torch_candidate_blocks(queries, base, k, block_rows, self_search)
        if device == "cuda"
        else _numpy_candidate_blocks(queries, base, k, block_rows, self_search)
    )
    for start, b, rows, cols, values, block_max in blocks:
        stop = start + b
        dist[start:stop], idx[start:stop] = first_k_per_row(rows, cols, values, b, k)
        row_max[start:stop] = block_max
        if progress is not None:
            progress("neighbours", stop, n)
    return dist, idx, row_max


def _numpy_candidate_blocks(queries, base, k, block_rows, self_search):
    base_sq = _squared_norms(base)
    for start in range(0, queries.shape[0], block_rows):
        block = _squared_block(queries[start:start + block_rows], base, base_sq, start if self_search else None)
        rows, cols = _candidates(block, k)
        yield start, block.shape[0], rows, cols, block[rows, cols], block.max(axis=1)


def _torch_candidate_blocks(queries, base, k, block_rows, self_search):
    import torch  # lazily: indexing works without torch

    for start, block in _torch_squared_blocks(queries, base, block_rows, self_search):
        kth = torch.topk(block, k, dim=1, largest=False, sorted=True).values[:, -1]
        rows, cols = torch.nonzero(block <= kth[:, None], as_tuple=True)
        values = block[rows, cols]
        yield (
            start, block.shape[0], rows.cpu().numpy(), cols.cpu().numpy(), values.cpu().numpy(),
            block.max(dim=1).values.double().cpu().numpy(),
        )


def _symmetric_knn(x, k, panel_rows, progress, on_panel=None):
    """All rows against all rows, each pair's distance computed once (CPU)."""
    n = x.shape[0]
    if panel_rows is None:
        panel_rows = max(k, min(2048, _BLOCK_BYTES // max(1, 8 * n)))
    norms = _squared_norms(x)
    best_d = np.full((n, k), np.inf, dtype=np.float32)
    best_i = np.full((n, k), n, dtype=np.int64)  # placeholders sort after every real row
    row_max = np.zeros(n, dtype=np.float64)
    for s in range(0, n, panel_rows):
        e = min(s + panel_rows, n)
        panel = _squared_block(x[s:e], x[s:], norms[s:], 0)  # rows s..e against columns s..n
        if on_panel is not None:
            on_panel(s, s, panel)
        np.maximum(row_max[s:e], panel.max(axis=1), out=row_max[s:e])
        # rows s..e: their own columns s..n, merged with what earlier panels sent (columns < s);
        # those columns come later, so an entry equal to the current k-th cannot enter
        below_kth = np.nextafter(best_d[s:e, k - 1], np.float32(-np.inf))
        rows, cols = _candidates(panel, k, cap=below_kth)
        _merge(best_d, best_i, s, e - s, rows, cols + s, panel[rows, cols], k)
        if e < n:  # rows e..n receive the columns s..e: the transposed part, read in place
            sent = panel[:, e - s:]  # (panel row = column of the receiver, receiver)
            np.maximum(row_max[e:], sent.max(axis=0), out=row_max[e:])
            if s == 0 and sent.shape[0] > k:  # empty lists yet: a bound on each receiver's k-th
                bound = np.partition(sent, k - 1, axis=0)[k - 1]
                cols, rows = np.nonzero(sent <= bound[None, :])
            else:  # columns arrive in increasing order: only entries strictly below the k-th can enter
                cols, rows = np.nonzero(sent < best_d[e:, k - 1][None, :])
            _merge(best_d, best_i, e, n - e, rows, cols + s, sent[cols, rows], k)
        if progress is not None:
            progress("neighbours", e, n)
    return best_d, best_i, row_max


def _merge(best_d, best_i, first, n_rows, rows, cols, values, k):
    """Merge candidates (rows relative to ``first``) into the running lists best_*[first:first+n_rows]."""
    touched = np.unique(rows)
    if len(touched) == 0:
        return
    local = np.searchsorted(touched, rows)
    keep_rows = np.repeat(np.arange(len(touched)), k)
    all_rows = np.concatenate([keep_rows, local])
    all_cols = np.concatenate([best_i[first + touched].ravel(), cols])
    all_values = np.concatenate([best_d[first + touched].ravel(), values])
    d, i = first_k_per_row(all_rows, all_cols, all_values, len(touched), k)
    best_d[first + touched], best_i[first + touched] = d, i


# ----------------------------------------------------------------------------- pieces


def _candidates(block: np.ndarray, k: int, cap: np.ndarray | None = None):
    """(rows, cols) of every entry ≤ a bound on its row's k-th smallest value (row-major order).

    ``cap`` (per row) lowers the bound further when the caller knows no larger entry can count.
    """
    if k >= block.shape[1]:
        bound = np.full(block.shape[0], np.inf, dtype=np.float32)
    else:
        bound = _kth_smallest_upper_bound(block, k)
    if cap is not None:
        bound = np.minimum(bound, cap)
    return np.nonzero(block <= bound[:, None])


def _kth_smallest_upper_bound(block: np.ndarray, k: int) -> np.ndarray:
    """Per row, a value ≥ the row's k-th smallest: the k-th smallest of an evenly spaced column sample.

    Every entry ≤ the true k-th smallest is ≤ this bound, so filtering by it keeps the exact top k
    (and all its ties) while partitioning only the sample: ~k·n/sample candidates per row remain.
    """
    n = block.shape[1]
    sample = max(64 * k, 2048)
    if 2 * sample >= n:
        return np.partition(block, k - 1, axis=1)[:, k - 1]
    return np.partition(block[:, :: n // sample], k - 1, axis=1)[:, k - 1]


def _squared_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x, dtype=np.float32)


def _squared_block(q: np.ndarray, base: np.ndarray, base_sq: np.ndarray, diagonal_offset: int | None):
    """(b, n_base) float32 squared distances; with ``diagonal_offset`` o, entry (r, o + r) is a self pair: 0."""
    block = q @ base.T
    block *= -2.0
    block += _squared_norms(q)[:, None]
    block += base_sq[None, :]
    np.maximum(block, 0.0, out=block)
    if diagonal_offset is not None:
        rows = np.arange(block.shape[0])
        block[rows, diagonal_offset + rows] = 0.0
    return block


def _torch_squared_blocks(queries, base, block_rows, self_search):
    import torch

    base_t = torch.from_numpy(np.ascontiguousarray(base)).cuda()
    base_sq = (base_t * base_t).sum(dim=1)
    for start in range(0, queries.shape[0], block_rows):
        q = torch.from_numpy(np.ascontiguousarray(queries[start:start + block_rows])).cuda()
        block = torch.addmm(base_sq[None, :], q, base_t.T, alpha=-2.0)
        block += (q * q).sum(dim=1)[:, None]
        block.clamp_(min=0.0)
        if self_search:
            rows = torch.arange(block.shape[0], device=block.device)
            block[rows, start + rows] = 0.0
        yield start, block


def _finish(dist, idx, row_max, metric, with_row_max):
    if metric == "euclidean":
        np.sqrt(dist, out=dist)
    return (dist, idx, row_max) if with_row_max else (dist, idx)


def _check(queries: np.ndarray, base: np.ndarray, k: int, metric: str) -> None:
    if metric not in _METRICS:
        raise FaissIndexError(f"unknown metric {metric!r}: expected one of {', '.join(_METRICS)}")
    if queries.shape[1] != base.shape[1]:
        raise FaissIndexError(
            f"dimension mismatch: queries have {queries.shape[1]} columns, base has {base.shape[1]}"
        )
    if not 1 <= k <= base.shape[0]:
        raise FaissIndexError(f"k must be between 1 and the number of base rows ({base.shape[0]}), got {k}")


def _resolve_device(device: str) -> str:
    if device not in ("cpu", "cuda", "auto"):
        raise FaissIndexError(f"unknown device {device!r}: expected cpu, cuda or auto")
    if device == "cpu":
        return "cpu"
    try:
        import torch
        available = torch.cuda.is_available()
    except ImportError:
        available = False
    if device == "cuda" and not available:
        raise FaissIndexError("device 'cuda' was asked for but no CUDA GPU (with torch) is available")
    return "cuda" if available else "cpu"


def _as_matrix(x, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise FaissIndexError(f"{name} must be a non-empty 2-D array, got shape {x.shape}")
    return x


def _l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.ascontiguousarray(x / np.where(norms > 0, norms, 1.0), dtype=np.float32)
