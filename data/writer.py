"""Write embeddings files: build the Arrow table, add the file metadata, write atomically.

Files are written through ``retrieval.common.atomic`` (temporary name, fsync, rename; modes
follow the umask). The writers validate through ``data.store`` first, so a bad input never
lands on disk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.common.atomic import atomic_file, check_output, new_temporary_file, publish_file
from retrieval.data import schema
from retrieval.data.errors import DataError
from retrieval.data.store import Embeddings, embeddings_from_table


def _creator() -> str:
    # The installed distribution's version: data/ imports nothing from the layers above it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"retrieve {version('retrieve')}"
    except PackageNotFoundError:
        return "retrieve"


def embeddings_table(ids: Sequence[str], vectors: np.ndarray, pid=None, camid=None, split=None, paths=None,
                     extra: pa.Table | dict | None = None) -> pa.Table:
    """Build an Arrow table in the embeddings format (no metadata)."""
    vectors = np.asarray(vectors)
    if vectors.dtype not in (np.float16, np.float32, np.float64):
        vectors = vectors.astype(np.float32)  # integers and the like: validation names float types only
    if vectors.ndim != 2:
        raise DataError(f"vectors must be a 2-D matrix, got shape {vectors.shape}")
    n, dim = vectors.shape
    columns: dict[str, pa.Array] = {
        schema.ID: pa.array([str(i) for i in ids], type=pa.string()),
        # Kept in its float type here so that validation can note a conversion; see canonical_table.
        schema.EMBEDDING: pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(vectors).reshape(-1)), dim),
    }
    if len(columns[schema.ID]) != n:
        raise DataError(f"{len(columns[schema.ID])} ids for {n} vectors")
    optional = {schema.PID: pid, schema.CAMID: camid, schema.SPLIT: split, schema.PATH: paths}
    for name, values in optional.items():
        if values is None:
            continue
        array = values if isinstance(values, (pa.Array, pa.ChunkedArray)) else pa.array(
            values.tolist() if isinstance(values, np.ndarray) else list(values))
        columns[name] = array.cast(schema.COLUMN_TYPES[name])
        if len(columns[name]) != n:
            raise DataError(f"column '{name}' has {len(columns[name])} values for {n} rows")
    table = pa.table(columns)
    if extra is not None:
        extra_table = extra if isinstance(extra, pa.Table) else pa.table(extra)
        for name in extra_table.column_names:
            table = table.append_column(name, extra_table.column(name))
    return table


def canonical_table(table: pa.Table, emb: Embeddings) -> pa.Table:
    """The table with its embedding column as validated float32 fixed-size lists."""
    column = pa.FixedSizeListArray.from_arrays(pa.array(emb.vectors.reshape(-1), type=pa.float32()), emb.dim)
    return table.set_column(table.column_names.index(schema.EMBEDDING), schema.EMBEDDING, column)


def with_metadata(table: pa.Table, dim: int, normalized: bool, model: str | None) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta.update({
        schema.META_FORMAT_VERSION.encode(): schema.FORMAT_VERSION.encode(),
        schema.META_DIM.encode(): str(dim).encode(),
        schema.META_NORMALIZED.encode(): str(bool(normalized)).lower().encode(),
        schema.META_MODEL.encode(): (model or "").encode(),
        schema.META_CREATOR.encode(): _creator().encode(),
    })
    return table.replace_schema_metadata(meta)


ROW_GROUP_BYTES = 64 * 1024 * 1024  # vectors per row group: what a reader decodes at once


def parquet_options(schema_: pa.Schema, row_group_rows: int | None = None) -> dict:
    """Writer options: the embedding column stored plain (no dictionary, no compression: random
    floats gain nothing from either, and plain pages decode straight into the float32 matrix),
    the other columns dictionary-encoded and snappy-compressed; row groups of about 64 MB."""
    names = schema_.names
    embedding = schema.EMBEDDING in names
    options: dict = {
        "use_dictionary": [n for n in names if n != schema.EMBEDDING],
        "compression": {n: ("none" if n == schema.EMBEDDING else "snappy") for n in names},
    }
    if row_group_rows is None and embedding:
        dim = schema_.field(schema.EMBEDDING).type.list_size if pa.types.is_fixed_size_list(
            schema_.field(schema.EMBEDDING).type) else 0
        if dim:
            row_group_rows = max(1024, ROW_GROUP_BYTES // (4 * dim))
    if row_group_rows is not None:
        options["row_group_size"] = row_group_rows
    return options


def write_parquet_atomically(table: pa.Table, path: Path | str, row_group_rows: int | None = None, *,
                             overwrite: bool = True) -> Path:
    """Write a Parquet file atomically (``retrieval.common.atomic``): never half-written, umask modes.

    ``overwrite=False`` refuses an existing file (``OutputExistsError``); the default replaces it.
    """
    path = Path(path)
    with atomic_file(path, overwrite=overwrite) as temporary:
        pq.write_table(table, temporary, **parquet_options(table.schema, row_group_rows))
    return path


def write_embeddings(path: Path | str, ids: Sequence[str], vectors: np.ndarray, pid=None, camid=None, split=None,
                     paths=None, extra: pa.Table | dict | None = None, model: str | None = None,
                     row_group_rows: int | None = None, *, overwrite: bool = True) -> Path:
    """Write an embeddings file atomically (validated first, so a bad input never lands on disk)."""
    path = Path(path)
    table = embeddings_table(ids, vectors, pid, camid, split, paths, extra)
    emb = embeddings_from_table(table, path)
    table = with_metadata(canonical_table(table, emb), emb.dim, emb.normalized, model)
    return write_parquet_atomically(table, path, row_group_rows, overwrite=overwrite)


class EmbeddingsWriter:
    """Write an embeddings file batch by batch (for files larger than memory), atomically on close."""

    def __init__(self, path: Path | str, dim: int, model: str | None = None, normalized: bool = True,
                 with_columns: Iterable[str] = (schema.PID, schema.CAMID, schema.SPLIT), *,
                 overwrite: bool = True) -> None:
        self.path = Path(path)
        self.overwrite = overwrite
        check_output(self.path, overwrite=overwrite)
        fields = [pa.field(schema.ID, pa.string()), pa.field(schema.EMBEDDING, schema.embedding_type(dim))]
        fields += [pa.field(c, schema.COLUMN_TYPES[c]) for c in with_columns]
        self.schema = with_metadata(pa.schema(fields).empty_table(), dim, normalized, model).schema
        self._tmp = new_temporary_file(self.path)
        options = parquet_options(self.schema)
        self._row_group_rows = options.pop("row_group_size", None)
        self._writer = pq.ParquetWriter(self._tmp, self.schema, **options)
        self.rows = 0

    def write(self, ids, vectors, **columns) -> None:
        table = embeddings_table(ids, np.asarray(vectors, dtype=np.float32),
                                 **{k: v for k, v in columns.items() if k != "extra"})
        self._writer.write_table(table.select(self.schema.names).cast(self.schema), row_group_size=self._row_group_rows)
        self.rows += table.num_rows

    def close(self) -> Path:
        self._writer.close()
        try:
            publish_file(self._tmp, self.path, overwrite=self.overwrite)
        except BaseException:
            self._tmp.unlink(missing_ok=True)
            raise
        return self.path

    def abort(self) -> None:
        self._writer.close()
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> "EmbeddingsWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
