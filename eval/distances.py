"""Distance sources: query-block × gallery distances with an error bound and an exact fallback.

A ``DistanceSource`` yields ``DistanceBlock``s: approximate ranking values (smaller = closer), a
per-row bound on how far any value of the row may be from the exact one, and a function that
returns exact values of chosen (row, column) pairs. Ranking code orders by the approximate values
and decides every comparison closer than the bound with exact values, so its results are those
of the exact values: the same for any block size, row position, BLAS kernel and device.

Sources:
* ``EmbeddingDistances``: float32 GEMM blocks over the distance core's exact keys
  (``indexes.distance``: ‖q − g‖² rounded once to float32, or −q·g), reported in the metric's
  units (euclidean √key, sqeuclidean key, cosine key/2 = 1 − cos);
* ``PrecomputedDistances``: a matrix given whole, exact as given;
* ``eval.rerank.RerankedDistances``: k-reciprocal re-ranked distances.
Nothing of size queries × gallery is held at once unless a caller asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Protocol, runtime_checkable

import numpy as np

from retrieval.eval.errors import EvaluationError
from retrieval.indexes.distance import KeySpace, Metric, above, below, key_to_distance, metric_from_name  # noqa: F401
from retrieval.common.metrics import EVAL_METRICS
from retrieval.common.text import few
from retrieval.indexes.errors import FaissIndexError

# Distances held at once per block (float32): block rows are chosen so that one block fits.
DEFAULT_BLOCK_BYTES = 128 * 1024 * 1024

ExactFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class DistanceBlock:
    """Rows ``start .. start + b`` of the query × gallery values.

    ``values`` (b, G): approximate ranking values, smaller = closer; ``bound`` (b,): for every
    entry of row r, |values[r, c] − exact(r, c)| ≤ bound[r] (all zero: the values are exact);
    ``exact_fn(local rows, cols)`` returns exact values of those pairs (None: the values are exact).
    """

    start: int
    values: np.ndarray
    bound: np.ndarray
    exact_fn: ExactFn | None = None

    @property
    def stop(self) -> int:
        return self.start + self.values.shape[0]

    def exact(self, local_rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        if self.exact_fn is None:
            return self.values[local_rows, cols]
        return self.exact_fn(np.asarray(local_rows, np.int64), np.asarray(cols, np.int64))

    def exact_row(self, local_row: int, cols: np.ndarray) -> np.ndarray:
        return self.exact(np.full(len(cols), local_row, np.int64), cols)

    @classmethod
    def exact_values(cls, start: int, values: np.ndarray) -> "DistanceBlock":
        return cls(start, values, np.zeros(values.shape[0]), None)


@runtime_checkable
class DistanceSource(Protocol):
    """Anything that yields query-block × gallery ``DistanceBlock``s (smaller = closer)."""

    num_queries: int
    num_gallery: int
    metric: str

    def blocks(self, block_rows: int) -> Iterator[DistanceBlock]: ...

    def to_distance(self, values: np.ndarray) -> np.ndarray: ...


def block_rows_for(num_gallery: int, budget_bytes: int = DEFAULT_BLOCK_BYTES, itemsize: int = 4) -> int:
    """Query rows per block so that one block of distances stays within ``budget_bytes``."""
    return max(1, int(budget_bytes // max(1, num_gallery * itemsize)))


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when torch sees a GPU, else ``cpu`` (the distance core's one rule)."""
    from retrieval.indexes.distance import resolve_device as resolve

    try:
        return resolve(device)
    except FaissIndexError as error:
        raise EvaluationError(str(error)) from None


class EmbeddingDistances:
    """Distances between query and gallery embeddings under one metric, one query block at a time.

    Ranking values are the distance core's keys (float32 GEMM approximations with their bound,
    exact keys on demand); ``to_distance`` turns keys into the metric's distances. BLAS on the
    CPU, torch on CUDA (full float32, TF32 off): the results are the same on both.
    """

    def __init__(self, query_vectors: np.ndarray, gallery_vectors: np.ndarray, metric: str = "euclidean",
                 device: str = "cpu") -> None:
        metric = _eval_metric(metric)
        self.metric = metric.value
        self._raw = (query_vectors, gallery_vectors)
        try:
            self.space = KeySpace(query_vectors, gallery_vectors, metric, resolve_device(device))
        except FaissIndexError as error:
            raise EvaluationError(str(error)) from None
        self.device = self.space.device
        self.num_queries, self.num_gallery = self.space.num_queries, self.space.num_gallery
        # torch device on which ranking_blocks leaves the values (None: host blocks, as blocks());
        # "cpu" runs the GPU path's code without a GPU, for tests
        self.ranking_device: str | None = "cuda" if self.device == "cuda" else None

    def to_distance(self, values: np.ndarray) -> np.ndarray:
        return key_to_distance(values, self.metric)

    def gallery_subset(self, cols: np.ndarray) -> "EmbeddingDistances":
        """The same queries against the gallery rows ``cols``: every key is unchanged (keys are exact)."""
        queries, gallery = self._raw
        subset = EmbeddingDistances(queries, np.asarray(gallery)[cols], self.metric, self.device)
        subset.ranking_device = self.ranking_device
        return subset

    def blocks(self, block_rows: int) -> Iterator[DistanceBlock]:
        for start, values in self.space.approx_blocks(block_rows):
            yield self._block(start, values)

    def ranking_blocks(self, block_rows: int) -> Iterator[DistanceBlock]:
        """Blocks for ``evaluate_ranking``: on the GPU path their values stay on the device
        (``DeviceValues``), where ranking selects the few entries it needs; else :meth:`blocks`."""
        if self.ranking_device is None:
            yield from self.blocks(block_rows)
            return
        from retrieval.eval.device_values import DeviceValues

        for start, values in self.space.torch_blocks(block_rows, self.ranking_device):
            yield self._block(start, DeviceValues(values))

    def torch_blocks(self, block_rows: int, torch_device: str = "cuda") -> Iterator[DistanceBlock]:
        """The GPU path's blocks (``"cpu"`` runs the same torch code without a GPU, for tests)."""
        for start, values in self.space.torch_approx_blocks(block_rows, torch_device):
            yield self._block(start, values)

    def exact_blocks(self, block_rows: int) -> Iterator[DistanceBlock]:
        """Blocks of exact keys for every pair (about twice the cost): for all-pairs statistics."""
        for start, values in self.space.exact_blocks(block_rows):
            yield DistanceBlock.exact_values(start, values)

    def exact(self, query_rows: np.ndarray, gallery_cols: np.ndarray) -> np.ndarray:
        """Exact keys of (query row, gallery column) pairs."""
        return self.space.exact(query_rows, gallery_cols)

    def _block(self, start: int, values: np.ndarray) -> DistanceBlock:
        bound = self.space.bounds.rows(start, start + values.shape[0])
        return DistanceBlock(start, values, bound, lambda rows, cols: self.space.exact(rows + start, cols))


def _eval_metric(name: str) -> Metric:
    try:
        metric = metric_from_name(name)
    except FaissIndexError:
        metric = None
    if metric is None or metric.value not in EVAL_METRICS:
        raise EvaluationError(f"unknown metric {name!r}; expected one of {', '.join(EVAL_METRICS)}")
    return metric


class PrecomputedDistances:
    """A distance matrix given whole (Q, G); exact as given; blocks are views, never modified."""

    def __init__(self, matrix: np.ndarray, metric: str = "precomputed") -> None:
        matrix = np.asarray(matrix)
        if matrix.ndim != 2:
            raise EvaluationError(f"a distance matrix must be 2-D, got shape {matrix.shape}")
        if not np.issubdtype(matrix.dtype, np.floating):
            matrix = matrix.astype(np.float64)
        nan_rows = np.flatnonzero(np.isnan(matrix).any(axis=1))
        if len(nan_rows):
            raise EvaluationError(f"distance matrix holds NaN (query rows {few(nan_rows)})")
        self.matrix = matrix
        self.metric = metric
        self.num_queries, self.num_gallery = matrix.shape

    def to_distance(self, values: np.ndarray) -> np.ndarray:
        return values

    def blocks(self, block_rows: int) -> Iterator[DistanceBlock]:
        for start in range(0, self.num_queries, block_rows):
            yield DistanceBlock.exact_values(start, self.matrix[start:start + block_rows])

    exact_blocks = blocks

    def exact(self, query_rows: np.ndarray, gallery_cols: np.ndarray) -> np.ndarray:
        """The values of (query row, gallery column) pairs (exact as given)."""
        return self.matrix[np.asarray(query_rows, np.int64), np.asarray(gallery_cols, np.int64)]
