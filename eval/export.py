"""The whole query × gallery distance matrix of a small set, exact, with the id orders.

Every entry is the exact value the rankings are defined by (``DistanceBlock.exact``: the distance
core's keys for embeddings, in the metric's units; the settled re-ranked value for re-ranking),
so the matrix is the same for any block size, kernel and device. Refused above a size, with the
reason: a large set is served by rankings and the index, not by a dense matrix.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.eval.distances import DistanceSource, block_rows_for
from retrieval.eval.errors import EvaluationError
from retrieval.eval.evaluate import _ids

# 64 Mi entries (256 MiB as float32): Market-1501's 3,368 × 19,732 fits, MSMT17's 11,659 × 82,161 does not.
DEFAULT_MAX_ENTRIES = 64 * 1024 * 1024


@dataclass(frozen=True)
class DistanceMatrix:
    """``distances[i, j]``: query ``query_ids[i]`` to gallery item ``gallery_ids[j]`` (smaller = closer)."""

    distances: np.ndarray
    query_ids: np.ndarray
    gallery_ids: np.ndarray
    metric: str


def check_export_size(num_queries: int, num_gallery: int, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
    """An error with the reason when a Q × G matrix is above the export limit."""
    entries = int(num_queries) * int(num_gallery)
    if entries > max_entries:
        raise EvaluationError(
            f"a {num_queries:,} × {num_gallery:,} distance matrix holds {entries:,} distances "
            f"({_size(entries * 4)} as float32), above the export limit of {max_entries:,}: a dense matrix is "
            f"for small sets; use the rankings (rankings.parquet) or an index search, or raise the limit "
            f"(--max-entries) when the memory is there"
        )


def _size(nbytes: int) -> str:
    return f"{nbytes / 2**30:.1f} GiB" if nbytes >= 2**30 else f"{nbytes / 2**20:.1f} MiB"


def distance_matrix(source: DistanceSource, query_ids=None, gallery_ids=None, *,
                    max_entries: int = DEFAULT_MAX_ENTRIES, block_rows: int | None = None) -> DistanceMatrix:
    """The exact (Q, G) matrix of ``source`` in its reported units (float32 for embeddings)."""
    Q, G = source.num_queries, source.num_gallery
    check_export_size(Q, G, max_entries)
    query_ids = _ids(query_ids, Q, "q")
    gallery_ids = _ids(gallery_ids, G, "g")
    blocks = getattr(source, "exact_blocks", source.blocks)
    parts = []
    for block in blocks(block_rows or block_rows_for(G)):
        if block.exact_fn is None:
            values = block.values
        else:
            rows, cols = np.indices(block.values.shape).reshape(2, -1)
            values = block.exact(rows, cols).reshape(block.values.shape)
        parts.append(source.to_distance(values))
    distances = np.concatenate(parts) if parts else np.empty((0, G), np.float32)
    return DistanceMatrix(distances, query_ids, gallery_ids, getattr(source, "metric", "precomputed"))

