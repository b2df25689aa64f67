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
from retrieval.data.dataset import decode_metadata, empty_split_error, nothing_selected, select_splits  # noqa: F401
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
    parts: np.ndarray | None = None  # float32 (n, P·d): P part features per row (``num_parts``)
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
    def num_parts(self) -> int:
        """P, the number of part features per row in ``parts`` (0 without a parts column)."""
        return 0 if self.parts is None else int(self.metadata[schema.META_PARTS])

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
            parts=None if self.parts is None else np.ascontiguousarray(self.parts[rows]),
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
            raise empty_split_error(self.source, name, self.split.tolist())
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
    return decode_metadata(raw)


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


def _vectors_array(path: Path, column: pa.ChunkedArray, ids: np.ndarray, notes: list[str],
                   name: str = schema.EMBEDDING) -> np.ndarray:
    """A vector column (``embedding``, ``parts``) as a float32 (n, d) matrix, after the type and shape checks."""
    reader = _VectorReader(path, column.type, len(ids), notes, name)
    for chunk in column.chunks:
        reader.add(chunk, ids)
    return reader.finish(ids)


class _VectorReader:
    """Copies the chunks of a vector column (``embedding``, ``parts``) into one preallocated float32
    (n, d) matrix: one copy of the data.

    Each chunk is checked where it is read (nulls, dimensions, NaN/Inf), so a file never needs a
    second full-size buffer: not Arrow's combined column, not a float64 or boolean temporary.
    """

    def __init__(self, path: Path, col_type: pa.DataType, rows: int, notes: list[str],
                 name: str = schema.EMBEDDING) -> None:
        self.name = name
        if not (pa.types.is_fixed_size_list(col_type) or pa.types.is_list(col_type) or pa.types.is_large_list(col_type)):
            raise DataError(f"{path}: column '{self.name}' must be a list of floats, got {col_type}")
        if not pa.types.is_floating(col_type.value_type):
            raise DataError(f"{path}: column '{self.name}' must hold floats, got list of {col_type.value_type}")
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
                f"{self.path}: column '{self.name}' is null in {int(missing.sum())} row(s) "
                f"(first ids: {_first_ids(ids, missing)})"
            )
        dim = self._chunk_dim(chunk, first, ids)
        if self.vectors is None:
            if dim == 0:
                raise DataError(f"{self.path}: column '{self.name}' has dimension 0")
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
                f"{self.path}: column '{self.name}' has mixed dimensions {seen}; "
                f"{int(odd.sum())} row(s) differ from {common} (first ids: {_first_ids(ids, odd)})"
            )
        if not self.variable_note:
            self.notes.append(f"{self.path}: '{self.name}' is a variable-length list; read as fixed dimension {common}")
            self.variable_note = True
        return common

    def finish(self, ids: np.ndarray) -> np.ndarray:
        if self.vectors is None:
            raise DataError(f"{self.path}: column '{self.name}' has dimension 0")
        if not pa.types.is_float32(self.col_type.value_type):
            self.notes.append(f"{self.path}: '{self.name}' values are {self.col_type.value_type}; converted to float32")
        if self.bad_rows:
            bad = np.zeros(self.rows, dtype=bool)
            bad[np.concatenate(self.bad_rows)] = True
            raise DataError(
                f"{self.path}: column '{self.name}' has NaN or Inf in {int(bad.sum())} row(s) "
                f"(first ids: {_first_ids(ids, bad)})"
            )
        return self.vectors


def check_unique_ids(path: Path | str, ids: np.ndarray, where: str = "") -> None:
    """Every id once; else one line naming the file (``where``: e.g. " across its files")."""
    uniq, counts = np.unique(ids.astype(str), return_counts=True)
    if len(uniq) != len(ids):
        dup = uniq[counts > 1]
        raise DataError(
            f"{path}: column 'id' has {len(dup)} duplicated value(s){where} (first: {', '.join(dup[:SHOW_FIRST])})"
        )


_check_unique_ids = check_unique_ids


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


def _parts_array(path: Path, table: pa.Table, ids: np.ndarray, notes: list[str], metadata: dict[str, str]) -> np.ndarray | None:
    """The optional ``parts`` column, validated like ``embedding``; its width must be P·d with P = ``retrieve.parts``."""
    if schema.PARTS not in table.column_names:
        return None
    parts = _vectors_array(path, table.column(schema.PARTS), ids, notes, name=schema.PARTS)
    count = metadata.get(schema.META_PARTS)
    if count is None or not count.isdigit() or int(count) < 1:
        raise DataError(f"{path}: column 'parts' needs the file metadata {schema.META_PARTS} = P (number of parts), "
                        f"got {count!r}")
    if parts.shape[1] % int(count):
        raise DataError(f"{path}: column 'parts' has {parts.shape[1]} values per row, not a multiple of "
                        f"{schema.META_PARTS} = {count}")
    return parts


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
    parts = _parts_array(path, table, ids, notes, dict(metadata or {}))
    extra = table.drop_columns([c for c in table.column_names if c in schema.KNOWN_COLUMNS])
    return Embeddings(
        ids=ids, vectors=vectors, pid=pid, camid=camid, camid_known=camid_known, split=split, path=paths,
        parts=parts, extra=extra, metadata=dict(metadata or {}), source=str(source), notes=tuple(notes),
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
    """Read and validate an embeddings file (or a folder of them: ``data.dataset``); optionally keep
    only some splits and extra columns.

    ``columns`` limits the carried-through extra columns (the known columns are always read).
    Selecting splits that leave no row is an error.
    """
    path = Path(path)
    if path.is_dir():
        from retrieval.data.dataset import open_dataset

        return open_dataset(path).read(splits=splits, columns=columns)
    parquet = _open_parquet(path)
    names = parquet.schema_arrow.names
    _check_columns(path, names)
    wanted = [c for c in names if c in schema.KNOWN_COLUMNS or columns is None or c in columns]
    table = parquet.read(columns=[c for c in wanted if c != schema.EMBEDDING])
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    vectors = _VectorSource(parquet, path)
    emb = embeddings_from_table(table, path, _decode_metadata(parquet.schema_arrow.metadata), vectors=vectors)
    return select_splits(emb, splits)


def concat_embeddings(parts: Sequence[Embeddings], source: str, metadata: dict[str, str]) -> Embeddings:
    """Rows of several ``Embeddings`` (files of one folder, same columns) one after the other."""
    def cat(name):
        arrays = [getattr(p, name) for p in parts]
        return None if any(a is None for a in arrays) else np.concatenate(arrays)

    camid, known = None, None
    if any(p.camid is not None for p in parts):  # a file whose camids are all null has none
        camid = np.concatenate([p.camid if p.camid is not None else np.full(len(p), -1, np.int64) for p in parts])
        known = np.concatenate([p.camid_known if p.camid_known is not None else np.full(len(p), p.camid is not None)
                                for p in parts])
        known = None if known.all() else known
    notes = tuple(dict.fromkeys(note for p in parts for note in p.notes))
    extra = pa.concat_tables([p.extra for p in parts]) if parts[0].extra.num_columns else parts[0].extra
    metadata = dict(metadata)
    stripes = cat("parts")
    if stripes is not None:  # every file has part features: one P and one width across the folder
        shapes = {(p.num_parts, p.parts.shape[1]) for p in parts}
        if len(shapes) > 1:
            raise DataError(f"{source}: its files' 'parts' columns differ (P, values per row): "
                            f"{', '.join(f'{a} × {b // a}' for a, b in sorted(shapes))}")
        metadata[schema.META_PARTS] = str(parts[0].num_parts)
    return Embeddings(
        ids=np.concatenate([p.ids for p in parts]), vectors=np.ascontiguousarray(np.concatenate([p.vectors for p in parts])),
        pid=cat("pid"), camid=camid, camid_known=known, split=cat("split"), path=cat("path"), extra=extra,
        metadata=metadata, source=source, notes=notes, parts=stripes,
    )


def resolve_image_path(image: str, embeddings_file: Path | str | None) -> str:
    """A ``path`` value as it can be opened: as given when absolute or found from here, else
    relative to the folder of the embeddings file that names it (files travel with their images)."""
    candidate = Path(image)
    if candidate.is_absolute() or candidate.exists() or embeddings_file is None:
        return str(candidate)
    return str(Path(embeddings_file).parent / candidate)


def file_metadata(path: Path | str) -> dict[str, str]:
    """The ``retrieve.*`` key-value metadata of an embeddings file (of a folder: its first file)."""
    path = Path(path)
    if path.is_dir():
        from retrieval.data.dataset import open_dataset

        return open_dataset(path).metadata
    return _decode_metadata(_open_parquet(path).schema_arrow.metadata)


def iter_embedding_batches(path: Path | str, batch_rows: int = 65536,
                           splits: str | Sequence[str] | None = None,
                           check_duplicates: bool = True) -> Iterator[Embeddings]:
    """Stream a file larger than memory as validated batches (optionally of some splits only).

    Duplicate ids are checked across batches with a set of the ids seen so far. A folder of files
    (``data.dataset``) is streamed file after file.
    """
    path = Path(path)
    if path.is_dir():
        from retrieval.data.dataset import open_dataset

        yield from open_dataset(path).iter_batches(batch_rows, splits, check_duplicates)
        return
    parquet = _open_parquet(path)
    _check_columns(path, parquet.schema_arrow.names)
    metadata = _decode_metadata(parquet.schema_arrow.metadata)
    wanted_splits = _as_split_list(splits)
    seen: set[str] = set()
    present: set[str] = set()
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
        if wanted_splits is not None and emb.split is not None:
            present.update(np.unique(emb.split.astype(str)).tolist())
        emb = select_splits(emb, wanted_splits, allow_empty=True)
        rows += len(emb)
        if len(emb):
            yield emb
    if rows == 0:
        raise nothing_selected(path, wanted_splits, "the file has no rows", present)


# Writing lives in data.writer; these names are looked up there on first use (no import cycle).
_WRITER_NAMES = ("embeddings_table", "canonical_table", "with_metadata", "write_parquet_atomically",
                 "write_embeddings", "EmbeddingsWriter")


def __getattr__(name: str):
    if name in _WRITER_NAMES:
        from retrieval.data import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
