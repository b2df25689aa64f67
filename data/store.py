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
from retrieval.data.dataset import decode_metadata, nothing_selected, select_splits
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
            extra=self.extra.take(pa.array(rows, type=pa.int64())) if self.extra.num_columns else self.extra,
        )

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


def _vectors_array(path: Path, column: pa.ChunkedArray, ids: np.ndarray, notes: list[str]) -> np.ndarray:
    """The embedding column as a float32 (n, d) matrix, after the type and shape checks."""
    col_type = column.type
    if not (pa.types.is_fixed_size_list(col_type) or pa.types.is_list(col_type) or pa.types.is_large_list(col_type)):
        raise DataError(f"{path}: column 'embedding' must be a list of floats, got {col_type}")
    value_type = col_type.value_type
    if not pa.types.is_floating(value_type):
        raise DataError(f"{path}: column 'embedding' must hold floats, got list of {value_type}")
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if array.null_count:
        missing = np.asarray(array.is_null().to_numpy(zero_copy_only=False))
        raise DataError(
            f"{path}: column 'embedding' is null in {int(missing.sum())} row(s) (first ids: {_first_ids(ids, missing)})"
        )
    if pa.types.is_fixed_size_list(col_type):
        dim = col_type.list_size
    else:
        lengths = np.asarray(array.value_lengths().to_numpy(zero_copy_only=False))
        dims, counts = np.unique(lengths, return_counts=True)
        if len(dims) > 1:
            common = int(dims[np.argmax(counts)])
            odd = lengths != common
            raise DataError(
                f"{path}: column 'embedding' has mixed dimensions {sorted(int(d) for d in dims)}; "
                f"{int(odd.sum())} row(s) differ from {common} (first ids: {_first_ids(ids, odd)})"
            )
        dim = int(dims[0]) if len(dims) else 0
        notes.append(f"{path}: 'embedding' is a variable-length list; read as fixed dimension {dim}")
    if dim == 0:
        raise DataError(f"{path}: column 'embedding' has dimension 0")
    values = array.flatten().to_numpy(zero_copy_only=False)
    if values.dtype != np.float32:
        notes.append(f"{path}: 'embedding' values are {value_type}; converted to float32")
        values = values.astype(np.float32)
    vectors = np.ascontiguousarray(values.reshape(len(ids), dim))
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = ~finite
        raise DataError(
            f"{path}: column 'embedding' has NaN or Inf in {int(bad.sum())} row(s) (first ids: {_first_ids(ids, bad)})"
        )
    return vectors


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


def embeddings_from_table(table: pa.Table, source: Path | str, metadata: dict[str, str] | None = None,
                          check_unique: bool = True) -> Embeddings:
    """Validate an Arrow table in the embeddings format and return the typed object."""
    path = Path(source)
    _check_columns(path, table.column_names)
    notes: list[str] = []
    ids = _ids_array(path, table.column(schema.ID))
    if check_unique:
        _check_unique_ids(path, ids)
    vectors = _vectors_array(path, table.column(schema.EMBEDDING), ids, notes)
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
    table = parquet.read(columns=wanted)
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    emb = embeddings_from_table(table, path, _decode_metadata(parquet.schema_arrow.metadata))
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
    return Embeddings(
        ids=np.concatenate([p.ids for p in parts]), vectors=np.ascontiguousarray(np.concatenate([p.vectors for p in parts])),
        pid=cat("pid"), camid=camid, camid_known=known, split=cat("split"), path=cat("path"), extra=extra,
        metadata=dict(metadata), source=source, notes=notes,
    )


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
        emb = select_splits(emb, wanted_splits, allow_empty=True)
        rows += len(emb)
        if len(emb):
            yield emb
    if rows == 0:
        raise nothing_selected(path, wanted_splits, "the file has no rows")


# Writing lives in data.writer; these names are looked up there on first use (no import cycle).
_WRITER_NAMES = ("embeddings_table", "canonical_table", "with_metadata", "write_parquet_atomically",
                 "write_embeddings", "EmbeddingsWriter")


def __getattr__(name: str):
    if name in _WRITER_NAMES:
        from retrieval.data import writer

        return getattr(writer, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
