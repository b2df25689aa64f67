"""Distance sources: query-block × gallery distance matrices, smaller = closer.

A ``DistanceSource`` yields ``(first query row, (b, G) array)`` blocks so that nothing of size
queries × gallery is held at once. The evaluator ranks exactly the arrays it is given, so the
rank of an item always equals its position in a stable sort of the same block.
"""

from __future__ import annotations

import glob
import os
from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from retrieval.eval.errors import EvaluationError

METRICS = ("euclidean", "sqeuclidean", "cosine")
DEVICES = ("auto", "cpu", "cuda")

# Distances held at once per block (float32): block rows are chosen so that one block fits.
DEFAULT_BLOCK_BYTES = 256 * 1024 * 1024


@runtime_checkable
class DistanceSource(Protocol):
    """Anything that yields query-block × gallery distance matrices (smaller = closer)."""

    num_queries: int
    num_gallery: int

    def blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]: ...


def block_rows_for(num_gallery: int, budget_bytes: int = DEFAULT_BLOCK_BYTES, itemsize: int = 4) -> int:
    """Query rows per block so that one block of distances stays within ``budget_bytes``."""
    return max(1, int(budget_bytes // max(1, num_gallery * itemsize)))


def resolve_device(device: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU is an error."""
    if device not in DEVICES:
        raise EvaluationError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    if device == "cpu":
        return "cpu"
    available = _cuda_available()
    if device == "cuda" and not available:
        raise EvaluationError("--device cuda: no CUDA GPU is available to torch on this machine; use --device cpu")
    return "cuda" if available else "cpu"


def _cuda_available() -> bool:
    # Importing torch costs seconds: only try when the machine shows an NVIDIA device at all.
    if not (os.path.exists("/proc/driver/nvidia") or glob.glob("/dev/nvidia[0-9]*")):
        return False
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


class EmbeddingDistances:
    """Distances between query and gallery embeddings, computed one query block at a time.

    euclidean: sqrt(max(||q||² + ||g||² − 2 q·g, 0)); sqeuclidean: the same without the root;
    cosine: 1 − q·g / (||q|| ||g||). Float32 matrix product (BLAS on CPU, torch on CUDA).
    """

    def __init__(
        self,
        query_vectors: np.ndarray,
        gallery_vectors: np.ndarray,
        metric: str = "euclidean",
        device: str = "cpu",
    ) -> None:
        if metric not in METRICS:
            raise EvaluationError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
        query = np.ascontiguousarray(query_vectors, dtype=np.float32)
        gallery = np.ascontiguousarray(gallery_vectors, dtype=np.float32)
        if query.ndim != 2 or gallery.ndim != 2:
            raise EvaluationError("query and gallery vectors must be 2-D arrays (rows × dimension)")
        if query.shape[1] != gallery.shape[1]:
            raise EvaluationError(
                f"dimension mismatch: queries have {query.shape[1]} dimensions, gallery {gallery.shape[1]}"
            )
        if metric == "cosine":
            query, gallery = _unit_rows(query, "query"), _unit_rows(gallery, "gallery")
        self.metric = metric
        self.device = resolve_device(device)
        self.query, self.gallery = query, gallery
        self.num_queries, self.num_gallery = len(query), len(gallery)
        self.query_sq_norms = np.einsum("ij,ij->i", query, query)
        self.gallery_sq_norms = np.einsum("ij,ij->i", gallery, gallery)

    def blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        if self.device == "cuda":
            yield from self.torch_blocks(block_rows, "cuda")
            return
        for start in range(0, self.num_queries, block_rows):
            stop = min(start + block_rows, self.num_queries)
            yield start, self._cpu_block(start, stop)

    def _cpu_block(self, start: int, stop: int) -> np.ndarray:
        if self.metric == "cosine":
            block = self.query[start:stop] @ self.gallery.T
            np.subtract(1.0, block, out=block)
            return block
        # (−2q)·g is exactly −2(q·g) (a power-of-two scale), and saves a pass over the block
        block = (self.query[start:stop] * np.float32(-2.0)) @ self.gallery.T
        block += self.query_sq_norms[start:stop, None]
        block += self.gallery_sq_norms[None, :]
        np.maximum(block, 0.0, out=block)  # rounding can make a self-distance slightly negative
        if self.metric == "euclidean":
            np.sqrt(block, out=block)
        return block

    def torch_blocks(self, block_rows: int, torch_device: str = "cuda") -> Iterator[tuple[int, np.ndarray]]:
        """The same blocks computed with torch on ``torch_device`` (the GPU path; "cpu" for tests)."""
        import torch

        gallery = torch.from_numpy(self.gallery).to(torch_device)
        gallery_sq = torch.from_numpy(self.gallery_sq_norms).to(torch_device)
        tf32 = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False  # full float32 products, as on the CPU
        try:
            yield from self._torch_block_loop(torch, gallery, gallery_sq, block_rows)
        finally:
            torch.backends.cuda.matmul.allow_tf32 = tf32

    def _torch_block_loop(self, torch, gallery, gallery_sq, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.num_queries, block_rows):
            stop = min(start + block_rows, self.num_queries)
            query = torch.from_numpy(self.query[start:stop]).to(gallery.device)
            with torch.no_grad():
                if self.metric == "cosine":
                    block = 1.0 - query @ gallery.T
                else:
                    query_sq = torch.from_numpy(self.query_sq_norms[start:stop]).to(gallery.device)
                    block = torch.addmm(gallery_sq[None, :] + query_sq[:, None], query, gallery.T, alpha=-2.0)
                    block.clamp_(min=0.0)
                    if self.metric == "euclidean":
                        block.sqrt_()
            yield start, block.cpu().numpy()


def _unit_rows(vectors: np.ndarray, name: str) -> np.ndarray:
    norms = np.linalg.norm(vectors, axis=1)
    zero = np.flatnonzero(norms == 0)
    if len(zero):
        raise EvaluationError(f"cosine distance is undefined for zero {name} vectors (rows {_few(zero)})")
    return vectors / norms[:, None]


def _few(rows: np.ndarray, limit: int = 5) -> str:
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", … ({len(rows)} in all)" if len(rows) > limit else "")


class PrecomputedDistances:
    """A distance matrix given whole (Q, G); blocks are views of it, never modified."""

    def __init__(self, matrix: np.ndarray, metric: str = "precomputed") -> None:
        matrix = np.asarray(matrix)
        if matrix.ndim != 2:
            raise EvaluationError(f"a distance matrix must be 2-D, got shape {matrix.shape}")
        if not np.issubdtype(matrix.dtype, np.floating):
            matrix = matrix.astype(np.float64)
        nan_rows = np.flatnonzero(np.isnan(matrix).any(axis=1))
        if len(nan_rows):
            raise EvaluationError(f"distance matrix holds NaN (query rows {_few(nan_rows)})")
        self.matrix = matrix
        self.metric = metric
        self.num_queries, self.num_gallery = matrix.shape

    def blocks(self, block_rows: int) -> Iterator[tuple[int, np.ndarray]]:
        for start in range(0, self.num_queries, block_rows):
            yield start, self.matrix[start : start + block_rows]
