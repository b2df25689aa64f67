"""Searching a faiss index: parameters that reach wrapped indexes, no -1 ids, exact and stable ties.

Conventions (also in docs/indexes.md):

* Search parameters go through ``faiss.ParameterSpace`` so that ``nprobe`` reaches an IVF wrapped
  in a pre-transform (``OPQ8,IVF16,PQ8``): setting ``index.nprobe`` on the wrapper does nothing.
* faiss returns id -1 when a query reaches fewer than k vectors (an IVF probing few lists). Such
  queries are searched again with nprobe (or efSearch) doubled until k results come back; at
  nprobe = nlist every vector is reachable, so the result always has k real rows (k larger than
  the gallery is an error before searching).
* Indexes that store the vectors themselves (Flat, IVF-Flat, HNSW-Flat) re-rank their results by
  the distance core's exact keys (``indexes.distance``), ties broken by gallery row. A flat index
  fetches k + margin candidates and widens the search until the last candidate is provably
  farther than the exact k-th (its float32 score minus the score's error bound), so flat search
  equals a brute-force top-k of the exact distances, identical on every device and kernel.
  Indexes with compressed codes (PQ) return faiss's approximate distances, ordered by
  (distance, row).
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np

from retrieval.indexes.distance import (
    Metric,
    exact_list_keys,
    gemm_error_coefficient,
    key_to_distance,
    metric_from_name,
    squared_norms,
)
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.metric import distances_from_faiss, prepare_vectors

RERANK_MIN_MARGIN = 16  # extra candidates fetched for the exact re-ranking
RERANK_BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class SearchResult:
    """Top-k of each query: distances (n, k) float32, smaller = closer; rows (n, k) int64 gallery rows.

    ``keys``: the exact ranking keys of the answers (``indexes.distance``) when the index re-ranks
    exactly (stored vectors), else None; lists from several shards merge by (key, row).
    """

    distances: np.ndarray
    rows: np.ndarray
    params: dict  # the search parameters used (nprobe / ef_search, k, backend)
    notes: tuple[str, ...] = ()  # fallbacks worth telling the user, never printed here
    keys: np.ndarray | None = None


def ivf_of(index: faiss.Index):
    """The IVF inside ``index`` (through pre-transforms, refines, id maps), or None."""
    try:
        return faiss.extract_index_ivf(index)
    except (RuntimeError, AttributeError):
        return None


def hnsw_of(index: faiss.Index):
    """The HNSW index itself when ``index`` is one, else None."""
    down = faiss.downcast_index(index)
    return down if hasattr(down, "hnsw") else None


def set_search_parameters(index: faiss.Index, nprobe: int | None, ef_search: int | None, *, setter=None) -> None:
    """Set nprobe / efSearch through faiss's parameter space (reaches wrapped IVFs; GPU via ``setter``)."""
    if setter is None:
        space = faiss.ParameterSpace()

        def setter(name: str, value: int) -> None:
            space.set_index_parameter(index, name, value)

    if nprobe is not None:
        ivf = ivf_of(index)
        if ivf is None:
            raise FaissIndexError("--nprobe applies to IVF indexes only; this index has no inverted lists")
        if not 1 <= nprobe <= ivf.nlist:
            raise FaissIndexError(f"--nprobe must be between 1 and nlist ({ivf.nlist}), got {nprobe}")
        setter("nprobe", int(nprobe))
    if ef_search is not None:
        if hnsw_of(index) is None:
            raise FaissIndexError("--ef-search applies to HNSW indexes only")
        if ef_search < 1:
            raise FaissIndexError(f"--ef-search must be at least 1, got {ef_search}")
        setter("efSearch", int(ef_search))


def check_queries(queries: np.ndarray, dim: int, metric: str) -> np.ndarray:
    """Queries as float32, normalised for cosine; another dimension is a clear error."""
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        got = q.shape[1] if q.ndim == 2 else q.shape
        raise FaissIndexError(f"queries have dimension {got} but the index was built with dimension {dim}")
    return prepare_vectors(q, metric, what="queries")


def check_k(k: int, count: int) -> None:
    if k < 1:
        raise FaissIndexError(f"--k must be at least 1, got {k}")
    if k > count:
        raise FaissIndexError(f"--k {k} is larger than the gallery ({count} rows in the index)")


def flat_vectors(index: faiss.Index) -> np.ndarray | None:
    """A read-only view of an IndexFlat's vectors (no copy), or None for other types."""
    down = faiss.downcast_index(index)
    if not isinstance(down, faiss.IndexFlat) or down.ntotal == 0:
        return None
    view = faiss.rev_swig_ptr(down.get_xb(), down.ntotal * down.d).reshape(down.ntotal, down.d)
    view.flags.writeable = False
    return view


def gather_vectors(index: faiss.Index, rows: np.ndarray, flat_view: np.ndarray | None = None) -> np.ndarray:
    """Stored vectors of ``rows`` (any shape) -> rows.shape + (d,)."""
    if flat_view is not None:
        return flat_view[rows]
    unique, inverse = np.unique(rows.ravel(), return_inverse=True)
    vectors = index.reconstruct_batch(unique.astype(np.int64))
    return vectors[inverse].reshape(rows.shape + (index.d,))


def exact_rerank(
    index: faiss.Index, queries: np.ndarray, candidates: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Re-rank candidate rows by exact key, ties by row; keep the first k (distances in the metric's units)."""
    keys, rows = exact_rerank_keys(index, queries, candidates, k, metric)
    return key_to_distance(keys, _core_metric(metric)), rows


def exact_rerank_keys(
    index: faiss.Index, queries: np.ndarray, candidates: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """(keys (n, k) float32, rows (n, k)): the candidates' first k by (exact key, row)."""
    n, c = candidates.shape
    core = _core_metric(metric)
    view = flat_vectors(index)
    block = max(1, RERANK_BLOCK_BYTES // max(1, c * index.d * 4))
    out_k = np.empty((n, k), dtype=np.float32)
    out_r = np.empty((n, k), dtype=np.int64)
    for start in range(0, n, block):
        cand = candidates[start : start + block]
        keys = exact_list_keys(queries[start : start + block], gather_vectors(index, cand, view), core)
        order = np.lexsort((cand, keys), axis=-1)[:, :k]
        out_k[start : start + block] = np.take_along_axis(keys, order, axis=1)
        out_r[start : start + block] = np.take_along_axis(cand, order, axis=1)
    return out_k, out_r


def _core_metric(metric: str) -> Metric:
    """Index metric names (l2, ip, cosine) as the distance core's metrics."""
    return metric_from_name(metric)


def merge_top_k(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each query's first ``k`` over several lists of (values, global rows), by (value, row).

    With exact keys as values (flat indexes: each part an exact top-k of its rows) the result is
    the exact top-k of all the rows together: a sharded flat index answers as one flat index.
    """
    values = np.concatenate([v for v, _ in parts], axis=1)
    rows = np.concatenate([r for _, r in parts], axis=1)
    order = np.lexsort((rows, values), axis=-1)[:, :k]
    return np.take_along_axis(values, order, axis=1), np.take_along_axis(rows, order, axis=1)


def order_approximate(raw: np.ndarray, rows: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """faiss scores -> distances, ordered by (distance, row) per query, first k kept."""
    dist = distances_from_faiss(raw, metric)
    order = np.lexsort((rows, dist), axis=-1)[:, :k]
    return np.take_along_axis(dist, order, axis=1), np.take_along_axis(rows, order, axis=1)


def fill_missing(
    index: faiss.Index,
    queries: np.ndarray,
    raw: np.ndarray,
    rows: np.ndarray,
    nprobe: int | None,
    ef_search: int | None,
    wanted_k: int | None = None,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Search again, wider, the queries that got fewer than k results (faiss id -1), on the CPU index.

    ``wanted_k`` is the k the user asked for (``rows`` may hold more candidates), for the note.
    """
    missing = np.flatnonzero((rows < 0).any(axis=1))
    if missing.size == 0:
        return raw, rows, []
    k = rows.shape[1]
    ivf = ivf_of(index)
    hnsw = hnsw_of(index)
    probe = nprobe if nprobe is not None or ivf is None else int(ivf.nprobe)
    ef = ef_search if ef_search is not None or hnsw is None else int(hnsw.hnsw.efSearch)
    start_probe, start_ef = probe, ef
    first_missing = missing.size
    while missing.size:
        if ivf is not None and probe is not None and probe < ivf.nlist:
            probe = min(ivf.nlist, probe * 2)
        elif hnsw is not None and ef is not None and ef < index.ntotal:
            ef = min(index.ntotal, max(ef * 2, k))
        else:
            raise FaissIndexError(
                f"faiss returned fewer than {k} results for {missing.size} queries even at the widest search; "
                "this index type cannot return k results here (use a flat or IVF index)"
            )
        set_search_parameters(index, probe, ef)
        r, i = index.search(queries[missing], k)
        raw[missing], rows[missing] = r, i
        missing = missing[(i < 0).any(axis=1)]
    set_search_parameters(index, start_probe, start_ef)  # leave the index as the caller set it
    what = f"nprobe {probe}" if ivf is not None and probe is not None else f"efSearch {ef}"
    note = f"{first_missing} queries reached fewer than {wanted_k or k} candidate gallery rows; searched them again with {what}"
    return raw, rows, [note]


def exact_topk(search, index, queries: np.ndarray, k: int, metric: str, first_kc: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (distances, rows) of an exact (flat) index (see :func:`exact_topk_keys`)."""
    keys, rows = exact_topk_keys(search, index, queries, k, metric, first_kc)
    return key_to_distance(keys, _core_metric(metric)), rows


def exact_topk_keys(search, index, queries: np.ndarray, k: int, metric: str, first_kc: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k of an exact (flat) index: candidates from ``search(queries, kc)``, re-ranked exactly;
    returns the exact keys and rows.

    Every row outside the kc candidates scored at least the last candidate's float32 score, so
    its exact key is at least that score's lower bound (``lowest_key_beyond``). A query whose
    k-th exact key is not strictly below that bound may miss a row (a tie broken by row, or a
    rounding) and is searched again with twice the candidates, up to the whole gallery.
    """
    count = index.ntotal
    core = _core_metric(metric)
    keys = np.empty((len(queries), k), dtype=np.float32)
    rows = np.empty((len(queries), k), dtype=np.int64)
    floor = _ScoreFloor(index, queries, core)
    todo = np.arange(len(queries))
    kc = first_kc
    while todo.size:
        raw, cand = search(queries[todo], kc)
        kk, r = exact_rerank_keys(index, queries[todo], cand, k, metric)
        keys[todo], rows[todo] = kk, r
        if kc >= count:
            break
        todo = todo[~(kk[:, -1].astype(np.float64) < floor.lowest_key_beyond(todo, raw[:, -1]))]
        kc = min(count, kc * 2)
    return keys, rows


class _ScoreFloor:
    """Lower bounds of the exact key of any row faiss scored at least as far as a given score.

    faiss's float32 scores (squared L2, or inner products) are within the distance core's GEMM
    bound of the exact values whatever kernel computed them (BLAS, SIMD loops, GPU).
    """

    def __init__(self, index: faiss.Index, queries: np.ndarray, metric: Metric) -> None:
        self.metric = metric
        stored = flat_vectors(index)
        gallery_sq = squared_norms(stored) if stored is not None else np.ones(1, np.float32)
        inflate = 1.0 + 2.0**-20
        self.gallery_max = float(np.sqrt(gallery_sq.max(initial=0.0))) * inflate
        self.gallery_min_sq = float(gallery_sq.min(initial=0.0))
        self.query_sq = squared_norms(queries).astype(np.float64)
        self.query_norm = np.sqrt(self.query_sq) * inflate
        self.c = gemm_error_coefficient(index.d)

    def lowest_key_beyond(self, todo: np.ndarray, last_scores: np.ndarray) -> np.ndarray:
        score = np.asarray(last_scores, dtype=np.float64)
        qn = self.query_norm[todo]
        if self.metric is Metric.INNER_PRODUCT:  # key = −q·g, and q·g ≤ score + bound
            return -(score + self.c * qn * self.gallery_max) - 2.0**-120
        if self.metric is Metric.COSINE:  # key = ‖q̂‖² + ‖ĝ‖² − 2 q̂·ĝ, faiss scored q̂·ĝ
            dot_high = score + self.c * qn * self.gallery_max
            return (self.query_sq[todo] + self.gallery_min_sq - 2.0 * dot_high) * (1.0 - 2.0**-40) - 2.0**-120
        bound = self.c * (qn + self.gallery_max) ** 2  # squared L2: the score approximates the key
        return np.nextafter(score - bound, -np.inf)


def candidate_count(k: int, count: int, rerank: bool, cap: int | None = None) -> int:
    """k, or k plus a margin for the exact re-ranking (so ties and float32 rounding cannot drop a row)."""
    wanted = k + max(RERANK_MIN_MARGIN, k // 4) if rerank else k
    wanted = min(count, wanted)
    return max(k, min(wanted, cap)) if cap is not None else wanted


def exact_search(gallery: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by brute force (a faiss IndexFlat + exact re-ranking): the ground truth for recall."""
    from retrieval.indexes.metric import faiss_metric

    g = prepare_vectors(gallery, metric, what="gallery")
    q = check_queries(queries, g.shape[1], metric)
    check_k(k, len(g))
    flat = faiss.IndexFlat(g.shape[1], faiss_metric(metric))
    flat.add(g)
    return exact_topk(flat.search, flat, q, k, metric, candidate_count(k, len(g), True))
