"""Writing an exported distance matrix: a folder with ``distances.npy`` (Q × G) and ``ids.json``.

``ids.json`` holds the id orders (``query_ids`` for the rows, ``gallery_ids`` for the columns),
the metric and what the values are. The folder is written through ``retrieval.common.atomic``
(filled under a temporary name, renamed into place; an existing output only with ``overwrite``),
so the pair is never half-written.

    import json, numpy as np
    d = np.load("export/distances.npy"); ids = json.load(open("export/ids.json"))
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.common.atomic import staging_folder
from retrieval.errors import RetrieveError
from retrieval.eval.export import DistanceMatrix

MATRIX_FILE = "distances.npy"
IDS_FILE = "ids.json"


def _not_an_export(path: Path) -> str | None:
    return None if (path / IDS_FILE).is_file() else f"is not a distance export (no {IDS_FILE}), so it is not replaced"


def write_distance_matrix(matrix: DistanceMatrix, out_dir: Path | str, record: dict[str, Any] | None = None, *,
                          overwrite: bool = False) -> Path:
    """Write ``out_dir/distances.npy`` and ``out_dir/ids.json`` (``record`` merged into the latter)."""
    out_dir = Path(out_dir)
    ids = {
        **(record or {}),
        "metric": matrix.metric,
        "shape": list(matrix.distances.shape),
        "dtype": str(matrix.distances.dtype),
        "rows": "queries (query_ids)",
        "columns": "gallery (gallery_ids)",
        "query_ids": [str(i) for i in matrix.query_ids],
        "gallery_ids": [str(i) for i in matrix.gallery_ids],
    }
    with staging_folder(out_dir, overwrite=overwrite, replaceable=_not_an_export) as staging:
        np.save(staging / MATRIX_FILE, np.ascontiguousarray(matrix.distances), allow_pickle=False)
        (staging / IDS_FILE).write_text(json.dumps(ids, indent=1) + "\n")
    return out_dir


def read_distance_matrix(out_dir: Path | str) -> DistanceMatrix:
    """Read back a folder written by :func:`write_distance_matrix`."""
    out_dir = Path(out_dir)
    for name in (MATRIX_FILE, IDS_FILE):
        if not (out_dir / name).is_file():
            raise RetrieveError(f"{out_dir}: not a distance export ({name} is missing)")
    ids = json.loads((out_dir / IDS_FILE).read_text())
    distances = np.load(out_dir / MATRIX_FILE, allow_pickle=False)
    if list(distances.shape) != ids.get("shape"):
        raise RetrieveError(f"{out_dir}: {MATRIX_FILE} has shape {list(distances.shape)}, {IDS_FILE} says {ids.get('shape')}")
    return DistanceMatrix(distances, np.asarray(ids["query_ids"], dtype=object),
                          np.asarray(ids["gallery_ids"], dtype=object), ids["metric"])
