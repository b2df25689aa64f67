"""Read and validate embeddings files (the Parquet format of ``data.schema``) as typed arrays.

Every problem with a file raises ``DataError`` with one line naming the file, the
column and the offending rows (first few ids and a count). Float64/float16 vectors and
variable-length lists of one common length are converted to the canonical type, with
a note in ``Embeddings.notes`` instead of an error.

The content hash lives in ``data.hashing`` and writing in ``data.writer``; their public names
stay importable from here (``write_embeddings``, ``EmbeddingsWriter``, ...) for existing code.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.data import schema
from retrieval.data.errors import DataError
from retrieval.data.hashing import ContentHasher, content_hash  # noqa: F401  (public here too)

SHOW_FIRST = 5  # how many offending ids an error message lists

# --------------------------------------------------------------------------- the typed object


@dataclass(frozen=True)
class Embeddings:
    """Rows of an embeddings file as typed arrays (all arrays have ``len(ids)`` rows)."""

    ids: np.ndarray  # object array of str
    vectors: np.ndarray  # float32, C-contiguous, (n, d)
    pid: np.ndarray | None = None  # int64
    camid: np.ndarray | None = None  # int64; None when absent or all null
    camid_known: np.ndarray | None = None  # bool; None when every camid is known
    split: np.ndarray | None = None  # object array of str
    path: np.ndarray | None = None  # object array of str
    extra: pa.Table = field(default_factory=lambda: pa.table({}))
    metadata: dict[str, str] = field(default_factory=dict)
    source: str = ""
    notes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def normalized(self) -> bool:
        """True when every row has unit L2 norm (to float32 precision)."""
        return rows_are_normalized(self.vectors)

    def select(self, rows: np.ndarray | Sequence[int]) -> "Embeddings":
        """The subset given by a boolean mask or integer row indices, in that order."""
        rows = np.asarray(rows)
        if rows.dtype == bool:
            rows = np.flatnonzero(rows)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows) and np.all(np.diff(rows) == 1):
            rows = slice(int(rows[0]), int(rows[-1]) + 1)  # a run of rows: views, no copy of the vectors

        def take(array):
            return None if array is None else array[rows]

        return replace(
            self,
            ids=self.ids[rows],
            vectors=np.ascontiguousarray(self.vectors[rows]),
            pid=take(self.pid),
            camid=take(self.camid),
            camid_known=take(self.camid_known),
            split=take(self.split),
            path=take(self.path),
            extra=self._take_extra(rows),
        )

    def _take_extra(self, rows) -> pa.Table:
        if not self.extra.num_columns:
            return self.extra
        if isinstance(rows, slice):
            return self.extra.slice(rows.start, rows.stop - rows.start)
        return self.extra.take(pa.array(rows, type=pa.int64()))

    def by_split(self, name: str) -> "Embeddings":
        """The rows of one split; an empty selection is an error naming the file and split."""
        if self.split is None:
            raise DataError(f"{self.source}: no 'split' column, cannot select split '{name}'")
        subset = self.select(self.split == name)
        if len(subset) == 0:
            present = sorted(set(self.split.tolist()))
            raise DataError(f"{self.source}: split '{name}' is empty (splits present: {', '.join(present)})")
        return subset

    def content_hash(self) -> str:
        return content_hash(self.ids, self.vectors)


def rows_are_normalized(vectors: np.ndarray, tol: float = 1e-3) -> bool:
    if len(vectors) == 0:
        return False
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors, dtype=np.float64))
    return bool(np.all(np.abs(norms - 1.0) <= tol))


# --------------------------------------------------------------------------- reading


def _open_parquet(path: Path) -> pq.ParquetFile:
    if not path.exists():
        raise DataError(f"{path}: no such file")
    if path.is_dir():
        raise DataError(f"{path}: is a folder, expected an embeddings Parquet file")
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a Parquet file ({' '.join(str(exc).split())[:120]})") from None


def _decode_metadata(raw: dict[bytes, bytes] | None) -> dict[str, str]:
    if not raw:
        return {}
    return {
        k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
        for k, v in raw.items()
        if k.startswith(schema.META_PREFIX.encode())
    }


def _first_ids(ids: np.ndarray, mask: np.ndarray) -> str:
    bad = ids[mask][:SHOW_FIRST]
    return ", ".join(str(i) for i in bad)


def _check_columns(path: Path, names: Sequence[str]) -> None:
    for required in (schema.ID, schema.EMBEDDING):
        if required not in names:
            raise DataError(
                f"{path}: missing required column '{required}' (columns present: {', '.join(names) or 'none'})"
            )


def _ids_array(path: Path, column: pa.ChunkedArray) -> np.ndarray:
    if column.null_count:
        raise DataError(f"{path}: column 'id' has {column.null_count} null value(s); every row needs an id")
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        column = column.cast(pa.string())
    return np.asarray(column.to_pylist(), dtype=object)


def _vectors_array(path: Path, column: pa.ChunkedArray, ids: np.ndarray, notes: list[str]) -> np.ndarray:
    """The embedding column as a float32 (n, d) matrix, after the type and shape checks."""
    reader = _VectorReader(path, column.type, len(ids), notes)
    for chunk in column.chunks:
        reader.add(chunk, ids)
    return reader.finish(ids)


class _VectorReader:
    """Copies embedding chunks into one preallocated float32 (n, d) matrix: one copy of the data.

    Each chunk is checked where it is read (nulls, dimensions, NaN/Inf), so a file never needs a
    second full-size buffer: not Arrow's combined column, not a float64 or boolean temporary.
    """

    def __init__(self, path: Path, col_type: pa.DataType, rows: int, notes: list[str]) -> None:
        if not (pa.types.is_fixed_size_list(col_type) or pa.types.is_list(col_type) or pa.types.is_large_list(col_type)):
            raise DataError(f"{path}: column 'embedding' must be a list of floats, got {col_type}")
        if not pa.types.is_floating(col_type.value_type):
            raise DataError(f"{path}: column 'embedding' must hold floats, got list of {col_type.value_type}")
        self.path, self.col_type, self.rows, self.notes = path, col_type, rows, notes
        self.dim = col_type.list_size if pa.types.is_fixed_size_list(col_type) else None
        self.vectors: np.ndarray | None = None
        self.filled = 0
        self.bad_rows: list[np.ndarray] = []
        self.variable_note = False

    def add(self, chunk: pa.Array, ids: np.ndarray) -> None:
        first, n = self.filled, len(chunk)
        if chunk.null_count:
            missing = np.zeros(self.rows, dtype=bool)
            missing[first:first + n] = np.asarray(chunk.is_null().to_numpy(zero_copy_only=False))
            raise DataError(
                f"{self.path}: column 'embedding' is null in {int(missing.sum())} row(s) "
                f"(first ids: {_first_ids(ids, missing)})"
            )
        dim = self._chunk_dim(chunk, first, ids)
        if self.vectors is None:
            if dim == 0:
                raise DataError(f"{self.path}: column 'embedding' has dimension 0")
            self.dim = dim
            self.vectors = np.empty((self.rows, dim), dtype=np.float32)
        values = chunk.flatten().to_numpy(zero_copy_only=False).reshape(n, self.dim)
        target = self.vectors[first:first + n]
        np.copyto(target, values, casting="unsafe")  # float64/float16 -> float32, noted once
        finite = np.isfinite(target).all(axis=1)
        if not finite.all():
            self.bad_rows.append(np.flatnonzero(~finite) + first)
        self.filled += n

    def _chunk_dim(self, chunk: pa.Array, first: int, ids: np.ndarray) -> int:
        if pa.types.is_fixed_size_list(self.col_type):
            return self.col_type.list_size
        lengths = np.asarray(chunk.value_lengths().to_numpy(zero_copy_only=False))
        dims, counts = np.unique(lengths, return_counts=True)
        common = self.dim if self.dim is not None else (int(dims[np.argmax(counts)]) if len(dims) else 0)
        if len(dims) > 1 or (len(dims) and int(dims[0]) != common):
            odd = np.zeros(self.rows, dtype=bool)
            odd[first:first + len(chunk)] = lengths != common
            seen = sorted({int(d) for d in dims} | {common})
            raise DataError(
                f"{self.path}: column 'embedding' has mixed dimensions {seen}; "
                f"{int(odd.sum())} row(s) differ from {common} (first ids: {_first_ids(ids, odd)})"
            )
        if not self.variable_note:
            self.notes.append(f"{self.path}: 'embedding' is a variable-length list; read as fixed dimension {common}")
            self.variable_note = True
        return common

    def finish(self, ids: np.ndarray) -> np.ndarray:
        if self.vectors is None:
            raise DataError(f"{self.path}: column 'embedding' has dimension 0")
        if not pa.types.is_float32(self.col_type.value_type):
            self.notes.append(f"{self.path}: 'embedding' values are {self.col_type.value_type}; converted to float32")
        if self.bad_rows:
            bad = np.zeros(self.rows, dtype=bool)
            bad[np.concatenate(self.bad_rows)] = True
            raise DataError(
                f"{self.path}: column 'embedding' has NaN or Inf in {int(bad.sum())} row(s) "
                f"(first ids: {_first_ids(ids, bad)})"
            )
        return self.vectors


def _check_unique_ids(path: Path, ids: np.ndarray) -> None:
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if len(uniq) != len(ids):
        dup = uniq[counts > 1]
        raise DataError(
            f"{path}: column 'id' has {len(dup)} duplicated value(s) (first: {', '.join(dup[:SHOW_FIRST])})"
        )


def _int_column(path: Path, table: pa.Table, name: str, ids: np.ndarray, nullable: bool) -> tuple[np.ndarray | None, np.ndarray | None]:
    """An integer column as int64 plus its known-mask (None when nothing is null)."""
    if name not in table.column_names:
        return None, None
    column = table.column(name)
    if not pa.types.is_integer(column.type):
        raise DataError(f"{path}: column '{name}' must hold integers, got {column.type}")
    null = np.asarray(column.is_null().to_numpy(zero_copy_only=False)) if column.null_count else None
    if null is not None and not nullable:
        raise DataError(
            f"{path}: column '{name}' is null in {int(null.sum())} row(s) (first ids: {_first_ids(ids, null)})"
        )
    if null is not None and null.all():
        return None, None
    values = np.asarray(column.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)
    return values, (None if null is None else ~null)


def _string_column(path: Path, table: pa.Table, name: str) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    column = table.column(name)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"{path}: column '{name}' must hold strings, got {column.type}")
    return np.asarray(column.to_pylist(), dtype=object)


def _check_splits(path: Path, split: np.ndarray | None) -> None:
    if split is None:
        return
    values = set(split.tolist())
    if None in values:
        raise DataError(f"{path}: column 'split' has null values; use one of {', '.join(schema.KNOWN_SPLITS)}")
    unknown = sorted(values - set(schema.KNOWN_SPLITS))
    if unknown:
        raise DataError(
            f"{path}: column 'split' has unknown value(s) {', '.join(map(repr, unknown[:SHOW_FIRST]))}; "
            f"expected {', '.join(schema.KNOWN_SPLITS)}"
        )


def embeddings_from_table(table: pa.Table, source: Path | str, metadata: dict[str, str] | None = None,
                          check_unique: bool = True, vectors: "_VectorSource | None" = None) -> Embeddings:
    """Validate an Arrow table in the embeddings format and return the typed object.

    ``vectors``: where the embedding column comes from when the table does not hold it (a file
    read row group by row group); by default the table's own column.
    """
    path = Path(source)
    _check_columns(path, table.column_names + ([] if vectors is None else [schema.EMBEDDING]))
    notes: list[str] = []
    ids = _ids_array(path, table.column(schema.ID))
    if check_unique:
        _check_unique_ids(path, ids)
    if vectors is None:
        vectors = _vectors_array(path, table.column(schema.EMBEDDING), ids, notes)
    else:
        vectors = vectors.read(ids, notes)
    pid, _ = _int_column(path, table, schema.PID, ids, nullable=False)
    camid, camid_known = _int_column(path, table, schema.CAMID, ids, nullable=True)
    split = _string_column(path, table, schema.SPLIT)
    _check_splits(path, split)
    paths = _string_column(path, table, schema.PATH)
    extra = table.drop_columns([c for c in table.column_names if c in schema.KNOWN_COLUMNS])
    return Embeddings(
        ids=ids, vectors=vectors, pid=pid, camid=camid, camid_known=camid_known, split=split, path=paths,
        extra=extra, metadata=dict(metadata or {}), source=str(source), notes=tuple(notes),
    )


class _VectorSource:
    """The embedding column of a Parquet file, read one row group at a time into one array."""

    def __init__(self, parquet: pq.ParquetFile, path: Path) -> None:
        self.parquet, self.path = parquet, path

    def read(self, ids: np.ndarray, notes: list[str]) -> np.ndarray:
        col_type = self.parquet.schema_arrow.field(schema.EMBEDDING).type
        reader = _VectorReader(self.path, col_type, len(ids), notes)
        # a buffered stream, in batches: a file written with one huge row group is never decoded whole
        streamed = pq.ParquetFile(self.path, buffer_size=8 * 1024 * 1024, pre_buffer=False)
        for batch in streamed.iter_batches(batch_size=4096, columns=[schema.EMBEDDING]):
            reader.add(batch.column(0), ids)
        return reader.finish(ids)


def _as_split_list(splits: str | Sequence[str] | None) -> list[str] | None:
    if splits is None:
        return None
    return [splits] if isinstance(splits, str) else list(splits)


def read_embeddings(path: Path | str, splits: str | Sequence[str] | None = None,
                    columns: Sequence[str] | None = None) -> Embeddings:
    """Read and validate an embeddings file; optionally keep only some splits and extra columns.

    ``columns`` limits the carried-through extra columns (the known columns are always read).
    Selecting splits that leave no row is an error.
    """
    path = Path(path)
    parquet = _open_parquet(path)
    names = parquet.schema_arrow.names
    _check_columns(path, names)
    wanted = [c for c in names if c in schema.KNOWN_COLUMNS or columns is None or c in columns]
    table = parquet.read(columns=[c for c in wanted if c != schema.EMBEDDING])
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    vectors = _VectorSource(parquet, path)
    emb = embeddings_from_table(table, path, _decode_metadata(parquet.schema_arrow.metadata), vectors=vectors)
    wanted_splits = _as_split_list(splits)
    if wanted_splits is None:
        return emb
    if emb.split is None:
        raise DataError(f"{path}: no 'split' column, cannot select split(s) {', '.join(wanted_splits)}")
    for name in wanted_splits:
        if not np.any(emb.split == name):
            present = sorted(set(emb.split.tolist()))
            raise DataError(f"{path}: split '{name}' is empty (splits present: {', '.join(present)})")
    return emb.select(np.isin(emb.split, wanted_splits))


def file_metadata(path: Path | str) -> dict[str, str]:
    """The ``retrieve.*`` key-value metadata of an embeddings file."""
    return _decode_metadata(_open_parquet(Path(path)).schema_arrow.metadata)


def iter_embedding_batches(path: Path | str, batch_rows: int = 65536,
                           splits: str | Sequence[str] | None = None,
                           check_duplicates: bool = True) -> Iterator[Embeddings]:
    """Stream a file larger than memory as validated batches (optionally of some splits only).

    Duplicate ids are checked across batches with a set of the ids seen so far.
    """
    path = Path(path)
    parquet = _open_parquet(path)
    _check_columns(path, parquet.schema_arrow.names)
    metadata = _decode_metadata(parquet.schema_arrow.metadata)
    wanted_splits = _as_split_list(splits)
    seen: set[str] = set()
    rows = 0
    for batch in parquet.iter_batches(batch_size=batch_rows):
        emb = embeddings_from_table(pa.Table.from_batches([batch]), path, metadata)
        if check_duplicates:
            repeated = [i for i in emb.ids if i in seen]
            if repeated:
                raise DataError(
                    f"{path}: column 'id' has duplicated value(s) (first: {', '.join(repeated[:SHOW_FIRST])})"
                )
            seen.update(emb.ids.tolist())
        if wanted_splits is not None:
            if emb.split is None:
                raise DataError(f"{path}: no 'split' column, cannot select split(s) {', '.join(wanted_splits)}")
            emb = emb.select(np.isin(emb.split, wanted_splits))
        rows += len(emb)
        if len(emb):
            yield emb
    if rows == 0:
        what = f"split(s) {', '.join(wanted_splits)} are empty" if wanted_splits else "the file has no rows"
        raise DataError(f"{path}: {what}")


# Writing lives in data.writer; these names are looked up there on first use (no import cycle).
_WRITER_NAMES = ("embeddings_table", "canonical_table", "with_metadata", "write_parquet_atomically",
                 "write_embeddings", "EmbeddingsWriter")


def __getattr__(name: str):
    if name in _WRITER_NAMES:
        from retrieval.data import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
