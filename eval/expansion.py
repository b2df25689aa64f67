"""Query expansion and database-side augmentation: vectors replaced by weighted means of their neighbours.

All vectors are first L2-normalised (x̂ = the distance core's deterministic ``normalise``); the
neighbours of a vector are its nearest gallery vectors by cosine similarity, from the engine's
exact k-NN (ties by gallery row).

* ``aqe``, average query expansion (Chum, Philbin, Sivic, Isard & Zisserman, ICCV 2007):
  q' = normalise(q̂ + Σ_{i ≤ k} ĝ_(i)), ĝ_(i) the i-th nearest gallery vector of q, k = ``qe_k``.
* ``alpha-qe``, α-weighted query expansion (Radenović, Tolias & Chum, TPAMI 2019):
  q' = normalise(q̂ + Σ_{i ≤ k} w_i ĝ_(i)), w_i = max(cos(q̂, ĝ_(i)), 0)^α, α = ``qe_alpha``
  (the query's own weight is cos(q̂, q̂)^α = 1). With α = 0 the weights are all 1: ``aqe``.
* ``dba``, database-side augmentation (Arandjelović & Zisserman, CVPR 2012; the weighted form of
  Radenović et al.): every gallery vector g replaced by normalise(ĝ + Σ_{i ≤ k} w_i ĝ_(i)) over its
  k = ``dba_k`` nearest *other* gallery vectors, w_i = 1 (``dba_alpha`` = 0, the default) or
  max(cos, 0)^α.

Order (the literature's): DBA first; the query expansion then takes its neighbours from the
augmented gallery; re-ranking, when asked, runs on the expanded sets afterwards.

Exactness: the neighbour lists are exact (they do not depend on block size, BLAS kernel or
device); the similarity of a neighbour is 1 − its exact cosine key / 2; the weights come from a
fixed sequence of float64 operations (no libm ``pow``, whose last bit varies by CPU); the weighted
sums are accumulated in float64 in a fixed order (the vector itself, then its neighbours in rank
order), rounded once to float32 and normalised by the core. So the expanded vectors are
bit-identical on every machine, for any block size and query row order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.eval.errors import EvaluationError
from retrieval.eval.rerank import exp_of_negative
from retrieval.indexes.distance import normalise
from retrieval.common.text import few
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.knn import exact_knn, exact_knn_between

QUERY_EXPANSIONS = ("aqe", "alpha-qe")
EXPANSIONS = QUERY_EXPANSIONS + ("dba",)
NEIGHBOURS = "exact cosine k-NN over the gallery (ties by gallery row)"
_ACCUMULATE_BYTES = 64 * 1024 * 1024  # float64 rows accumulated at once
_LN2 = 0.6931471805599453  # float64 nearest to ln 2
_SQRT_HALF = 0.7071067811865476


@dataclass(frozen=True)
class Expansion:
    """Which expansions run, with their parameters (the names of the CLI options and the run record)."""

    methods: tuple[str, ...]
    qe_k: int = 5
    qe_alpha: float = 3.0
    dba_k: int = 5
    dba_alpha: float = 0.0

    def __post_init__(self) -> None:
        methods = tuple(self.methods)
        unknown = [m for m in methods if m not in EXPANSIONS]
        if unknown:
            raise EvaluationError(f"unknown expansion {unknown[0]!r}; expected one of {', '.join(EXPANSIONS)}")
        if not methods:
            raise EvaluationError(f"no expansion named; expected one or more of {', '.join(EXPANSIONS)}")
        if len(set(methods)) != len(methods) or sum(m in QUERY_EXPANSIONS for m in methods) > 1:
            raise EvaluationError(f"expansions {', '.join(methods)}: name each once, and at most one of aqe / alpha-qe")
        object.__setattr__(self, "methods", methods)
        _check_k("qe_k", self.qe_k)
        _check_k("dba_k", self.dba_k)
        _check_alpha("qe_alpha", self.qe_alpha)
        _check_alpha("dba_alpha", self.dba_alpha)

    @property
    def query_method(self) -> str | None:
        return next((m for m in self.methods if m in QUERY_EXPANSIONS), None)

    @property
    def dba(self) -> bool:
        return "dba" in self.methods

    @property
    def query_alpha(self) -> float:
        """The α of the query expansion's weights (``aqe``: 0, all weights 1)."""
        return float(self.qe_alpha) if self.query_method == "alpha-qe" else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The run record's ``"expansion"``: what ran, in which order, with which parameters."""
        order = (["dba"] if self.dba else []) + ([self.query_method] if self.query_method else [])
        out: dict[str, Any] = {"methods": order, "order": " -> ".join(order)}
        if self.dba:
            out.update(dba_k=int(self.dba_k), dba_alpha=float(self.dba_alpha))
        if self.query_method:
            out["qe_k"] = int(self.qe_k)
            if self.query_method == "alpha-qe":
                out["qe_alpha"] = float(self.qe_alpha)
        out["neighbours"] = NEIGHBOURS
        out["vectors"] = "L2-normalised; weighted sums in float64 in neighbour rank order"
        return out


@dataclass(frozen=True)
class ExpandedVectors:
    """The query and gallery vectors after expansion (float32, L2-normalised), ready for any distance source."""

    queries: np.ndarray
    gallery: np.ndarray
    expansion: Expansion


def expand(queries: np.ndarray, gallery: np.ndarray, expansion: Expansion, *, block_rows: int | None = None,
           device: str = "cpu") -> ExpandedVectors:
    """DBA on the gallery (if named), then the query expansion against that gallery (if named).

    Vectors an expansion does not touch are still L2-normalised, so that both sets are on the
    same footing for any metric afterwards.
    """
    gallery = _normalised(gallery, "gallery")
    queries = _normalised(queries, "queries")
    if expansion.dba:
        gallery = _augment(gallery, expansion.dba_k, expansion.dba_alpha, block_rows, device)
    if expansion.query_method:
        queries = _expand_queries(queries, gallery, expansion.qe_k, expansion.query_alpha, block_rows, device)
    return ExpandedVectors(queries, gallery, expansion)


def query_expansion(queries: np.ndarray, gallery: np.ndarray, k: int, alpha: float = 0.0, *,
                    block_rows: int | None = None, device: str = "cpu") -> np.ndarray:
    """Each query replaced by normalise(q̂ + Σ w_i ĝ_(i)) over its k nearest gallery vectors
    (α = 0: ``aqe``, every w_i = 1; α > 0: ``alpha-qe``, w_i = max(cos, 0)^α)."""
    _check_k("qe_k", k)
    _check_alpha("qe_alpha", alpha)
    return _expand_queries(_normalised(queries, "queries"), _normalised(gallery, "gallery"), k, alpha, block_rows, device)


def database_augmentation(gallery: np.ndarray, k: int, alpha: float = 0.0, *, block_rows: int | None = None,
                          device: str = "cpu") -> np.ndarray:
    """Each gallery vector replaced by normalise(ĝ + Σ w_i ĝ_(i)) over its k nearest other gallery
    vectors (α = 0: w_i = 1; α > 0: w_i = max(cos, 0)^α)."""
    _check_k("dba_k", k)
    _check_alpha("dba_alpha", alpha)
    return _augment(_normalised(gallery, "gallery"), k, alpha, block_rows, device)


def _expand_queries(queries, gallery, k, alpha, block_rows, device) -> np.ndarray:
    """Query expansion of L2-normalised vectors."""
    if k > len(gallery):
        raise EvaluationError(f"qe_k = {k} is larger than the gallery ({len(gallery)} items)")
    distance, neighbours = _knn(lambda: exact_knn_between(queries, gallery, k, "cosine", block_rows, device))
    weights = similarity_weights(1.0 - distance.astype(np.float64), alpha)
    return weighted_means(queries, gallery, neighbours, weights, "query expansion", "query")


def _augment(gallery, k, alpha, block_rows, device) -> np.ndarray:
    """Database-side augmentation of L2-normalised vectors."""
    if k >= len(gallery):
        raise EvaluationError(f"dba_k = {k} needs more than {k} gallery items ({len(gallery)} given)")
    distance, neighbours = _knn(lambda: exact_knn(gallery, k + 1, "cosine", block_rows, device))
    distance, neighbours = without_self(distance, neighbours, k)
    weights = similarity_weights(1.0 - distance.astype(np.float64), alpha)
    return weighted_means(gallery, gallery, neighbours, weights, "database-side augmentation", "gallery")


def without_self(distance: np.ndarray, neighbours: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """From lists of k + 1 over the gallery itself, each row's k nearest *other* rows.

    A row's own entry (distance 0) is dropped where it appears; a row whose k + 1 nearest are all
    exact duplicates at lower rows (its own entry then falls just outside) drops its last entry.
    Either way what remains is the first k of the other rows in (distance, row) order.
    """
    rows = np.arange(len(neighbours))[:, None]
    is_self = neighbours == rows
    drop = np.where(is_self.any(axis=1), is_self.argmax(axis=1), k)
    keep = np.arange(k + 1)[None, :] != drop[:, None]
    return distance[keep].reshape(-1, k), neighbours[keep].reshape(-1, k)


def weighted_means(own: np.ndarray, base: np.ndarray, neighbours: np.ndarray, weights: np.ndarray,
                   what: str = "expansion", rows_are: str = "row") -> np.ndarray:
    """normalise(own[i] + Σ_r weights[i, r] · base[neighbours[i, r]]) for every row i.

    float64 accumulation in a fixed order (own vector, then r = 0, 1, …), elementwise numpy
    operations only (no BLAS reduction whose order depends on the kernel); rows in chunks, which
    changes nothing (rows are independent).
    """
    n, dim = own.shape
    out = np.empty((n, dim), dtype=np.float32)
    chunk = max(1, _ACCUMULATE_BYTES // max(1, 16 * dim))
    for s in range(0, n, chunk):
        e = min(s + chunk, n)
        total = own[s:e].astype(np.float64)
        for r in range(neighbours.shape[1]):
            total += weights[s:e, r:r + 1] * base[neighbours[s:e, r]].astype(np.float64)
        out[s:e] = total.astype(np.float32)
    zero = np.flatnonzero(~out.any(axis=1))
    if len(zero):
        raise EvaluationError(f"{what}: {rows_are} rows {few(zero)}: the weighted sum is the zero vector "
                              f"(neighbours opposite to the vector cancel it); use alpha-qe or a smaller k")
    return normalise(out, what)


def similarity_weights(similarity: np.ndarray, alpha: float) -> np.ndarray:
    """w = 1 for α = 0 (uniform), else max(s, 0)^α, from a fixed sequence of float64 operations."""
    similarity = np.minimum(np.asarray(similarity, dtype=np.float64), 1.0)
    if alpha == 0:
        return np.ones_like(similarity)
    positive = similarity > 0
    weights = np.zeros_like(similarity)
    weights[positive] = deterministic_power(similarity[positive], float(alpha))
    return weights


def deterministic_power(x: np.ndarray, alpha: float) -> np.ndarray:
    """x^α for x in (0, 1] and α ≥ 0 as exp(α·ln x), both from fixed float64 operations.

    Relative error about 1e-15; the same bits on every machine (numpy's ``power`` dispatches to
    CPU-specific SIMD code whose last bit may differ).
    """
    return exp_of_negative_any(-alpha * log_unit(np.asarray(x, dtype=np.float64)))


def log_unit(x: np.ndarray) -> np.ndarray:
    """ln x for x in (0, 1]: x = m·2^e exactly, m in [√½, √2), ln m = 2·atanh(z), z = (m − 1)/(m + 1).

    |z| ≤ 0.172, so 13 odd terms of the series reach float64 precision.
    """
    m, e = np.frexp(x)
    low = m < _SQRT_HALF
    m = np.where(low, m * 2.0, m)
    e = e - low
    z = (m - 1.0) / (m + 1.0)
    z2 = z * z
    series = np.zeros_like(z)
    for n in range(25, 0, -2):
        series = series * z2 + 1.0 / n
    return 2.0 * z * series + e * _LN2


def exp_of_negative_any(x: np.ndarray) -> np.ndarray:
    """exp(−x) for any x ≥ 0: exp(−x / 2^s)^(2^s) with x / 2^s ≤ 1 (exact scaling), then s squarings."""
    x = np.asarray(x, dtype=np.float64)
    steps = np.clip(np.frexp(x)[1], 0, 11)  # x < 2^11 → x / 2^steps < 1; beyond, exp(−x) is 0 anyway
    result = exp_of_negative(np.minimum(np.ldexp(x, -steps), 1.0))
    for step in range(int(steps.max(initial=0))):
        result = np.where(steps > step, result * result, result)
    return np.where(x >= 2.0**11, 0.0, result)


def _knn(search):
    try:
        return search()
    except FaissIndexError as error:
        raise EvaluationError(str(error)) from None


def _normalised(x: np.ndarray, what: str) -> np.ndarray:
    try:
        return normalise(x, what)
    except FaissIndexError as error:
        raise EvaluationError(str(error)) from None


def _check_k(name: str, k: int) -> None:
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise EvaluationError(f"{name} must be a whole number ≥ 1, got {k!r}")


def _check_alpha(name: str, alpha: float) -> None:
    if not (isinstance(alpha, (int, float)) and math.isfinite(alpha) and alpha >= 0):
        raise EvaluationError(f"{name} must be a finite number ≥ 0, got {alpha!r}")
