"""Writing an exported distance matrix: ``NAME.npy`` (Q × G) and ``NAME.ids.json`` (the id orders).

Both files are written under temporary names and renamed into place only when both are complete
(and neither target is in the way), so an export is never half-written.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np

from retrieval.data.store import atomic_output
from retrieval.errors import RetrieveError
from retrieval.eval.export import DistanceMatrix


def ids_path(npy_path: Path | str) -> Path:
    """The id file beside a matrix file: ``d.npy`` -> ``d.ids.json``."""
    path = Path(npy_path)
    return path.with_name(path.stem + ".ids.json")


def write_distance_matrix(matrix: DistanceMatrix, path: Path | str, record: dict | None = None) -> tuple[Path, Path]:
    """Write the matrix (``.npy``) and its id orders (``.ids.json``, with ``record`` merged in)."""
    path = Path(path)
    if path.suffix != ".npy":
        raise RetrieveError(f"{path}: the distance matrix is written as a .npy file; name it NAME.npy")
    side = ids_path(path)
    for target in (path, side):
        if target.is_dir():
            raise RetrieveError(f"{target}: a folder is in the way of the exported file; choose another name")
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(matrix.distances), allow_pickle=False)
    ids = {
        **(record or {}),
        "metric": matrix.metric,
        "shape": list(matrix.distances.shape),
        "dtype": str(matrix.distances.dtype),
        "rows": "queries",
        "columns": "gallery",
        "query_ids": [str(i) for i in matrix.query_ids],
        "gallery_ids": [str(i) for i in matrix.gallery_ids],
    }
    staged = []
    try:
        for target, data in ((path, buffer.getvalue()), (side, json.dumps(ids, indent=1).encode())):
            temporary = atomic_output(target)
            staged.append((temporary, target))
            temporary.write_bytes(data)
        for temporary, target in staged:
            os.replace(temporary, target)
    finally:
        for temporary, _ in staged:
            temporary.unlink(missing_ok=True)
    return path, side


def read_distance_matrix(path: Path | str) -> DistanceMatrix:
    """Read back a matrix written by :func:`write_distance_matrix`."""
    path = Path(path)
    side = ids_path(path)
    if not side.is_file():
        raise RetrieveError(f"{path}: its id file {side.name} is missing")
    ids = json.loads(side.read_text())
    distances = np.load(path, allow_pickle=False)
    if list(distances.shape) != ids.get("shape"):
        raise RetrieveError(f"{path}: shape {list(distances.shape)} disagrees with {side.name} ({ids.get('shape')})")
    return DistanceMatrix(distances, np.asarray(ids["query_ids"], dtype=object),
                          np.asarray(ids["gallery_ids"], dtype=object), ids["metric"])
