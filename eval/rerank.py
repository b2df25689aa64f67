"""k-reciprocal re-ranking (Zhong, Zheng, Cao, Li, CVPR 2017), exact and sparse: O(N·k) memory.

The steps are those of protocols.md §3, over the N = Q + G items (queries and gallery together):

1. original distance D = squared euclidean (``distance="toolkit"``: that squared distance squared
   again, as the PyTorch toolkits that feed a squared distance into the reference code do), each
   row divided by its maximum over all N items: d(i, j) = D(i, j) / max_l D(i, l);
2. initial ranking: the k1 + 1 nearest items of every item (itself included), ties by row index;
3. k-reciprocal sets R(i, k1) = {j in top-(k1+1)(i) : i in top-(k1+1)(j)};
4. expansion: R(j, kh) with kh = round(k1 / 2) (Python's round: half to even, round(2.5) = 2) is
   added when |R(j, kh) ∩ R(i, k1)| > 2/3 |R(j, kh)| (tested as 3·|∩| > 2·|R|, exactly);
5. V[i, j] = exp(-d(i, j)) on R*(i), each row normalised to sum 1;
6. local query expansion: V[i] <- mean of V[j] over the k2 nearest j of i (its initial ranking);
7. Jaccard distance d_J = 1 - m / (2 - m), m = sum_j min(V[q, j], V[g, j]) over the shared support;
8. final distance (1 - λ)·d_J + λ·d for query rows × gallery columns.

Only neighbour lists (N × (k1+1)) and the sparse rows of V are kept; the Q × G result is produced
block by block (:meth:`RerankedDistances.blocks`) and never built whole unless :meth:`dense` is
called.

Exactness: every original distance that enters a set, a weight or a row maximum is the distance
core's exact key (``indexes.distance``), and the weights use a fixed-operation exponential, so V
is the same on every machine and device. The final distances of step 8 use float32 GEMM values
for d with a proven bound (λ·B / row max); the ranking code settles every comparison within it
with exact keys (``DistanceBlock``), so re-ranked ranks and metrics are exact too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import scipy.sparse as sp

from retrieval.eval.distances import DistanceBlock
from retrieval.eval.errors import EvaluationError
from retrieval.indexes.distance import KeySpace, Metric, exact_pair_keys, normalise
from retrieval.indexes.knn import exact_knn_between, exact_knn_in
from retrieval.common.progress import ProgressCallback
from retrieval.indexes.arrays import nonzero_2d


DISTANCES = ("squared", "toolkit")
METRICS = ("euclidean", "sqeuclidean", "cosine")
_TRIPLES_PER_CHUNK = 2_000_000  # bounds the Jaccard step's temporary arrays (~60 bytes each)
_BLOCK_BYTES = 64 * 1024 * 1024  # one float64 block of final distances (a few temporaries of its size)
_KEEP_QUERY_GALLERY_BYTES = 1024**3  # keep the query × gallery distances of the neighbour pass up to this


def half_k(k1: int) -> int:
    """round(k1 / 2) as the reference code computes it (round half to even: 5 -> 2, 3 -> 2, 7 -> 4)."""
    return int(round(k1 / 2))


@dataclass(frozen=True)
class NeighbourhoodGraph:
    """What re-ranking keeps of the N items: sparse V rows and each row's normalising maximum.

    ``v`` is (N, n_graph) CSR: row i is item i's (query-expanded) weight vector over the items in
    the graph (an item left out of the graph has an empty row). ``row_max`` (N,) is the largest
    original distance D of the row over the items in the graph (the step 1 normaliser).
    """

    v: sp.csr_matrix
    row_max: np.ndarray
    query_gallery: np.ndarray | None = None  # (Q, G) float32 squared distances, when kept


class RerankedDistances:
    """Re-ranked query × gallery distances, a DistanceSource (smaller = closer).

    ``exclude_from_graph`` (bool, Q + G) leaves items out of the neighbourhood graph: they are no
    one's neighbour, have no neighbourhood themselves (d_J = 1 to and from them), and the row
    maxima of step 1 are taken over the items that remain; for the remaining items the result is
    that of re-ranking the data without the excluded ones. By default every item takes part.
    """

    def __init__(
        self,
        query_vectors: np.ndarray,
        gallery_vectors: np.ndarray,
        *,
        k1: int = 20,
        k2: int = 6,
        lambda_: float = 0.3,
        distance: str = "squared",
        metric: str = "euclidean",
        exclude_from_graph: np.ndarray | None = None,
        progress: ProgressCallback | None = None,
        device: str = "cpu",
    ):
        query_vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
        gallery_vectors = np.ascontiguousarray(gallery_vectors, dtype=np.float32)
        _check_shapes(query_vectors, gallery_vectors)
        n_items = len(query_vectors) + len(gallery_vectors)
        in_graph = graph_mask(exclude_from_graph, n_items)
        check_parameters(k1, k2, lambda_, distance, metric, int(in_graph.sum()))
        if device not in ("cpu", "cuda", "auto"):
            raise EvaluationError(f"unknown device {device!r}: expected cpu, cuda or auto")
        vectors = np.concatenate([query_vectors, gallery_vectors])
        if metric == "cosine":  # 2 - 2 cos is the squared euclidean distance of unit vectors
            vectors = normalise(vectors)
        self.num_queries = len(query_vectors)
        self.num_gallery = len(gallery_vectors)
        self.k1, self.k2, self.lambda_ = int(k1), int(k2), float(lambda_)
        self.distance, self.metric, self.device = distance, metric, device
        self.in_graph = in_graph
        self._vectors = vectors
        self._progress = progress
        self._graph: NeighbourhoodGraph | None = None
        self._gallery_v: sp.csc_matrix | None = None
        self._gallery_rows: sp.csr_matrix | None = None
        self._space: KeySpace | None = None

    @classmethod
    def from_graph_rows(cls, query_vectors: np.ndarray, gallery_vectors: np.ndarray, query_rows: sp.csr_matrix,
                        gallery_rows: sp.csr_matrix, query_row_max: np.ndarray, *, lambda_: float,
                        distance: str = "squared", metric: str = "euclidean", device: str = "cpu",
                        progress: ProgressCallback | None = None) -> "RerankedDistances":
        """Re-ranked distances of the queries to some gallery items from a graph built elsewhere.

        ``query_rows`` / ``gallery_rows``: those items' rows of V (over the same graph columns),
        ``query_row_max`` the queries' normalising maxima. For one gallery shard of a distributed
        evaluation: every value equals the whole-gallery ``RerankedDistances``'s for the same pair
        (the Jaccard sums add each pair's terms in the same order), so ranks do too.
        """
        query_vectors = np.ascontiguousarray(query_vectors, dtype=np.float32)
        gallery_vectors = np.ascontiguousarray(gallery_vectors, dtype=np.float32)
        _check_shapes(query_vectors, gallery_vectors)
        if distance not in DISTANCES:
            raise EvaluationError(f"unknown re-ranking distance {distance!r}: expected squared or toolkit")
        self = cls.__new__(cls)
        vectors = np.concatenate([query_vectors, gallery_vectors])
        self._vectors = normalise(vectors) if metric == "cosine" else vectors
        self.num_queries, self.num_gallery = len(query_vectors), len(gallery_vectors)
        self.k1 = self.k2 = None
        self.lambda_, self.distance, self.metric, self.device = float(lambda_), distance, metric, device
        self.in_graph = None
        self._progress = progress
        # the query rows are all blocks() reads of the graph; the gallery's rows are kept as columns
        self._graph = NeighbourhoodGraph(v=query_rows.tocsr(), row_max=np.asarray(query_row_max, np.float64))
        self._gallery_rows = gallery_rows.tocsr()
        self._gallery_v = self._gallery_rows.tocsc()
        self._space = None
        return self

    @property
    def params(self) -> dict:
        return {"k1": self.k1, "k2": self.k2, "lambda": self.lambda_, "distance": self.distance}

    @property
    def graph(self) -> NeighbourhoodGraph:
        """The neighbourhood graph, built on first use (the expensive part: one pass over N × N)."""
        if self._graph is None:
            self._graph = self._build_graph()
            self._gallery_rows = self._graph.v[self.num_queries:]
            self._gallery_v = self._gallery_rows.tocsc()
        return self._graph

    def _build_graph(self) -> NeighbourhoodGraph:
        return build_graph(
            self._vectors, self.k1, self.k2, power=distance_power(self.distance), in_graph=self.in_graph,
            device=self.device, progress=self._progress, num_queries=self.num_queries,
        )

    def to_distance(self, values: np.ndarray) -> np.ndarray:
        return values

    @property
    def space(self) -> KeySpace:
        """Query × gallery keys (squared euclidean of the vectors the graph was built on)."""
        if self._space is None:
            queries = self._vectors[: self.num_queries]
            gallery = self._vectors[self.num_queries:]
            self._space = KeySpace(queries, gallery, Metric.SQEUCLIDEAN, self.device)
        return self._space

    def blocks(self, block_rows: int = 256) -> Iterator[DistanceBlock]:
        """Final distances (float64, within ``bound`` of the exact ones) for blocks of query rows.

        Blocks have at most ``block_rows`` rows, fewer when that many would exceed 64 MB.
        """
        block_rows = max(1, min(block_rows, _BLOCK_BYTES // (16 * self.num_gallery)))
        graph = self.graph
        for start, squared, key_bound in self._key_blocks(block_rows):
            stop = start + squared.shape[0]
            row_max = graph.row_max[start:stop]
            jaccard_part = jaccard_distance(graph.v[start:stop], self._gallery_v)
            jaccard_part *= 1.0 - self.lambda_
            final = self._final(jaccard_part, squared, row_max)
            bound = self._final_bound(key_bound, row_max)
            if self._progress is not None:
                self._progress("jaccard", stop, self.num_queries)
            yield DistanceBlock(start, final, bound, self._exact_fn(start, jaccard_part, row_max))

    def exact(self, query_rows: np.ndarray, gallery_cols: np.ndarray) -> np.ndarray:
        """Exact final distances of (query row, gallery column) pairs, without a distance block.

        The same operations as a block's exact values, pair by pair: m summed over the shared
        support in column order from 0 (as ``shared_min_sums`` adds a pair's terms), so every
        value equals the one :meth:`blocks` settles for that pair, bit for bit.
        """
        rows = np.asarray(query_rows, dtype=np.int64)
        cols = np.asarray(gallery_cols, dtype=np.int64)
        graph = self.graph
        both = graph.v[rows].minimum(self._gallery_rows[cols]).tocsr()
        both.sort_indices()
        m = np.bincount(np.repeat(np.arange(len(rows)), np.diff(both.indptr)), weights=both.data,
                        minlength=len(rows)).astype(np.float64)
        denominator = 2.0 - m
        np.divide(m, denominator, out=m)
        np.subtract(1.0, m, out=m)
        m *= 1.0 - self.lambda_
        keys = self._pair_keys(rows, cols)
        d = _normalised(keys, graph.row_max[rows], distance_power(self.distance))
        d *= self.lambda_
        d += m
        return d

    def _final(self, jaccard_part: np.ndarray, squared: np.ndarray, row_max: np.ndarray) -> np.ndarray:
        """(1 − λ)·d_J + λ·d, the same operations for a block and for exact pairs."""
        d = _normalised(squared, row_max, distance_power(self.distance))
        d *= self.lambda_
        d += jaccard_part
        return d

    def _exact_fn(self, start: int, jaccard_part: np.ndarray, row_max: np.ndarray):
        def exact(local_rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
            keys = self._pair_keys(local_rows + start, cols)
            d = _normalised(keys, row_max[local_rows], distance_power(self.distance))
            d *= self.lambda_
            d += jaccard_part[local_rows, cols]
            return d

        return exact

    def _final_bound(self, key_bound: np.ndarray, row_max: np.ndarray) -> np.ndarray:
        """Per row: how far λ·d computed from float32 keys may be from λ·d from exact keys."""
        safe = np.where(row_max > 0, row_max, 1.0)
        if distance_power(self.distance) == 2:  # |D̃² − D²| ≤ B·(2·max D̃ + B), max D̃ ≤ row max + B
            spread = key_bound * (2.0 * (row_max + key_bound) + key_bound) / (safe * safe)
        else:
            spread = key_bound / safe
        return self.lambda_ * spread * (1.0 + 2.0**-20) + 4 * 2.0**-52  # + float64 rounding of the sum

    def _pair_keys(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """The exact original distances D (step 1, before the row maximum) of query × gallery pairs (float64)."""
        return self.space.exact(rows, cols).astype(np.float64)

    def _key_blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first row, query-block × gallery D values, per-row bound on their error) for the final step."""
        for start, squared in self._squared_blocks(block_rows):
            yield start, squared, self.space.bounds.rows(start, start + squared.shape[0])

    def _squared_blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        """Query-block × gallery approximate squared distances: kept from the neighbour pass, or computed."""
        kept = self.graph.query_gallery
        if kept is not None:
            for start in range(0, self.num_queries, block_rows):
                yield start, kept[start:start + block_rows]
            return
        yield from self.space.approx_blocks(block_rows)

    def dense(self, block_rows: int = 256) -> np.ndarray:
        """The whole (Q, G) re-ranked matrix, exact (every pair settled): for small data and tests."""
        out = np.empty((self.num_queries, self.num_gallery), dtype=np.float64)
        for block in self.blocks(block_rows):
            rows, cols = nonzero_2d(np.ones(block.values.shape, dtype=bool))
            out[block.start:block.stop] = block.exact(rows, cols).reshape(block.values.shape)
        return out


def build_graph(
    vectors: np.ndarray,
    k1: int,
    k2: int,
    *,
    power: int = 1,
    in_graph: np.ndarray | None = None,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
    num_queries: int = 0,
) -> NeighbourhoodGraph:
    """Steps 1–6 for all N rows of ``vectors`` (float32), with the items of ``in_graph`` only.

    With ``num_queries`` = Q > 0 (rows 0..Q−1 are the queries), all items in the graph and the
    (Q, N − Q) block within budget, the query × gallery distances of the neighbour pass are kept
    for step 8 instead of being computed a second time.
    """
    n_items = len(vectors)
    members = np.arange(n_items) if in_graph is None else np.flatnonzero(in_graph)
    x = vectors if len(members) == n_items else vectors[members]  # no copy when all take part
    keeper = None
    if 0 < num_queries < n_items and len(members) == n_items:
        if 4 * num_queries * (n_items - num_queries) <= _KEEP_QUERY_GALLERY_BYTES:
            keeper = _QueryGalleryKeeper(num_queries, n_items)
    space = KeySpace(x, x, Metric.SQEUCLIDEAN, device)
    nearest_sq, neighbours, row_max_graph = exact_knn_in(
        space, k1 + 1, progress=progress, with_row_max=True, on_panel=None if keeper is None else keeper.take,
    )
    left_out = np.setdiff1d(np.arange(n_items), members)
    row_max_left_out = np.empty(0, np.float64)
    if len(left_out):  # their own row maxima, over the items in the graph
        _, _, row_max_left_out = exact_knn_between(vectors[left_out], x, 1, device=device, with_row_max=True)
    graph = graph_from_neighbours(
        neighbours, nearest_sq, row_max_graph, members, n_items, k1, k2, power=power,
        pair_keys=lambda rows, cols: space.exact(rows, cols).astype(np.float64), row_max_left_out=row_max_left_out,
        progress=progress,
    )
    return NeighbourhoodGraph(graph.v, graph.row_max, None if keeper is None else keeper.result())


def graph_from_neighbours(
    neighbours: np.ndarray,
    nearest_sq: np.ndarray,
    row_max_graph: np.ndarray,
    members: np.ndarray,
    n_items: int,
    k1: int,
    k2: int,
    *,
    power: int,
    pair_keys,
    row_max_left_out: np.ndarray,
    progress: ProgressCallback | None = None,
) -> NeighbourhoodGraph:
    """Steps 3–6 from the exact neighbour lists of the items in the graph (wherever they were computed).

    ``neighbours`` / ``nearest_sq`` (M, k1 + 1): each graph item's nearest graph items (indices into
    ``members``) and their exact squared distances; ``row_max_graph`` (M,) each one's largest exact
    squared distance to the graph; ``pair_keys(rows, cols)`` the exact squared distances (float64)
    of other pairs of graph items; ``row_max_left_out``: the row maxima of the items outside the
    graph, in item order. :func:`build_graph` computes these in one process, ``retrieval.distributed``
    on a cluster: the same values give the same graph.
    """
    neighbours = neighbours.astype(np.int32)
    expanded = expanded_reciprocal_sets(neighbours, k1)
    if progress is not None:
        progress("sets", 1, 1)
    weights = reciprocal_weights(None, expanded, row_max_graph, power, known=(neighbours, nearest_sq),
                                 pair_keys=pair_keys)
    expanded_v = local_query_expansion(weights, neighbours[:, :k2])
    if progress is not None:
        progress("expansion", 1, 1)
    row_max = np.zeros(n_items, dtype=np.float64)
    row_max[members] = row_max_graph
    left_out = np.setdiff1d(np.arange(n_items), members)
    row_max[left_out] = row_max_left_out
    return NeighbourhoodGraph(v=_rows_to_items(expanded_v, members, n_items), row_max=row_max)


class _QueryGalleryKeeper:
    """Copies the query rows × gallery columns out of the neighbour pass's distance panels."""

    def __init__(self, num_queries: int, n_items: int):
        self.num_queries = num_queries
        self.matrix = np.empty((num_queries, n_items - num_queries), dtype=np.float32)
        self.filled = np.zeros(num_queries, dtype=bool)

    def take(self, first_row: int, first_column: int, panel: np.ndarray) -> None:
        stop = min(first_row + panel.shape[0], self.num_queries)
        if first_row >= stop or first_column > self.num_queries:
            return
        self.matrix[first_row:stop] = panel[: stop - first_row, self.num_queries - first_column:]
        self.filled[first_row:stop] = True

    def result(self) -> np.ndarray | None:
        return self.matrix if self.filled.all() else None  # e.g. a device path that does not report


def reciprocal_mask(neighbours: np.ndarray, k: int) -> np.ndarray:
    """(N, k+1) bool: whether neighbours[i, r] (r ≤ k) has i among its own k + 1 nearest."""
    top = neighbours[:, : k + 1]
    own = np.arange(len(top), dtype=top.dtype)[:, None, None]
    mask = np.empty(top.shape, dtype=bool)
    for s in range(0, len(top), 8192):  # bounds the (rows, k+1, k+1) comparison
        mask[s:s + 8192] = (top[top[s:s + 8192]] == own[s:s + 8192]).any(axis=2)
    return mask


def expanded_reciprocal_sets(neighbours: np.ndarray, k1: int) -> sp.csr_matrix:
    """R*(i) as an (N, N) 0/1 CSR matrix with sorted column indices (steps 3 and 4)."""
    n = len(neighbours)
    kh = half_k(k1)
    sets = _membership(neighbours[:, : k1 + 1], reciprocal_mask(neighbours, k1), n)
    halves = _membership(neighbours[:, : kh + 1], reciprocal_mask(neighbours, kh), n)
    half_sizes = np.diff(halves.indptr)
    # overlap[i, j] = |R(i, k1) ∩ R(j, kh)|, needed only for candidates j in R(i, k1)
    overlap = (sets @ halves.T).multiply(sets).tocsr()
    overlap.eliminate_zeros()
    rows = np.repeat(np.arange(n), np.diff(overlap.indptr))
    accepted = 3 * overlap.data > 2 * half_sizes[overlap.indices]  # |∩| > 2/3 |R(j, kh)|, exactly
    added = sp.csr_matrix(
        (np.ones(int(accepted.sum()), dtype=np.int32), (rows[accepted], overlap.indices[accepted])),
        shape=(n, n),
    )
    union = (sets + added @ halves).tocsr()
    union.data[:] = 1
    union.sort_indices()
    return union


def reciprocal_weights(
    x: np.ndarray | None, sets: sp.csr_matrix, row_max: np.ndarray, power: int, known=None, pair_keys=None
) -> sp.csr_matrix:
    """Step 5: V[i, j] = exp(-d(i, j)) on R*(i), rows normalised to sum 1 (float64).

    ``known`` = (neighbours (N, k), their squared distances (N, k)): pairs found there are not
    recomputed (most of R*(i) lies in i's own neighbour list); the others are, from the vectors
    ``x`` or by ``pair_keys(rows, cols)`` (exact squared distances, float64) when given.
    """
    rows = np.repeat(np.arange(sets.shape[0]), np.diff(sets.indptr))
    cols = sets.indices
    squared = np.empty(len(rows), dtype=np.float64)
    found = np.zeros(len(rows), dtype=bool)
    if known is not None:
        found, values = _lookup_pairs(rows, cols, *known)
        squared[found] = values
    if pair_keys is None:
        squared[~found] = pair_squared_distances(x, rows[~found], cols[~found])
    else:
        squared[~found] = pair_keys(rows[~found], cols[~found])
    weights = exp_of_negative(_normalised(squared, row_max[rows], power))
    sums = np.bincount(rows, weights=weights, minlength=sets.shape[0])
    weights /= sums[rows]
    return sp.csr_matrix((weights, cols.copy(), sets.indptr.copy()), shape=sets.shape)


def local_query_expansion(v: sp.csr_matrix, nearest: np.ndarray) -> sp.csr_matrix:
    """Step 6: V[i] <- mean of V[j] over the k2 nearest j of i (``nearest`` is (N, k2))."""
    n, k2 = nearest.shape
    if k2 == 1:  # no expansion (protocol: k2 > 1 only)
        return v
    averaging = sp.csr_matrix(
        (np.full(n * k2, 1.0 / k2), nearest.ravel(), np.arange(0, n * k2 + 1, k2)), shape=(n, n)
    )
    out = (averaging @ v).tocsr()
    out.sort_indices()
    return out


def jaccard_distance(vq: sp.csr_matrix, vg: sp.csc_matrix) -> np.ndarray:
    """Step 7 for a block of query rows against all gallery rows: (b, G) float64.

    ``vq`` (b, C) CSR holds the query rows of V, ``vg`` (G, C) CSC the gallery rows; m is summed
    over the query's support only, gathered from the gallery columns that share it.
    """
    m = shared_min_sums(vq, vg)
    denominator = 2.0 - m
    np.divide(m, denominator, out=m)
    del denominator
    np.subtract(1.0, m, out=m)
    return m


def shared_min_sums(vq: sp.csr_matrix, vg: sp.csc_matrix) -> np.ndarray:
    """m[q, g] = sum_j min(vq[q, j], vg[g, j]) over j where both are non-zero: (b, G) float64."""
    b, n_gallery = vq.shape[0], vg.shape[0]
    out = np.zeros((b, n_gallery), dtype=np.float64)
    col_start, col_len = vg.indptr[:-1], np.diff(vg.indptr)
    entry_cum = np.concatenate(([0], np.cumsum(col_len[vq.indices])))
    row_cum = entry_cum[vq.indptr]  # (b + 1,) triples before each query row
    s = 0
    while s < b:  # chunks of query rows whose expansion stays within the triple budget
        e = int(np.searchsorted(row_cum, row_cum[s] + _TRIPLES_PER_CHUNK, side="right")) - 1
        e = min(max(e, s + 1), b)
        _accumulate_min_sums(vq, vg, s, e, col_start, col_len, out)
        s = e
    return out


def _accumulate_min_sums(vq, vg, s, e, col_start, col_len, out):
    lo, hi = vq.indptr[s], vq.indptr[e]
    entries = vq.indices[lo:hi]
    lengths = col_len[entries]
    total = int(lengths.sum())
    if total == 0:
        return
    query_row = np.repeat(np.arange(s, e), np.diff(vq.indptr[s:e + 1]))
    ends = np.cumsum(lengths)
    positions = np.arange(total) + np.repeat(col_start[entries] - (ends - lengths), lengths)
    minima = np.minimum(np.repeat(vq.data[lo:hi], lengths), vg.data[positions])
    flat = np.repeat(query_row - s, lengths) * out.shape[1] + vg.indices[positions]
    out[s:e] += np.bincount(flat, weights=minima, minlength=(e - s) * out.shape[1]).reshape(e - s, -1)


def pair_squared_distances(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """Exact squared euclidean keys of the row pairs (rows[p], cols[p]) (as float64; self pairs 0)."""
    return exact_pair_keys(x, rows, x, cols, Metric.SQEUCLIDEAN).astype(np.float64)


def exp_of_negative(d: np.ndarray) -> np.ndarray:
    """exp(−d) for d in [0, 1] from a fixed sequence of float64 operations (Horner, degree 20).

    numpy's own exp picks a SIMD implementation by CPU, and those may differ in the last bit;
    this one gives the same bits on every machine (error < 1e-16 relative on [0, 1]).
    """
    x = -np.asarray(d, dtype=np.float64)
    result = np.ones_like(x)
    for n in range(20, 0, -1):
        result *= x
        result /= n
        result += 1.0
    return result


def _lookup_pairs(rows, cols, neighbours, distances):
    """For pairs (rows[p], cols[p]): whether each is in the neighbour lists, and its distance there."""
    n = np.int64(len(neighbours))
    list_keys = (np.arange(n)[:, None] * n + neighbours).ravel()
    order = np.argsort(list_keys, kind="stable")
    sorted_keys = list_keys[order]
    keys = rows.astype(np.int64) * n + cols
    pos = np.minimum(np.searchsorted(sorted_keys, keys), len(sorted_keys) - 1)
    found = sorted_keys[pos] == keys
    return found, distances.ravel()[order[pos[found]]].astype(np.float64)


def _membership(top: np.ndarray, keep: np.ndarray, n: int) -> sp.csr_matrix:
    """(N, N) 0/1 CSR with row i holding top[i, r] where keep[i, r]."""
    rows = np.repeat(np.arange(n), keep.sum(axis=1))
    m = sp.csr_matrix((np.ones(len(rows), dtype=np.int32), (rows, top[keep])), shape=(n, n))
    m.sum_duplicates()
    return m


def _rows_to_items(v: sp.csr_matrix, members: np.ndarray, n_items: int) -> sp.csr_matrix:
    """Place the graph's rows at their item positions; items outside the graph get empty rows."""
    if len(members) == n_items:
        return v
    counts = np.zeros(n_items, dtype=np.int64)
    counts[members] = np.diff(v.indptr)
    indptr = np.concatenate(([0], np.cumsum(counts)))
    return sp.csr_matrix((v.data, v.indices, indptr), shape=(n_items, v.shape[1]))


def _normalised(squared: np.ndarray, row_max: np.ndarray, power: int) -> np.ndarray:
    """d = D / row max with D = squared (power 1) or squared² (power 2, the toolkit convention)."""
    d = np.asarray(squared, dtype=np.float64)
    if power == 2:
        d = d * d
        row_max = row_max * row_max
    safe = np.where(row_max > 0, row_max, 1.0)  # all items identical: every distance is 0
    if d.ndim == 2:
        return d / safe[:, None]
    return d / safe


def distance_power(distance: str) -> int:
    return 2 if distance == "toolkit" else 1


def graph_mask(exclude: np.ndarray | None, n_items: int) -> np.ndarray:
    if exclude is None:
        return np.ones(n_items, dtype=bool)
    exclude = np.asarray(exclude)
    if exclude.dtype != bool or exclude.shape != (n_items,):
        raise EvaluationError(
            f"exclude_from_graph must be a boolean mask over the {n_items} query + gallery items, "
            f"got dtype {exclude.dtype} and shape {exclude.shape}"
        )
    return ~exclude


def _check_shapes(queries: np.ndarray, gallery: np.ndarray) -> None:
    if queries.ndim != 2 or gallery.ndim != 2:
        raise EvaluationError("re-ranking needs 2-D query and gallery vector arrays")
    if queries.shape[1] != gallery.shape[1]:
        raise EvaluationError(
            f"query vectors have dimension {queries.shape[1]} but gallery vectors {gallery.shape[1]}"
        )
    if len(queries) == 0 or len(gallery) == 0:
        raise EvaluationError("re-ranking needs at least one query and one gallery item")


def check_parameters(k1, k2, lambda_, distance, metric, n_graph) -> None:
    if not isinstance(k1, (int, np.integer)) or k1 < 1:
        raise EvaluationError(f"k1 must be an integer ≥ 1, got {k1!r}")
    if not isinstance(k2, (int, np.integer)) or k2 < 1:
        raise EvaluationError(f"k2 must be an integer ≥ 1, got {k2!r}")
    if k2 > k1:
        raise EvaluationError(f"k2 must not exceed k1 (k2 = {k2}, k1 = {k1})")
    if k1 >= n_graph:
        raise EvaluationError(
            f"k1 must be smaller than the number of items in the re-ranking graph ({n_graph}), got {k1}"
        )
    if not 0.0 <= float(lambda_) <= 1.0:
        raise EvaluationError(f"lambda must be within [0, 1], got {lambda_!r}")
    if distance not in DISTANCES:
        raise EvaluationError(f"unknown re-ranking distance {distance!r}: expected squared or toolkit")
    if metric not in METRICS:
        raise EvaluationError(f"unknown metric {metric!r}: expected one of {', '.join(METRICS)}")
