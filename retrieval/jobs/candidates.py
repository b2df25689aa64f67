"""Candidate lists from a built index, as rows of the items the job holds (identify, cluster).

The index must have been built from exactly these items (its content hash is checked) and for
the job's metric; its answers (gallery rows of the index, re-ranked by exact distance when the
index stores vectors) are turned into positions in the job's item arrays by id.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.errors import OptionError


@dataclass(frozen=True)
class IndexLists:
    rows: np.ndarray  # (n, k) positions in the job's items
    distances: np.ndarray  # (n, k) float32, the index's metric units
    source: dict  # what found them: index path, factory, nprobe, exact or not


def index_lists(path: Path, items_ids: np.ndarray, items_vectors: np.ndarray, queries: np.ndarray, k: int,
                metric: str, nprobe: int | None = None, device: str = "auto") -> IndexLists:
    """The index's top-k of every query, as positions in the items (built from them: checked)."""
    from retrieval.data.hashing import content_hash
    from retrieval.indexes.store import load_index

    handle = load_index(path, device=device)
    handle.check_metric(metric)
    handle.check_content_hash(content_hash(items_ids, items_vectors))
    if k > handle.count:
        raise OptionError(f"k = {k} is larger than the index's {handle.count} items", "--k")
    result = handle.search_detailed(queries, k, nprobe=nprobe)
    position = {str(item): row for row, item in enumerate(items_ids)}
    ids = handle.row_ids(np.arange(handle.count))
    index_to_item = np.fromiter((position[str(item)] for item in ids), dtype=np.int64, count=len(ids))
    source = {"kind": "index", "path": str(Path(path).absolute()), "factory": handle.manifest.get("factory"),
              "exact": handle.is_exact, **{key: value for key, value in result.params.items() if key != "k"}}
    return IndexLists(index_to_item[result.rows], result.distances, source)
