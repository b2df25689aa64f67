"""The aligned distance of AlignedReID (Zhang et al. 2017): global + w · aligned local distance.

Each row carries P part features of d values (horizontal stripes, top to bottom; the ``parts``
column of an embeddings file, ``retrieve.parts`` = P). For a query row q and a gallery row g,
the element distance of stripe i of q and stripe j of g is the euclidean distance
‖q_i − g_j‖; the aligned local distance is the length of the shortest path from (0, 0) to
(P − 1, P − 1) through that P × P matrix, moving one step down or right at a time:

    S[0, 0] = D[0, 0];  S[i, j] = D[i, j] + min(S[i − 1, j], S[i, j − 1]);  distance = S[P − 1, P − 1]

so stripes are matched top to bottom in order, each stripe at least once (the paper's
"dynamically matching local information"). A row's local distance to itself is not 0: the
path must leave the diagonal P − 1 times.

The ranking distance ``aligned`` (``retrieve evaluate --metric aligned --local-weight w``) is
‖q − g‖ of the global embeddings + w · the aligned local distance of the parts, as AlignedReID's
code adds the two at test time (w = 1 there).

Conventions (on purpose): AlignedReID squashes element distances with tanh(d / 2) because its
local features are not normalised; ``retrieve embed`` writes each stripe L2-normalised, so
element distances already lie in [0, 2] and are used as they are.

Exact by construction, and fast: each element distance is √ of the distance core's exact key
(``indexes.distance``: ‖q_i − g_j‖² rounded once to float32, found with a float64 GEMM and its
error bound, integer arithmetic where the bound straddles a rounding point), taken in float64;
the path sums and w · local + global are float64 operations in a fixed order. So a pair gets
the same value, bit for bit, in any block, at any row position, on any CPU kernel. Ranking
and re-ranking filter with one float32 GEMM of a block's stripes (each value within a proven
bound of its exact value) and compute exact values only for the comparisons inside the bound.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from retrieval.common.progress import ProgressCallback
from retrieval.eval.distances import DistanceBlock
from retrieval.eval.errors import EvaluationError
from retrieval.eval.rerank import (
    NeighbourhoodGraph, RerankedDistances, check_parameters, distance_power, graph_from_neighbours, graph_mask,
)
from retrieval.indexes.distance import KeySpace, Metric
from retrieval.indexes.arrays import nonzero_2d

BLOCK_BYTES = 64 << 20  # one block's float64 stripe-pair keys (a few temporaries of its size)
DEFAULT_LOCAL_WEIGHT = 1.0


def as_stripes(parts: np.ndarray, num_parts: int) -> np.ndarray:
    """(n, P·d) or (n, P, d) part features as a float32 (P·n, d) matrix of stripes, stripe-major:
    row i·n + r is stripe i of row r (so one stripe of a block of rows is a contiguous range)."""
    parts = np.asarray(parts)
    if parts.ndim == 2:
        if num_parts < 1 or parts.shape[1] % num_parts:
            raise ValueError(f"{parts.shape[1]} part values per row is not a multiple of {num_parts} parts")
        parts = parts.reshape(len(parts), num_parts, parts.shape[1] // num_parts)
    if parts.ndim != 3 or parts.shape[1] != num_parts:
        raise ValueError(f"expected part features of shape (n, {num_parts}, d) or (n, {num_parts}·d), got {parts.shape}")
    return np.ascontiguousarray(parts.transpose(1, 0, 2).reshape(-1, parts.shape[2]), dtype=np.float32)


def shortest_path(element: np.ndarray) -> np.ndarray:
    """The monotone shortest path from the top-left to the bottom-right of the last two axes (P × P), in float64."""
    leading = np.moveaxis(np.asarray(element, dtype=np.float64), (-2, -1), (0, 1))
    return shortest_path_leading(leading[..., None])[..., 0]  # a trailing axis: slabs even for one P × P matrix


def shortest_path_leading(element: np.ndarray) -> np.ndarray:
    """The shortest path over the first two axes of a (P, P, ...) array, in its dtype (fastest when
    C-contiguous: every step works on a whole slab, one row of partial sums kept):

        S[0, 0] = D[0, 0];  S[i, j] = D[i, j] + min(S[i − 1, j], S[i, j − 1]);  distance = S[P − 1, P − 1]
    """
    rows, cols = element.shape[:2]
    row = np.empty((cols,) + element.shape[2:], dtype=element.dtype)
    np.cumsum(element[0], axis=0, out=row)  # the top row: sums from the left, in order
    for i in range(1, rows):
        np.add(row[0], element[i, 0], out=row[0])
        for j in range(1, cols):
            np.minimum(row[j], row[j - 1], out=row[j])
            np.add(row[j], element[i, j], out=row[j])
    return row[cols - 1]


class PartSpace:
    """Query and gallery part features prepared for aligned local distances (stripes as rows of a KeySpace)."""

    def __init__(self, query_parts: np.ndarray, gallery_parts: np.ndarray | None, num_parts: int):
        self.num_parts = int(num_parts)
        queries = as_stripes(query_parts, num_parts)
        gallery = queries if gallery_parts is None else as_stripes(gallery_parts, num_parts)
        if queries.shape[1] != gallery.shape[1]:
            raise ValueError(f"query parts have {queries.shape[1]} values per part, gallery parts {gallery.shape[1]}")
        self.space = KeySpace(queries, gallery, Metric.SQEUCLIDEAN, "cpu")
        self.num_queries = len(queries) // self.num_parts
        self.num_gallery = len(gallery) // self.num_parts

    def rows_per_block(self, budget_bytes: int = BLOCK_BYTES) -> int:
        return max(1, budget_bytes // max(1, self.num_parts**2 * self.num_gallery * 8))

    def block(self, start: int, stop: int) -> np.ndarray:
        """(stop − start, G) float64 aligned local distances of query rows ``start .. stop``."""
        p, q, g, b = self.num_parts, self.num_queries, self.num_gallery, stop - start
        element = np.empty((p, p, b, g), dtype=np.float64)  # [query stripe, gallery stripe, query, gallery]
        for i in range(p):
            keys = self.space.exact_block(i * q + start, i * q + stop).reshape(b, p, g)
            element[i] = keys.transpose(1, 0, 2)
        return shortest_path_leading(np.sqrt(element, out=element))

    def approx_block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(stop − start, G) approximate aligned local distances (float32) and a bound on each one's error.

        One float32 GEMM of the block's stripes against the gallery's (keys within the distance
        core's bound B of the exact ones): each element distance is within min(√B, B / its value)
        of the exact one, and a monotone path has 2P − 1 cells, so every path sum, the shortest
        included, moves by at most 2P − 1 times the pair's largest element error. float32
        rounding (the square roots and the path sums) is added by the caller.
        """
        p, q, g, b = self.num_parts, self.num_queries, self.num_gallery, stop - start
        stripe_rows = (np.arange(p)[:, None] * q + np.arange(start, stop)[None, :]).ravel()  # [i, query]
        keys = self.space.cpu_block(0, 0, rows=stripe_rows).reshape(p, b, p, g)  # [i, query, j, gallery]
        element = np.ascontiguousarray(keys.transpose(0, 2, 1, 3))  # [i, j, query, gallery]
        key_bound = self.space.bounds.rows_at(stripe_rows).reshape(p, b).max(axis=0)
        np.maximum(element, np.float32(0.0), out=element)
        np.sqrt(element, out=element)
        nearest = element.min(axis=(0, 1)).astype(np.float64)  # per pair: its smallest element distance
        return shortest_path_leading(element), (2 * p - 1) * root_error(key_bound[:, None], nearest)

    def pairs(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """float64 aligned local distances of (query row, gallery row) pairs: each equals its block value."""
        p, q, g = self.num_parts, self.num_queries, self.num_gallery
        stripes = np.arange(p, dtype=np.int64)
        stripe_rows = stripes[:, None, None] * q + np.asarray(rows, np.int64)[None, None, :]
        stripe_cols = stripes[None, :, None] * g + np.asarray(cols, np.int64)[None, None, :]
        stripe_rows, stripe_cols = np.broadcast_arrays(stripe_rows, stripe_cols)
        keys = self.space.exact(stripe_rows.ravel(), stripe_cols.ravel()).reshape(p, p, len(rows))
        return shortest_path_leading(np.sqrt(keys.astype(np.float64)))


def root_error(key_bound: np.ndarray, nearest: np.ndarray) -> np.ndarray:
    """A bound on |√max(k̃, 0) − √k| for approximate keys k̃ with |k̃ − k| ≤ key_bound, k ≥ 0.

    ``nearest``: √max(k̃, 0) of the key (or the smallest of the keys the bound is for).
    |√k − √k̃| = |k − k̃| / (√k + √k̃) ≤ B / √k̃, and |√x − √y| ≤ √|x − y| ≤ √B always; inflated
    for the rounding of both.
    """
    with np.errstate(divide="ignore"):
        bound = np.minimum(np.sqrt(key_bound), key_bound / nearest)
    return bound * (1.0 + 2.0**-20) + 2.0**-1000


def aligned_distances(query_parts: np.ndarray, gallery_parts: np.ndarray, num_parts: int,
                      budget_bytes: int = BLOCK_BYTES) -> np.ndarray:
    """The (b, G) float64 aligned local distances of queries against gallery rows.

    ``query_parts`` (b, P·d) and ``gallery_parts`` (G, P·d), e.g. ``Embeddings.parts`` rows, or
    (·, P, d) arrays; ``num_parts`` = P (``Embeddings.num_parts``). The same value for a pair
    whatever the block size or row order.
    """
    space = PartSpace(query_parts, gallery_parts, num_parts)
    out = np.empty((space.num_queries, space.num_gallery), dtype=np.float64)
    rows = space.rows_per_block(budget_bytes)
    for start in range(0, space.num_queries, rows):
        stop = min(start + rows, space.num_queries)
        out[start:stop] = space.block(start, stop)
    return out


class AlignedDistances:
    """The ranking distance ``aligned``: ‖q − g‖ + w · aligned local distance, a DistanceSource.

    Exact values (:meth:`values`, :meth:`exact`): the global part from the distance core's exact
    keys (√ in float64), the local part from :class:`PartSpace`. Ranking blocks (:meth:`blocks`)
    hold float32-filtered values with a proven per-row bound and settle close comparisons with
    the exact ones. On the CPU whatever the device.
    """

    metric = "aligned"

    def __init__(self, query_vectors: np.ndarray, gallery_vectors: np.ndarray | None, query_parts: np.ndarray,
                 gallery_parts: np.ndarray | None, num_parts: int, local_weight: float = DEFAULT_LOCAL_WEIGHT):
        """``gallery_vectors`` / ``gallery_parts`` None: the queries against themselves (one set)."""
        if not np.isfinite(local_weight) or local_weight < 0:
            raise EvaluationError(f"the local weight must be a finite number ≥ 0, got {local_weight}")
        query_vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
        gallery = query_vectors if gallery_vectors is None else np.ascontiguousarray(gallery_vectors, dtype=np.float32)
        self.local_weight = float(local_weight)
        self.global_space = KeySpace(query_vectors, gallery, Metric.EUCLIDEAN, "cpu")
        try:
            self.parts = PartSpace(query_parts, gallery_parts, num_parts)
        except ValueError as error:
            raise EvaluationError(f"parts: {error}") from None
        if (self.parts.num_queries, self.parts.num_gallery) != (len(query_vectors), len(gallery)):
            raise EvaluationError("the parts must have one row per embedding on each side")
        self.num_queries, self.num_gallery = len(query_vectors), len(gallery)

    @property
    def params(self) -> dict:
        return {"local_weight": self.local_weight, "parts": self.parts.num_parts}

    def to_distance(self, values: np.ndarray) -> np.ndarray:
        return values

    def rows_per_block(self, block_rows: int | None = None) -> int:
        rows = self.parts.rows_per_block()
        return rows if block_rows is None else max(1, min(block_rows, rows))

    def values(self, start: int, stop: int) -> np.ndarray:
        """(stop − start, G) exact float64 distances of query rows ``start .. stop``."""
        local = self.parts.block(start, stop)
        local *= self.local_weight
        local += np.sqrt(self.global_space.exact_block(start, stop).astype(np.float64))
        return local

    def approx_values(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(stop − start, G) approximate distances from float32 GEMMs and a bound on each one's distance
        from its exact value: the local bound × w, the global one, and rounding (every term is ≥ 0,
        so the float32 square roots and path sums of the approximation are within (2P + 1)·2⁻²⁴ of
        its local value, and the float64 operations of either side within (2P + 4)·2⁻⁵³)."""
        local32, error = self.parts.approx_block(start, stop)
        local = local32.astype(np.float64)
        global_part = self.global_space.cpu_block(start, stop).astype(np.float64)
        np.maximum(global_part, 0.0, out=global_part)
        np.sqrt(global_part, out=global_part)
        error *= self.local_weight
        error += root_error(self.global_space.bounds.rows(start, stop)[:, None], global_part)
        local *= self.local_weight
        local += global_part
        error += (local + error) * ((2 * self.parts.num_parts + 4) * 2.0**-23)
        error *= 1.0 + 2.0**-20
        return local, error

    def blocks(self, block_rows: int) -> Iterator[DistanceBlock]:
        """Approximate blocks with their bound; the ranking settles every close comparison with :meth:`exact`."""
        rows = self.rows_per_block(block_rows)
        for start in range(0, self.num_queries, rows):
            values, error = self.approx_values(start, min(start + rows, self.num_queries))
            bound = error.max(axis=1) if error.size else np.zeros(len(values))
            yield DistanceBlock(start, values, bound, lambda local_rows, cols, first=start: self.exact(local_rows + first, cols))

    def exact_blocks(self, block_rows: int) -> Iterator[DistanceBlock]:
        """Blocks of exact values for every pair (all-pairs statistics, the distance export)."""
        rows = self.rows_per_block(block_rows)
        for start in range(0, self.num_queries, rows):
            yield DistanceBlock.exact_values(start, self.values(start, min(start + rows, self.num_queries)))

    def exact(self, query_rows: np.ndarray, gallery_cols: np.ndarray) -> np.ndarray:
        """Exact float64 distances of (query row, gallery column) pairs: each equals its block value."""
        rows = np.asarray(query_rows, np.int64)
        cols = np.asarray(gallery_cols, np.int64)
        if not len(rows):
            return np.empty(0, np.float64)
        local = self.parts.pairs(rows, cols)
        local *= self.local_weight
        local += np.sqrt(self.global_space.exact(rows, cols).astype(np.float64))
        return local


def nearest_squared(space: AlignedDistances, start: int, stop: int, k: int,
                    inside: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For query rows ``start .. stop`` of ``space``: each row's largest squared distance, and for the
    rows ``inside`` (positions in the block) the columns and squared distances of their k nearest,
    in the order (squared distance, column). All from exact values.

    The float32 filter (each value within its own bound of the exact one) chooses candidates: at
    least k exact values are at most the k-th smallest upper end, so a column whose lower end
    exceeds it is not among the k nearest (nor tied with them); likewise for the farthest. Only the
    candidates get exact values.
    """
    approx, error = space.approx_values(start, stop)
    low, high = approx - error, approx + error  # each exact value lies in [low, high]
    floor = low.max(axis=1)  # the exact maximum is at least this: only columns reaching it can hold it
    rows, cols = nonzero_2d(high >= (floor - np.abs(floor) * 2.0**-40)[:, None])
    farthest = np.zeros(stop - start)
    np.maximum.at(farthest, rows, space.exact(rows + start, cols))
    ceiling = np.partition(high[inside], k - 1, axis=1)[:, k - 1]  # the k-th nearest is at most this
    rows, cols = nonzero_2d(low[inside] <= (ceiling + np.abs(ceiling) * 2.0**-40)[:, None])
    squared = space.exact(inside[rows] + start, cols)
    np.multiply(squared, squared, out=squared)
    order = np.lexsort((cols, squared, rows))  # by row, then (squared distance, column)
    rows, cols, squared = rows[order], cols[order], squared[order]
    pick = np.searchsorted(rows, np.arange(len(inside)))[:, None] + np.arange(k)[None, :]
    return farthest * farthest, cols[pick], squared[pick]


class AlignedReranked(RerankedDistances):
    """k-reciprocal re-ranking (``eval.rerank``) whose original distance is the aligned distance.

    Step 1's D is the aligned distance squared (the paper's convention: the reference code squares
    the distance it is given; ``toolkit`` squares it again). Every value that enters the graph
    or the final step is exact (the neighbour pass filters with float32 and takes exact values
    for its candidates, :func:`nearest_squared`), so the graph, the Jaccard distances and the
    final ranks are the same for any block size. An
    item's aligned distance to itself is not 0 (``AlignedDistances``), so an item need not head its
    own initial ranking: the graph takes the distances as they are, as AlignedReID's code feeds
    its query/gallery distance matrices to the reference re-ranking.
    """

    def __init__(self, query_vectors: np.ndarray, gallery_vectors: np.ndarray, query_parts: np.ndarray,
                 gallery_parts: np.ndarray, num_parts: int, *, local_weight: float = DEFAULT_LOCAL_WEIGHT,
                 k1: int = 20, k2: int = 6, lambda_: float = 0.3, distance: str = "squared",
                 exclude_from_graph: np.ndarray | None = None, progress: ProgressCallback | None = None):
        self.base = AlignedDistances(query_vectors, gallery_vectors, query_parts, gallery_parts, num_parts,
                                     local_weight)
        self.num_queries, self.num_gallery = self.base.num_queries, self.base.num_gallery
        n_items = self.num_queries + self.num_gallery
        self.in_graph = graph_mask(exclude_from_graph, n_items)
        check_parameters(k1, k2, lambda_, distance, "euclidean", int(self.in_graph.sum()))
        self.k1, self.k2, self.lambda_ = int(k1), int(k2), float(lambda_)
        self.distance, self.metric, self.device = distance, "aligned", "cpu"
        self._items = (np.concatenate([np.asarray(query_vectors, np.float32), np.asarray(gallery_vectors, np.float32)]),
                       np.concatenate([np.asarray(query_parts), np.asarray(gallery_parts)]), int(num_parts))
        self._progress = progress
        self._graph = self._gallery_v = self._gallery_rows = self._space = None

    def _build_graph(self) -> NeighbourhoodGraph:
        """Steps 1–2 from exact aligned distances (found through the float32 filter), then 3–6."""
        vectors, parts, num_parts = self._items
        members = np.flatnonzero(self.in_graph)
        n_items, k = len(vectors), self.k1 + 1
        whole = len(members) == n_items
        space = AlignedDistances(vectors, None if whole else vectors[members], parts, None if whole else parts[members],
                                 num_parts, self.base.local_weight)
        row_max = np.empty(n_items, np.float64)
        position = np.full(n_items, -1, np.int64)
        position[members] = np.arange(len(members))
        neighbours = np.empty((len(members), k), np.int64)
        nearest = np.empty((len(members), k), np.float64)
        rows = space.rows_per_block()
        for start in range(0, n_items, rows):
            stop = min(start + rows, n_items)
            inside = np.flatnonzero(self.in_graph[start:stop])
            row_max[start:stop], found, squared = nearest_squared(space, start, stop, k, inside)
            neighbours[position[start + inside]] = found
            nearest[position[start + inside]] = squared
            if self._progress is not None:
                self._progress("neighbours", stop, n_items)

        def pair_keys(graph_rows: np.ndarray, graph_cols: np.ndarray) -> np.ndarray:
            d = space.exact(members[graph_rows], graph_cols)
            return d * d

        graph = graph_from_neighbours(
            neighbours, nearest, row_max[members], members, n_items, self.k1, self.k2, power=distance_power(self.distance),
            pair_keys=pair_keys, row_max_left_out=row_max[np.setdiff1d(np.arange(n_items), members)],
            progress=self._progress,
        )
        return NeighbourhoodGraph(graph.v, graph.row_max)

    def _pair_keys(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        d = self.base.exact(rows, cols)
        return d * d

    def _key_blocks(self, block_rows: int):
        for block in self.base.exact_blocks(block_rows):  # exact values: the final step's bound is 0
            squared = block.values * block.values
            yield block.start, squared, np.zeros(len(squared))
