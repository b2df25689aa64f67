"""Exact k-nearest-neighbour lists computed in row blocks (BLAS GEMM, or torch on a GPU).

Neighbours are ordered by the distance core's exact keys (``indexes.distance``), ties by row
index, so the lists equal a stable full sort of the exact distances and do not depend on the
block size, the BLAS kernel or the device. Distances are returned in the metric's units:
sqeuclidean ‖x − y‖², euclidean ‖x − y‖, cosine 1 − cos (of the L2-normalised rows).

Selection never sorts a whole row. The float32 GEMM values lie within a bound B of the exact
keys, so the true k nearest are among the entries whose approximate value is at most the
approximate k-th + 2B; those few get exact keys and are ordered by (key, row). On the CPU, the
all-rows search (:func:`exact_knn`) computes each pair once: a panel of rows against the rows
from the panel on, the transposed part feeding the later rows' running lists.
"""

from __future__ import annotations

from typing import Callable, Iterator

import numpy as np

from retrieval.indexes.distance import (
    KeySpace, Metric, above, below, float32_at_least, key_to_distance, metric_from_name,
)
from retrieval.indexes.errors import FaissIndexError
from retrieval.common.progress import ProgressCallback
from retrieval.indexes.arrays import nonzero_2d


_METRICS = (Metric.SQEUCLIDEAN, Metric.EUCLIDEAN, Metric.COSINE)
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
    distance of a row to itself is exactly 0. With ``with_row_max=True`` a third array (n,)
    float64 holds each row's largest distance over all n rows (exact, in the same units).
    ``block_rows``: rows per block (CPU: per panel). ``on_panel(first_row, first_column, panel)``
    (CPU only) sees every float32 approximate squared-distance panel (rows first_row..,
    columns first_column..n), within ``KeySpace.bounds`` of the exact keys.
    """
    metric = _check_metric(metric)
    x = _as_matrix(x, "x")
    _check(x, x, k)
    return exact_knn_in(KeySpace(x, x, metric, device), k, block_rows, progress, with_row_max, on_panel)


def exact_knn_in(space: KeySpace, k: int, block_rows: int | None = None, progress: ProgressCallback | None = None,
                 with_row_max: bool = False, on_panel=None):
    """:func:`exact_knn` over a prepared ``KeySpace`` of one set (queries and gallery the same rows)."""
    if space.gallery is not space.queries:
        raise FaissIndexError("exact_knn_in needs a KeySpace of one set of rows against itself")
    if space.device == "cuda":
        lists = _blocked_lists(space, k, block_rows, progress, self_search=True, track_max=with_row_max)
    else:
        lists = _symmetric_lists(space, k, block_rows, progress, on_panel, track_max=with_row_max)
    return _finish(space, lists, k, with_row_max, self_search=True)


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
    metric = _check_metric(metric)
    queries = _as_matrix(queries, "queries")
    base = _as_matrix(base, "base")
    _check(queries, base, k)
    space = KeySpace(queries, base, metric, device)
    lists = _blocked_lists(space, k, block_rows, progress, self_search=False, track_max=with_row_max)
    return _finish(space, lists, k, with_row_max, self_search=False)


def first_k_per_row(rows, cols, values, n_rows: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From candidate entries (each row has ≥ k), each row's first k by (value, column).

    float32 bits mapped to an unsigned integer in value order (the sign flips the rest) under the
    row make one 64-bit key (row, value) per entry, sorted by numpy's fastest sort (not stable;
    about five times faster here than a two-key stable sort); the entries that tie on it (equal
    values in one row) are then put in column order, so the result does not depend on what the
    sort did with them.
    """
    values = np.asarray(values, dtype=np.float32) + np.float32(0.0)  # -0.0 -> +0.0
    rows, cols = np.asarray(rows), np.asarray(cols)
    bits = values.view(np.uint32)
    ordered = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    key = (rows.astype(np.uint64) << np.uint64(32)) | ordered.astype(np.uint64)
    order = np.argsort(key)
    sorted_key = key[order]
    tied = sorted_key[1:] == sorted_key[:-1]
    if tied.any():  # each run of equal keys is contiguous: order it by column, in place
        at = np.flatnonzero(np.r_[tied, False] | np.r_[False, tied])
        order[at] = order[at][np.lexsort((cols[order[at]], sorted_key[at]))]
    counts = np.bincount(rows, minlength=n_rows)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))
    take = order[(first[:, None] + np.arange(k)[None, :]).ravel()]
    return values[take].reshape(n_rows, k), np.asarray(cols)[take].reshape(n_rows, k).astype(np.int64)


def stable_smallest_k(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest entries of every row of an exact block, ordered as a stable full sort would."""
    b, n = block.shape
    if k == n:
        order = np.argsort(block, axis=1, kind="stable")
        return np.take_along_axis(block, order, axis=1), order
    rows, cols = nonzero_2d(block <= _kth_smallest_upper_bound(block, k)[:, None])
    return first_k_per_row(rows, cols, block[rows, cols], b, k)


# ----------------------------------------------------------------------------- approximate lists


class _Lists:
    """Approximate candidates from one pass: the m nearest by approximate value, and the entries
    that may hold each row's maximum (approximate value within 2B of the row's largest; collected
    only when the caller asked for the row maxima)."""

    def __init__(self, approx_d, approx_i, max_rows, max_cols, max_values, row_max_approx):
        self.approx_d, self.approx_i = approx_d, approx_i
        self.max_rows, self.max_cols, self.max_values = max_rows, max_cols, max_values
        self.row_max_approx = row_max_approx


def _list_size(k: int, n_base: int) -> int:
    """Candidates kept per row: k plus a margin for the entries within the bound of the k-th."""
    return min(n_base, k + max(8, k // 2))


def _symmetric_lists(space: KeySpace, k: int, panel_rows, progress, on_panel, track_max: bool) -> _Lists:
    """All rows against all rows on the CPU, each pair's approximate value computed once (and, with
    ``track_max``, the entries that may be each row's maximum)."""
    n = space.num_queries
    m = _list_size(k, n)
    if panel_rows is None:
        panel_rows = max(m, min(2048, _BLOCK_BYTES // max(1, 8 * n)))
    window = 2.0 * space.bounds.rows(0, n)
    best_d = np.full((n, m), np.inf, dtype=np.float32)
    best_i = np.full((n, m), n, dtype=np.int64)  # placeholders sort after every real row
    row_max = np.full(n, -np.inf, dtype=np.float64)
    near_max = _NearMax()
    for s in range(0, n, panel_rows):
        e = min(s + panel_rows, n)
        panel = space.cpu_block(s, e, slice(s, None))  # rows s..e against columns s..n
        rows = np.arange(e - s)
        panel[rows, rows] = 0.0  # a row's own key is exactly 0
        if on_panel is not None:
            on_panel(s, s, panel)
        if track_max:
            np.maximum(row_max[s:e], panel.max(axis=1), out=row_max[s:e])
            near_max.add(panel, below(row_max[s:e], window[s:e]), s, s, transposed=False)
        # rows s..e: their own columns s..n, merged with what earlier panels sent (columns < s);
        # those columns come later, so an entry equal to the current m-th cannot enter
        below_mth = np.nextafter(best_d[s:e, m - 1], np.float32(-np.inf))
        r, c = _candidates(panel, m, cap=below_mth)
        _merge(best_d, best_i, s, e - s, r, c + s, panel[r, c], m)
        if e < n:  # rows e..n receive the columns s..e: the transposed part, read in place
            sent = panel[:, e - s:]  # (panel row = column of the receiver, receiver)
            if track_max:
                np.maximum(row_max[e:], sent.max(axis=0), out=row_max[e:])
                near_max.add(sent, below(row_max[e:], window[e:]), s, e, transposed=True)
            if s == 0 and sent.shape[0] > m:  # empty lists yet: a bound on each receiver's m-th
                bound = np.partition(sent, m - 1, axis=0)[m - 1]
                c, r = nonzero_2d(sent <= bound[None, :])
            else:  # columns arrive in increasing order: only entries strictly below the m-th can enter
                c, r = nonzero_2d(sent < best_d[e:, m - 1][None, :])
            _merge(best_d, best_i, e, n - e, r, c + s, sent[c, r], m)
        if progress is not None:
            progress("neighbours", e, n)
    return near_max.lists(best_d, best_i, row_max)


def _blocked_lists(space: KeySpace, k: int, block_rows, progress, self_search: bool, track_max: bool,
                   torch_device: str | None = None) -> _Lists:
    """Row blocks of the queries against the whole base: CPU BLAS blocks selected with numpy, or
    (on CUDA, or ``torch_device="cpu"`` in tests) torch blocks selected where they are computed."""
    n, n_base = space.num_queries, space.num_gallery
    m = _list_size(k, n_base)
    if block_rows is None:
        block_rows = max(1, min(4096, _BLOCK_BYTES // max(1, 4 * n_base)))
    if space.device == "cuda":
        torch_device = "cuda"
    if torch_device is None:
        blocks, select = space.approx_blocks(block_rows), _select_on_host
    else:
        blocks, select = space.torch_blocks(block_rows, torch_device), _select_on_device
    best_d = np.empty((n, m), dtype=np.float32)
    best_i = np.empty((n, m), dtype=np.int64)
    row_max = np.full(n, -np.inf, dtype=np.float64)
    near_max = _NearMax()
    for start, block in blocks:
        stop = start + block.shape[0]
        window = 2.0 * space.bounds.rows(start, stop) if track_max else None
        best_d[start:stop], best_i[start:stop], block_max, near = select(block, start, m, self_search, window)
        if track_max:
            row_max[start:stop] = block_max
            near_max.add_entries(*near)
        if progress is not None:
            progress("neighbours", stop, n)
    return near_max.lists(best_d, best_i, row_max)


def _select_on_host(block: np.ndarray, start: int, m: int, self_search: bool, window):
    """One block's m smallest per row by (value, column); with ``window``, each row's largest value
    and the (rows, cols, values) of the entries within ``window`` of it (the near-maximum ones)."""
    if self_search:
        rows = np.arange(block.shape[0])
        block[rows, start + rows] = 0.0
    r, c = _candidates(block, m)
    best_d, best_i = first_k_per_row(r, c, block[r, c], block.shape[0], m)
    if window is None:
        return best_d, best_i, None, None
    block_max = block.max(axis=1)
    r, c = nonzero_2d(block >= below(block_max, window)[:, None])
    return best_d, best_i, block_max, (r + start, c, block[r, c])


def _select_on_device(block, start: int, m: int, self_search: bool, window):
    """:func:`_select_on_host` on a torch block, where it lies: only each row's m smallest
    (``torch.topk``) and the near-maximum entries leave the device, never the whole block.

    topk's order among equal values is unspecified, which the lists allow: the m smallest values
    are the same whichever of the tied entries it returns, ``_finish`` re-sorts every entry up to
    the k-th + 2B by exact key and row, and a row whose m-th value is still inside that window is
    scanned whole.
    """
    import torch

    if self_search:
        rows = torch.arange(block.shape[0], device=block.device)
        block[rows, start + rows] = 0.0
    values, cols = torch.topk(block, m, dim=1, largest=False, sorted=True)
    if window is None:
        return values.cpu().numpy(), cols.cpu().numpy(), None, None
    block_max = block.max(dim=1).values.cpu().numpy()
    floor = torch.from_numpy(float32_at_least(below(block_max, window))).to(block.device)
    r, c = torch.nonzero(block >= floor[:, None], as_tuple=True)
    near = (r.cpu().numpy() + start, c.cpu().numpy(), block[r, c].cpu().numpy())
    return values.cpu().numpy(), cols.cpu().numpy(), block_max, near


class _NearMax:
    """Collects (row, column, value) entries that may be their row's maximum."""

    def __init__(self) -> None:
        self.rows: list[np.ndarray] = []
        self.cols: list[np.ndarray] = []
        self.values: list[np.ndarray] = []

    def add(self, panel: np.ndarray, floor: np.ndarray, first_row: int, first_col: int, transposed: bool) -> None:
        if transposed:  # panel[c, r]: column first_row + c of receiver first_col + r
            c, r = nonzero_2d(panel >= floor[None, :])
            self.add_entries(r + first_col, c + first_row, panel[c, r])
        else:
            r, c = nonzero_2d(panel >= floor[:, None])
            self.add_entries(r + first_row, c + first_col, panel[r, c])

    def add_entries(self, rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> None:
        self.rows.append(rows.astype(np.int64, copy=False))
        self.cols.append(cols.astype(np.int64, copy=False))
        self.values.append(values.astype(np.float32, copy=False))

    def lists(self, best_d, best_i, row_max) -> _Lists:
        cat = lambda parts, dtype: np.concatenate(parts) if parts else np.empty(0, dtype)  # noqa: E731
        return _Lists(best_d, best_i, cat(self.rows, np.int64), cat(self.cols, np.int64),
                      cat(self.values, np.float32), row_max)


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


# ----------------------------------------------------------------------------- exact refinement


def _finish(space: KeySpace, lists: _Lists, k: int, with_row_max: bool, self_search: bool):
    n = space.num_queries
    window = 2.0 * space.bounds.rows(0, n)
    m = lists.approx_d.shape[1]
    kth = lists.approx_d[:, k - 1].astype(np.float64)
    limit = above(kth, window)
    # a row whose m-th candidate may still belong to the top k needs the whole base
    incomplete = (lists.approx_d[:, m - 1] <= limit) & (m < space.num_gallery)
    rows, slots = nonzero_2d(lists.approx_d <= limit[:, None])
    keep = ~incomplete[rows]
    rows, cols = rows[keep], lists.approx_i[rows[keep], slots[keep]]
    keys = space.exact(rows, cols)
    dist = np.empty((n, k), dtype=np.float32)
    idx = np.empty((n, k), dtype=np.int64)
    complete = np.flatnonzero(~incomplete)
    if len(complete):
        local = np.searchsorted(complete, rows)
        dist[complete], idx[complete] = first_k_per_row(local, cols, keys, len(complete), k)
    for row in np.flatnonzero(incomplete):
        dist[row], idx[row] = _whole_row(space, row, k, float(window[row]), self_search)
    dist = key_to_distance(dist, space.metric)
    if not with_row_max:
        return dist, idx
    row_max = _exact_row_max(space, lists, window)
    return dist, idx, key_to_distance(row_max, space.metric).astype(np.float64)


def _whole_row(space: KeySpace, row: int, k: int, window: float, self_search: bool):
    """One row's exact top k by scanning its whole approximate row (many near-ties at the k-th)."""
    approx = space.cpu_block(row, row + 1)[0]
    if self_search:
        approx[row] = 0.0
    kth = np.partition(approx, k - 1)[k - 1]
    cols = np.flatnonzero(approx <= above(kth, window))
    keys = space.exact_row(row, cols)
    order = np.lexsort((cols, keys))[:k]
    return keys[order], cols[order]


def _exact_row_max(space: KeySpace, lists: _Lists, window: np.ndarray) -> np.ndarray:
    """Each row's largest exact key, from the entries whose approximation is within 2B of the max."""
    rows, cols = lists.max_rows, lists.max_cols
    keep = lists.max_values >= below(lists.row_max_approx[rows], window[rows])
    rows, cols = rows[keep], cols[keep]
    keys = space.exact(rows, cols).astype(np.float64)
    out = np.full(space.num_queries, -np.inf)
    np.maximum.at(out, rows, keys)
    return np.maximum(out, 0.0)


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
    return nonzero_2d(block <= bound[:, None])


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


def _check_metric(metric: str) -> Metric:
    try:
        parsed = metric_from_name(metric)
    except FaissIndexError:
        parsed = None
    if parsed not in _METRICS:
        raise FaissIndexError(f"unknown metric {metric!r}: expected one of {', '.join(m.value for m in _METRICS)}")
    return parsed


def _check(queries: np.ndarray, base: np.ndarray, k: int) -> None:
    if queries.shape[1] != base.shape[1]:
        raise FaissIndexError(
            f"dimension mismatch: queries have {queries.shape[1]} columns, base has {base.shape[1]}"
        )
    if not 1 <= k <= base.shape[0]:
        raise FaissIndexError(f"k must be between 1 and the number of base rows ({base.shape[0]}), got {k}")


def _as_matrix(x, name: str) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] == 0:
        raise FaissIndexError(f"{name} must be a non-empty 2-D array, got shape {x.shape}")
    return x


def row_blocks(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n, block_rows):
        yield start, min(start + block_rows, n)
