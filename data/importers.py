"""Getting embeddings in: .npy/.npz, MATLAB .mat exports, CSV/TSV manifests + vectors, PyTorch .pt.

Each importer returns an Arrow table in the embeddings format (``data.writer.embeddings_table``);
the caller validates and writes it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import pyarrow as pa

from retrieval.data.errors import DataError
from retrieval.data.writer import embeddings_table

# The keys the common re-ID baselines write into their .mat feature exports.
MAT_SPLIT_KEYS = {
    "query": ("query_f", "query_label", "query_cam"),
    "gallery": ("gallery_f", "gallery_label", "gallery_cam"),
    "train": ("train_f", "train_label", "train_cam"),
}


@dataclass(frozen=True)
class ArrayKeys:
    """Which arrays of an .npz / .pt dict hold the features, labels, cameras and names."""

    features: str = "features"
    labels: str | None = "labels"
    cams: str | None = "cams"
    names: str | None = "names"


def _features_matrix(source: Path, name: str, array: np.ndarray) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim != 2:
        raise DataError(f"{source}: '{name}' must be a 2-D feature matrix (rows × dim), got shape {array.shape}")
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{source}: '{name}' must hold floats, got {array.dtype}")
    return array


def _column(source: Path, name: str, array, rows: int, integer: bool) -> np.ndarray:
    array = np.asarray(array).reshape(-1)
    if len(array) != rows:
        raise DataError(f"{source}: '{name}' has {len(array)} values for {rows} feature rows")
    if integer:
        if not (np.issubdtype(array.dtype, np.integer) or
                (np.issubdtype(array.dtype, np.floating) and np.all(np.mod(array, 1) == 0))):
            raise DataError(f"{source}: '{name}' must hold integers, got {array.dtype}")
        return array.astype(np.int64)
    return array


def _row_ids(prefix: str, rows: int) -> list[str]:
    return [f"{prefix}{i:06d}" for i in range(rows)]


def table_from_arrays(source: Path, arrays: Mapping[str, np.ndarray], keys: ArrayKeys, split: str | None) -> pa.Table:
    """An embeddings table from named arrays (features required; labels, cams, names optional)."""
    if keys.features not in arrays:
        raise DataError(f"{source}: no array '{keys.features}' (arrays present: {', '.join(sorted(arrays))}); "
                        "choose it with --features-key")
    vectors = _features_matrix(source, keys.features, arrays[keys.features])
    rows = len(vectors)

    def optional(key: str | None, integer: bool):
        if key is None or key not in arrays:
            return None
        return _column(source, key, arrays[key], rows, integer)

    names = optional(keys.names, integer=False)
    ids = [str(n) for n in names] if names is not None else _row_ids(f"{split or 'row'}_", rows)
    return embeddings_table(
        ids, vectors,
        pid=optional(keys.labels, integer=True),
        camid=optional(keys.cams, integer=True),
        split=[split] * rows if split else None,
    )


def import_numpy(source: Path, keys: ArrayKeys, split: str | None = None,
                 labels: Path | None = None, cams: Path | None = None, names: Path | None = None) -> pa.Table:
    """A .npy feature matrix (with optional .npy label/camera/name files) or an .npz of named arrays."""
    try:
        loaded = np.load(source, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{source}: cannot read as NumPy ({exc})") from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        arrays = {k: loaded[k] for k in loaded.files}
    else:
        arrays = {keys.features: loaded}
    for key, extra in ((keys.labels, labels), (keys.cams, cams), (keys.names, names)):
        if extra is not None and key is not None:
            arrays[key] = np.load(extra, allow_pickle=False)
    return table_from_arrays(source, arrays, keys, split)


def import_mat(source: Path) -> pa.Table:
    """A MATLAB feature export (query_f/query_label/query_cam, gallery_*, optionally train_*)."""
    from scipy.io import loadmat

    try:
        mat = loadmat(source)
    except NotImplementedError:
        raise DataError(f"{source}: MATLAB v7.3 (HDF5) file; save it with -v7 or export the arrays to .npz "
                        "and use `retrieve import file.npz`") from None
    except (ValueError, TypeError, OSError) as exc:
        raise DataError(f"{source}: not a readable MATLAB .mat file ({exc})") from None
    tables = []
    for split, (f_key, label_key, cam_key) in MAT_SPLIT_KEYS.items():
        if f_key not in mat:
            continue
        keys = ArrayKeys(features=f_key, labels=label_key, cams=cam_key, names=None)
        tables.append(table_from_arrays(source, mat, keys, split))
    if not tables:
        present = sorted(k for k in mat if not k.startswith("__"))
        raise DataError(f"{source}: no 'query_f' or 'gallery_f' array (arrays present: {', '.join(present)})")
    dims = {t.schema.field("embedding").type.list_size for t in tables}
    if len(dims) > 1:
        raise DataError(f"{source}: query and gallery features have different dimensions {sorted(dims)}")
    return pa.concat_tables(tables)


def import_torch(source: Path, keys: ArrayKeys, split: str | None = None) -> pa.Table:
    """A PyTorch ``.pt`` dict of tensors (needs torch: the `train` extra)."""
    try:
        import torch
    except ImportError:
        raise DataError(f"{source}: reading .pt files needs PyTorch: pip install 'retrieve[train]'") from None
    try:
        loaded = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise DataError(f"{source}: not a readable PyTorch file ({str(exc).splitlines()[0]})") from None
    if not isinstance(loaded, Mapping):
        raise DataError(f"{source}: expected a dict of tensors, got {type(loaded).__name__}")
    arrays = {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in loaded.items()}
    return table_from_arrays(source, arrays, keys, split)


MANIFEST_COLUMNS = ("id", "path", "pid", "camid", "split")


def read_manifest(source: Path) -> dict[str, list[str]]:
    """A CSV or TSV manifest with a header row (columns among id, path, pid, camid, split)."""
    delimiter = "\t" if source.suffix.lower() in (".tsv", ".tab") else ","
    with open(source, newline="") as handle:
        reader = csv.DictReader(handle, delimiter=delimiter)
        if not reader.fieldnames:
            raise DataError(f"{source}: empty manifest (expected a header row)")
        rows = list(reader)
    columns = {name: [row[name] for row in rows] for name in reader.fieldnames}
    if "id" not in columns and "path" not in columns:
        raise DataError(f"{source}: manifest needs an 'id' or a 'path' column (has {', '.join(reader.fieldnames)})")
    return columns


def _int_values(source: Path, name: str, values: list[str]) -> list[int | None]:
    out: list[int | None] = []
    for line, value in enumerate(values, start=2):
        if value == "":
            out.append(None)
            continue
        try:
            out.append(int(value))
        except ValueError:
            raise DataError(f"{source}: line {line}: column '{name}' must be an integer, got {value!r}") from None
    return out


def import_manifest(source: Path, vectors_file: Path, keys: ArrayKeys) -> pa.Table:
    """A CSV/TSV manifest whose rows match, in order, the rows of a vector file (.npy/.npz/.parquet)."""
    columns = read_manifest(source)
    vectors = _manifest_vectors(vectors_file, keys)
    rows = len(next(iter(columns.values())))
    if rows != len(vectors):
        raise DataError(f"{source}: manifest has {rows} rows but {vectors_file} has {len(vectors)} vectors")
    ids = columns.get("id") or columns["path"]
    pid = _int_values(source, "pid", columns["pid"]) if "pid" in columns else None
    if pid is not None and None in pid:
        raise DataError(f"{source}: column 'pid' is empty on line {pid.index(None) + 2}")
    camid = _int_values(source, "camid", columns["camid"]) if "camid" in columns else None
    extra = {k: v for k, v in columns.items() if k not in MANIFEST_COLUMNS}
    return embeddings_table(ids, vectors, pid=pid, camid=camid, split=columns.get("split"),
                            paths=columns.get("path"), extra=extra or None)


def _manifest_vectors(vectors_file: Path, keys: ArrayKeys) -> np.ndarray:
    if vectors_file.suffix == ".parquet":
        from retrieval.data.store import read_embeddings

        return read_embeddings(vectors_file).vectors
    loaded = np.load(vectors_file, allow_pickle=False)
    if isinstance(loaded, np.lib.npyio.NpzFile):
        if keys.features not in loaded.files:
            raise DataError(f"{vectors_file}: no array '{keys.features}' (arrays: {', '.join(loaded.files)})")
        loaded = loaded[keys.features]
    return _features_matrix(vectors_file, keys.features, loaded)


def join_manifest_by_path(manifest: pa.Table, embeddings: pa.Table) -> pa.Table:
    """Attach pid/camid/split from a layout manifest to embeddings rows with the same ``path``."""
    if "path" not in embeddings.column_names:
        raise DataError("embeddings have no 'path' column to join the layout manifest on")
    row_of_path = {p: i for i, p in enumerate(manifest.column("path").to_pylist())}
    paths = embeddings.column("path").to_pylist()
    missing = [p for p in paths if p not in row_of_path]
    if missing:
        raise DataError(f"{len(missing)} embedding row(s) have a path not in the layout manifest "
                        f"(first: {', '.join(map(str, missing[:5]))})")
    rows = pa.array([row_of_path[p] for p in paths], type=pa.int64())
    joined = embeddings.drop_columns([c for c in ("pid", "camid", "split") if c in embeddings.column_names])
    for name in ("pid", "camid", "split"):
        joined = joined.append_column(name, manifest.column(name).take(rows))
    return joined
