"""The distance core: one metric vocabulary, exact pair distances, and float32 blocks with error bounds.

Every distance the engine ranks by is defined exactly, independently of the machine:

    key(q, g) = the float32 nearest (round half to even) to the exact real value of
                ‖q − g‖²  (euclidean, sqeuclidean, cosine on the L2-normalised vectors)
                − q·g     (inner product)

computed from the float32 vectors as stored. A key does not depend on a summation order, a BLAS
kernel, a block size, a row position or a device: the same two vectors always give the same key,
and identical vectors are exact ties (ordered by row everywhere). Reported distances are derived
from keys in float32: euclidean √key, sqeuclidean key, cosine key / 2 (= 1 − cos of the
normalised vectors), inner product −q·g.

How keys are computed fast:

* ``exact_*`` functions take a float64 approximation with a proven error bound and round it to
  float32; when the bound straddles a float32 rounding point (rare: about 1e-5 of pairs), the
  value is computed exactly in integer arithmetic. Correctly rounded results are unique, so any
  accurate method gives the same key.
* ``approx_blocks`` yields float32 GEMM blocks (BLAS, or torch on CUDA with TF32 off) with a
  per-row bound B such that |approx − key| ≤ B for every entry: ranking code uses them as a
  filter and decides every comparison that falls within the bound with exact keys.
"""

from __future__ import annotations

import glob
import math
import os
import sys
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from retrieval.common.metrics import ALIASES as _ALIASES
from retrieval.common.metrics import Metric
from retrieval.common.text import few
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.arrays import nonzero_2d

U32 = 2.0**-24  # unit roundoff of float32
U64 = 2.0**-53  # unit roundoff of float64
_PAIR_CHUNK_BYTES = 4 * 1024 * 1024  # gathered float64 rows per chunk of exact pair distances
_CACHE_CHUNK_BYTES = 4 * 1024 * 1024  # the float64 rows of one chunk of pairs


def metric_from_name(name: "str | Metric") -> Metric:
    if isinstance(name, Metric):
        return name
    try:
        return _ALIASES.get(name) or Metric(name)
    except ValueError:
        names = ", ".join(m.value for m in Metric)
        raise FaissIndexError(f"unknown metric {name!r}; expected one of {names}") from None


def key_to_distance(keys: np.ndarray, metric: "str | Metric") -> np.ndarray:
    """Reported distances (float32) from ranking keys; monotone, so the order is the keys' order."""
    metric = metric_from_name(metric)
    keys = np.asarray(keys, dtype=np.float32)
    if metric is Metric.EUCLIDEAN:
        return np.sqrt(keys)
    if metric is Metric.COSINE:
        return keys * np.float32(0.5)
    return keys.copy()


def distance_to_key(distances: np.ndarray, metric: "str | Metric") -> np.ndarray:
    """The inverse of :func:`key_to_distance` on float64 thresholds (for comparisons, not ranking)."""
    metric = metric_from_name(metric)
    d = np.asarray(distances, dtype=np.float64)
    if metric is Metric.EUCLIDEAN:
        return d * d
    if metric is Metric.COSINE:
        return 2.0 * d
    return d


# --------------------------------------------------------------------------- devices

DEVICES = ("auto", "cpu", "cuda")


def cuda_driver_present() -> bool:
    """A cheap look for an NVIDIA driver, so that machines without one never pay for importing torch."""
    return os.path.exists("/proc/driver/nvidia/version") or bool(glob.glob("/dev/nvidia[0-9]*"))


def torch_cuda_available() -> bool:
    if "torch" not in sys.modules and not cuda_driver_present():
        return False
    try:
        import torch
    except ImportError:
        return False
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # a broken CUDA runtime is "no GPU" for us
        return False


def resolve_device(device: str) -> str:
    """The one device rule: ``auto`` → ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda``
    without a GPU is an error. (faiss's own GPU placement is ``indexes.placement``.)"""
    if device not in DEVICES:
        raise FaissIndexError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    available = torch_cuda_available()
    if device == "cuda" and not available:
        raise FaissIndexError("--device cuda: no CUDA GPU is available to torch on this machine; use --device cpu")
    return "cuda" if available else "cpu"


def full_precision_torch(torch) -> None:
    """Float32 products in full float32 (no TF32) wherever the engine uses torch."""
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")


# --------------------------------------------------------------------------- vectors


def as_vectors(x, what: str = "vectors") -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise FaissIndexError(f"{what} must be a 2-D array (rows × dimension), got shape {x.shape}")
    return x


def squared_norms(x: np.ndarray) -> np.ndarray:
    """Exact keys ‖x‖² (float32, correctly rounded) of every row.

    A float64 sum of the (exact) squares has a relative error ≤ (d + 1)·u64 in any order: rounded
    with that bound, and the rare rows it cannot settle computed exactly.
    """
    x = as_vectors(x)
    dim = x.shape[1]
    out = np.empty(len(x), dtype=np.float32)
    unsure = np.zeros(len(x), dtype=bool)
    chunk = max(1, _PAIR_CHUNK_BYTES // max(1, 8 * dim))
    for s in range(0, len(x), chunk):
        part = x[s:s + chunk].astype(np.float64)
        approx = np.einsum("ij,ij->i", part, part)
        out[s:s + chunk], unsure[s:s + chunk] = round_with_bound(approx, approx * ((dim + 1) * U64 * (1.0 + 2.0**-20)))
    if unsure.any():
        zero = np.zeros((1, dim), np.float32)
        rows = np.flatnonzero(unsure)
        out[rows] = exact_pair_keys(x, rows, zero, np.zeros(len(rows), np.int64), Metric.SQEUCLIDEAN)
    return out


def normalise(x: np.ndarray, what: str = "vectors") -> np.ndarray:
    """Rows divided by their L2 norm, deterministically: x_i / √(exact ‖x‖²) rounded once to float32."""
    x = as_vectors(x, what)
    norms_sq = squared_norms(x)
    zero = np.flatnonzero(norms_sq == 0)
    if len(zero):
        raise FaissIndexError(f"{what}: cosine distance is undefined for zero vectors (rows {few(zero)})")
    out = np.empty_like(x)
    chunk = max(1, _PAIR_CHUNK_BYTES // max(1, 8 * x.shape[1]))
    for s in range(0, len(x), chunk):  # in chunks: no float64 copy of the whole set
        part = x[s:s + chunk].astype(np.float64)
        part /= np.sqrt(norms_sq[s:s + chunk].astype(np.float64))[:, None]
        out[s:s + chunk] = part
    return out


def prepare(x: np.ndarray, metric: "str | Metric", what: str = "vectors") -> np.ndarray:
    """float32, C-contiguous; L2-normalised (deterministically) for cosine."""
    metric = metric_from_name(metric)
    return normalise(x, what) if metric.normalises else as_vectors(x, what)


# --------------------------------------------------------------------------- exact keys


def below(value, window) -> np.ndarray:
    """A float64 ≤ value − window, however the subtraction rounds (one step outward)."""
    return np.nextafter(np.asarray(value, np.float64) - window, -np.inf)


def above(value, window) -> np.ndarray:
    """A float64 ≥ value + window, however the addition rounds (one step outward)."""
    return np.nextafter(np.asarray(value, np.float64) + window, np.inf)


def float32_at_least(value) -> np.ndarray:
    """The smallest float32 ≥ each float64: for float32 x, ``x >= value`` ⇔ ``x >= float32_at_least(value)``."""
    return _float32_toward(value, np.float32(np.inf))


def float32_at_most(value) -> np.ndarray:
    """The largest float32 ≤ each float64: for float32 x, ``x <= value`` ⇔ ``x <= float32_at_most(value)``."""
    return _float32_toward(value, np.float32(-np.inf))


def _float32_toward(value, side: np.float32) -> np.ndarray:
    """Each float64 rounded to the nearest float32, moved one step towards ``side`` (±inf) when
    that rounding went the other way."""
    value = np.asarray(value, dtype=np.float64)
    with np.errstate(over="ignore"):  # beyond the float32 range: ±inf, still the right answer
        rounded = value.astype(np.float32)
    went_away = rounded < value if side > 0 else rounded > value
    return np.where(went_away, np.nextafter(rounded, side), rounded).astype(np.float32)


def round_with_bound(approx: np.ndarray, bound: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 keys where the interval approx ± bound rounds to one float32, and a mask of the rest.

    Round-to-nearest is monotone: when both ends round to the same float32, so does every value
    between them, the exact one included.
    """
    approx = np.asarray(approx, dtype=np.float64)
    slack = np.asarray(bound, dtype=np.float64) * (1.0 + 2.0**-20) + np.abs(approx) * 2.0**-50 + 2.0**-1000
    lo = (approx - slack).astype(np.float32)
    hi = (approx + slack).astype(np.float32)
    unsure = lo != hi
    lo += np.float32(0.0)  # −0.0 → +0.0: one zero
    return lo, unsure


def exact_pair_keys(a: np.ndarray, ia: np.ndarray, b: np.ndarray, ib: np.ndarray, metric: "str | Metric") -> np.ndarray:
    """Keys of the pairs (a[ia[p]], b[ib[p]]) (float32, exact; vectors already prepared for the metric)."""
    metric = metric_from_name(metric)
    ia = np.asarray(ia, dtype=np.int64)
    ib = np.asarray(ib, dtype=np.int64)
    out = np.empty(len(ia), dtype=np.float32)
    dim = a.shape[1]
    chunk = max(1, _PAIR_CHUNK_BYTES // max(1, 8 * dim))
    for s in range(0, len(ia), chunk):
        pa, pb = ia[s:s + chunk], ib[s:s + chunk]
        out[s:s + len(pa)] = _pair_keys_chunk(a[pa], b[pb], metric)
    return out


def exact_row_keys(q: np.ndarray, b: np.ndarray, cols: np.ndarray, metric: "str | Metric") -> np.ndarray:
    """Keys of one vector ``q`` (d,) against rows ``cols`` of ``b``."""
    metric = metric_from_name(metric)
    cols = np.asarray(cols, dtype=np.int64)
    out = np.empty(len(cols), dtype=np.float32)
    chunk = max(1, _PAIR_CHUNK_BYTES // max(1, 8 * b.shape[1]))
    for s in range(0, len(cols), chunk):
        part = b[cols[s:s + chunk]]
        out[s:s + len(part)] = _pair_keys_chunk(np.broadcast_to(q, part.shape), part, metric)
    return out


def _pair_keys_chunk(a: np.ndarray, b: np.ndarray, metric: Metric) -> np.ndarray:
    dim = a.shape[1]
    if metric.squared:
        diff = np.subtract(a, b, dtype=np.float64)
        # each term (a_i − b_i)² ≥ 0 carries ≤ 3 roundings, the sum ≤ dim − 1 more (any order)
        approx = np.einsum("ij,ij->i", diff, diff)
        bound = approx * ((dim + 3) * U64 * (1.0 + 2.0**-20))
    else:
        a64, b64 = a.astype(np.float64), b.astype(np.float64)
        approx = -np.einsum("ij,ij->i", a64, b64)
        bound = np.einsum("ij,ij->i", np.abs(a64), np.abs(b64)) * ((dim + 2) * U64 * (1.0 + 2.0**-20))
    keys, unsure = round_with_bound(approx, bound)
    for p in np.flatnonzero(unsure):
        keys[p] = precise_key(a[p], b[p], metric)
    return keys


def exact_list_keys(queries: np.ndarray, candidates: np.ndarray, metric: "str | Metric") -> np.ndarray:
    """Keys of each query (n, d) against its own candidate vectors (n, c, d): (n, c) float32, exact.

    Vectors already prepared for the metric (an index's stored vectors). A float64 inner product
    per query (BLAS, any order) and the candidates' float64 squared norms, rounded with their
    bound; the pairs it cannot settle go through :func:`exact_pair_keys`.
    """
    metric = metric_from_name(metric)
    n, c, dim = candidates.shape
    q64 = np.asarray(queries, dtype=np.float64)
    g64 = candidates.astype(np.float64)
    dots = np.matmul(g64, q64[:, :, None])[:, :, 0]
    coefficient = (dim + 8) * U64 * (1.0 + 2.0**-10)
    if metric.squared:
        q_sq = np.einsum("nd,nd->n", q64, q64)[:, None]
        g_sq = np.einsum("ncd,ncd->nc", g64, g64)
        approx = q_sq + g_sq - 2.0 * dots
        bound = coefficient * (np.sqrt(q_sq) + np.sqrt(g_sq)) ** 2 * (1.0 + 2.0**-20)
    else:
        approx = -dots
        bound = coefficient * np.sqrt(np.einsum("nd,nd->n", q64, q64))[:, None] * np.sqrt(
            np.einsum("ncd,ncd->nc", g64, g64)) * (1.0 + 2.0**-20)
    keys, unsure = round_with_bound(approx, bound)
    rows, cols = nonzero_2d(unsure)
    if len(rows):
        flat = candidates[rows, cols]
        keys[rows, cols] = exact_pair_keys(np.asarray(queries, np.float32), rows, flat, np.arange(len(rows)), metric)
    return keys


def precise_key(a: np.ndarray, b: np.ndarray, metric: Metric) -> np.float32:
    """The key of one pair from the correctly rounded float64 sum of exact float64 terms (products
    of two float32 are exact in float64); integer arithmetic in the rare case that is not enough."""
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if metric.squared:  # (a − b)² = a² − 2ab + b², every term exact
        terms = np.concatenate([a64 * a64, -2.0 * (a64 * b64), b64 * b64])
        value = math.fsum(terms.tolist())
    else:
        value = -math.fsum((a64 * b64).tolist())
    key, unsure = round_with_bound(np.array([value]), np.array([abs(value) * U64]))
    return key[0] if not unsure[0] else integer_key(a, b, metric)


def integer_key(a: np.ndarray, b: np.ndarray, metric: Metric) -> np.float32:
    """The key of one pair in exact integer arithmetic (every float32 is an integer times 2^-149)."""
    ai = [int(v) for v in np.asarray(a, np.float64) * 2.0**149]
    bi = [int(v) for v in np.asarray(b, np.float64) * 2.0**149]
    if metric.squared:
        total = sum((x - y) * (x - y) for x, y in zip(ai, bi))
        return round_scaled_integer(total, -298)
    total = sum(x * y for x, y in zip(ai, bi))
    return np.float32(-round_scaled_integer(abs(total), -298) if total > 0 else round_scaled_integer(-total, -298))


def round_scaled_integer(value: int, scale: int) -> np.float32:
    """The float32 nearest to value · 2^scale (value ≥ 0), ties to even."""
    if value == 0:
        return np.float32(0.0)
    top = value.bit_length() - 1 + scale  # exponent of the leading bit
    ulp = max(top - 23, -149)  # float32: 24 significant bits, subnormals down to 2^-149
    shift = ulp - scale
    if shift <= 0:
        return np.float32(math.ldexp(value, scale))
    q, r = divmod(value, 1 << shift)
    half = 1 << (shift - 1)
    if r > half or (r == half and q & 1):
        q += 1
    if ulp > 104:  # beyond float32's range
        return np.float32(np.inf)
    return np.float32(math.ldexp(q, ulp))


# --------------------------------------------------------------------------- float32 blocks with bounds


def gemm_error_coefficient(dim: int) -> float:
    """c with |float32 GEMM key − key| ≤ c·(‖q‖ + ‖g‖)² (squared) or c·‖q‖·‖g‖ (inner product).

    A float32 inner product of length d in any summation order (blocked, FMA, GPU) is within
    γ_d·Σ|q_i g_i| ≤ γ_d‖q‖‖g‖ of the exact one (γ_d = d·u / (1 − d·u)); the norms, the two
    additions and the final rounding of the key add a few u·(‖q‖ + ‖g‖)².
    """
    d = max(1, int(dim))
    gamma = d * U32 / (1.0 - d * U32)
    return (gamma + 8 * U32) * (1.0 + 2.0**-10)


@dataclass(frozen=True)
class BlockBounds:
    """What a consumer needs to bound a block's entries: row norms and the gallery's largest norm."""

    coefficient: float
    query_norms: np.ndarray  # (Q,) float64 upper bounds of ‖q‖
    gallery_max_norm: float
    squared: bool

    def rows(self, start: int, stop: int) -> np.ndarray:
        """(b,) per-row bound on |approx − key| for every entry of rows start..stop."""
        return self.rows_at(slice(start, stop))

    def rows_at(self, rows: "slice | np.ndarray") -> np.ndarray:
        """:meth:`rows` for any query rows (a slice or an index array)."""
        qn = self.query_norms[rows]
        if self.squared:
            return self.coefficient * (qn + self.gallery_max_norm) ** 2 + 2.0**-120
        return self.coefficient * qn * self.gallery_max_norm + 2.0**-120


class KeySpace:
    """Queries and a gallery prepared for one metric: exact keys on demand, float32 blocks with bounds."""

    def __init__(self, queries: np.ndarray, gallery: np.ndarray, metric: "str | Metric", device: str = "cpu"):
        self.metric = metric_from_name(metric)
        self.queries = prepare(queries, self.metric, "queries")
        self.gallery = self.queries if gallery is queries else prepare(gallery, self.metric, "gallery")
        if self.queries.shape[1] != self.gallery.shape[1]:
            raise FaissIndexError(
                f"dimension mismatch: queries have {self.queries.shape[1]} dimensions, gallery {self.gallery.shape[1]}"
            )
        self.device = resolve_device(device)
        self.query_sq = squared_norms(self.queries)
        self.gallery_sq = self.query_sq if self.gallery is self.queries else squared_norms(self.gallery)
        self._sq64: tuple[np.ndarray, np.ndarray] | None = None
        self._upper_norms: tuple[np.ndarray, np.ndarray] | None = None
        inflate = 1.0 + 2.0**-20
        self.bounds = BlockBounds(
            coefficient=gemm_error_coefficient(self.queries.shape[1]),
            query_norms=np.sqrt(self.query_sq.astype(np.float64)) * inflate,
            gallery_max_norm=float(np.sqrt(self.gallery_sq.max(initial=0.0))) * inflate,
            squared=self.metric.squared,
        )

    @property
    def num_queries(self) -> int:
        return len(self.queries)

    @property
    def num_gallery(self) -> int:
        return len(self.gallery)

    def exact(self, query_rows: np.ndarray, gallery_cols: np.ndarray) -> np.ndarray:
        """Exact keys of (query row, gallery column) pairs.

        First a float64 inner product (exact products, any summation order: a BLAS gemv per
        query row) with its bound, rounded to float32; the pairs whose bound straddles a
        rounding point go through :func:`exact_pair_keys` together at the end. A row paired
        with itself (queries and gallery one set) is 0 by definition.
        """
        rows = np.asarray(query_rows, dtype=np.int64)
        cols = np.asarray(gallery_cols, dtype=np.int64)
        if len(rows) == 0:
            return np.empty(0, dtype=np.float32)
        dots = np.empty(len(rows), dtype=np.float64)
        order = np.argsort(rows, kind="stable")
        sorted_rows = rows[order]
        bounds = np.flatnonzero(np.r_[True, sorted_rows[1:] != sorted_rows[:-1], True])
        chunk = max(1, _CACHE_CHUNK_BYTES // max(1, 8 * self.queries.shape[1]))
        for a, b in zip(bounds[:-1], bounds[1:]):  # one query vector against its gallery rows: a BLAS gemv
            q64 = self.queries[sorted_rows[a]].astype(np.float64)
            for s in range(a, b, chunk):
                take = order[s:min(s + chunk, b)]
                dots[take] = self.gallery[cols[take]].astype(np.float64) @ q64
        out, unsure = self._round_dots(dots, rows, cols)
        if self.gallery is self.queries and self.metric.squared:
            itself = rows == cols
            out[itself], unsure[itself] = 0.0, False
        if unsure.any():
            out[unsure] = exact_pair_keys(self.queries, rows[unsure], self.gallery, cols[unsure], self.metric)
        return out

    def _round_dots(self, dots: np.ndarray, rows: np.ndarray, cols: np.ndarray):
        """Keys from float64 inner products: ‖q‖² + ‖g‖² − 2 q·g (or −q·g), rounded with their bound."""
        q_norm, g_norm = self._norms64
        coefficient = (self.queries.shape[1] + 8) * U64 * (1.0 + 2.0**-10)
        if self.metric.squared:
            q_sq, g_sq = self._squared64
            approx = q_sq[rows] + g_sq[cols] - 2.0 * dots
            bound = coefficient * (q_norm[rows] + g_norm[cols]) ** 2
        else:
            approx = -dots
            bound = coefficient * q_norm[rows] * g_norm[cols]
        return round_with_bound(approx, bound)

    @property
    def _squared64(self) -> tuple[np.ndarray, np.ndarray]:
        """float64 squared norms (relative error ≤ (d + 1)·u64, inside the bound of ``_round_dots``)."""
        if self._sq64 is None:
            q = _float64_squared_norms(self.queries)
            g = q if self.gallery is self.queries else _float64_squared_norms(self.gallery)
            self._sq64 = (q, g)
        return self._sq64

    @property
    def _norms64(self) -> tuple[np.ndarray, np.ndarray]:
        """Upper bounds of the row norms."""
        if self._upper_norms is None:
            inflate = 1.0 + 2.0**-20
            self._upper_norms = (
                np.sqrt(self.query_sq.astype(np.float64)) * inflate,
                np.sqrt(self.gallery_sq.astype(np.float64)) * inflate,
            )
        return self._upper_norms

    def exact_row(self, query_row: int, gallery_cols: np.ndarray) -> np.ndarray:
        return exact_row_keys(self.queries[query_row], self.gallery, gallery_cols, self.metric)

    def approx_blocks(self, block_rows: int, rows: "tuple[int, int] | None" = None) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, (b, G) float32 approximate keys) for query blocks; |entry − key| ≤ bounds.rows()."""
        first, last = rows or (0, self.num_queries)
        if self.device == "cuda":
            yield from self.torch_approx_blocks(block_rows, "cuda", rows=(first, last))
            return
        for start in range(first, last, block_rows):
            stop = min(start + block_rows, last)
            yield start, self.cpu_block(start, stop)

    def cpu_block(self, start: int, stop: int, cols: "slice | None" = None,
                  rows: "np.ndarray | None" = None) -> np.ndarray:
        """(b, G) float32 approximate keys: one BLAS call, ‖q‖² + ‖g‖² entering as its initial C.

        Query rows ``start .. stop``, or the rows of the index array ``rows`` when given (their
        bound: ``bounds.rows_at(rows)``). Not clamped at 0: a value may be slightly negative,
        within the bound like any other.
        """
        from scipy.linalg import blas

        picked = slice(start, stop) if rows is None else rows
        gallery = self.gallery if cols is None else self.gallery[cols]
        queries = self.queries[picked]
        if self.metric.squared:
            gallery_sq = self.gallery_sq if cols is None else self.gallery_sq[cols]
            initial = np.add.outer(self.query_sq[picked], gallery_sq)
            alpha, beta = -2.0, 1.0
        else:
            initial = np.zeros((len(queries), len(gallery)), np.float32)
            alpha, beta = -1.0, 0.0
        # column-major view of the (b, G) result: C' = α·G·Qᵀ + β·C', no transposed copies
        out = blas.sgemm(alpha, gallery.T, queries.T, beta=beta, c=initial.T, trans_a=True, overwrite_c=1)
        return out.T

    def torch_approx_blocks(self, block_rows: int, torch_device: str = "cuda", rows=None) -> Iterator[tuple[int, np.ndarray]]:
        """The same blocks computed with torch on ``torch_device`` (the GPU path; "cpu" in tests)."""
        for start, block in self.torch_blocks(block_rows, torch_device, rows):
            yield start, block.cpu().numpy()

    def torch_blocks(self, block_rows: int, torch_device: str = "cuda", rows=None):
        """(first row, (b, G) float32 torch tensor on ``torch_device``): the blocks of
        :meth:`torch_approx_blocks` left on the device, for callers that select there."""
        import torch

        full_precision_torch(torch)
        first, last = rows or (0, self.num_queries)
        gallery = torch.from_numpy(self.gallery).to(torch_device)
        gallery_sq = torch.from_numpy(self.gallery_sq).to(torch_device)
        with torch.no_grad():
            for start in range(first, last, block_rows):
                stop = min(start + block_rows, last)
                query = torch.from_numpy(self.queries[start:stop]).to(torch_device)
                if self.metric.squared:
                    query_sq = torch.from_numpy(self.query_sq[start:stop]).to(torch_device)
                    block = torch.addmm(gallery_sq[None, :] + query_sq[:, None], query, gallery.T, alpha=-2.0)
                    block.clamp_(min=0.0)
                else:
                    block = -(query @ gallery.T)
                yield start, block

    def exact_blocks(self, block_rows: int, gallery_chunk: int = 8192) -> Iterator[tuple[int, np.ndarray]]:
        """(first row, (b, G) float32 exact keys) for every pair: a float64 GEMM, rounded with its
        bound, integer arithmetic where the bound straddles a rounding point. About twice the cost
        of the float32 blocks; used where every pair's value counts (all-pairs ROC)."""
        for start in range(0, self.num_queries, block_rows):
            yield start, self.exact_block(start, min(start + block_rows, self.num_queries), gallery_chunk)

    def exact_block(self, start: int, stop: int, gallery_chunk: int = 8192) -> np.ndarray:
        """The (stop − start, G) float32 exact keys of query rows ``start .. stop`` (see :meth:`exact_blocks`)."""
        dim = self.queries.shape[1]
        c64 = (dim + 8) * U64 * (1.0 + 2.0**-10)
        q_norm = self.bounds.query_norms
        g_norm = np.sqrt(self.gallery_sq.astype(np.float64)) * (1.0 + 2.0**-20)
        # float64 squared norms (any summation order: relative error ≤ (d + 1)·u64, in the bound)
        query_sq64, gallery_sq64 = self._squared64
        q64 = self.queries[start:stop].astype(np.float64)
        out = np.empty((stop - start, self.num_gallery), dtype=np.float32)
        for g0 in range(0, self.num_gallery, gallery_chunk):
            g1 = min(g0 + gallery_chunk, self.num_gallery)
            dots = q64 @ self.gallery[g0:g1].astype(np.float64).T
            if self.metric.squared:
                # ‖q‖² and ‖g‖² enter as their float32 keys: their rounding is part of the bound
                approx = query_sq64[start:stop, None] + gallery_sq64[None, g0:g1] - 2.0 * dots
                bound = c64 * (q_norm[start:stop, None] + g_norm[None, g0:g1]) ** 2
            else:
                approx = -dots
                bound = c64 * q_norm[start:stop, None] * g_norm[None, g0:g1]
            keys, unsure = round_with_bound(approx, bound)
            rows, cols = nonzero_2d(unsure)
            if len(rows):
                keys[rows, cols] = self.exact(rows + start, cols + g0)
            out[:, g0:g1] = keys
        return out


def _float64_squared_norms(x: np.ndarray) -> np.ndarray:
    """Σ x_i² in float64 per row, in chunks (a float64 copy of a whole gallery can be gigabytes)."""
    out = np.empty(len(x), dtype=np.float64)
    chunk = max(1, _PAIR_CHUNK_BYTES // max(1, 8 * x.shape[1]))
    for s in range(0, len(x), chunk):
        part = x[s:s + chunk].astype(np.float64)
        out[s:s + chunk] = np.einsum("ij,ij->i", part, part)
    return out
