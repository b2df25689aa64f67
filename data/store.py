"""Read, validate, stream and write embeddings files (the Parquet format of ``data.schema``).

Every problem with a file raises ``DataError`` with one line naming the file, the
column and the offending rows (first few ids and a count). Float64/float16 vectors and
variable-length lists of one common length are converted to the canonical type, with
a note in ``Embeddings.notes`` instead of an error.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.data import schema
from retrieval.data.errors import DataError

SHOW_FIRST = 5  # how many offending ids an error message lists


# --------------------------------------------------------------------------- content hash


class ContentHasher:
    """SHA-256 of the ids and vectors of a file, in row order, independent of batch boundaries.

    Three streams are hashed separately and combined: the ids' UTF-8 byte lengths
    (uint32 little-endian), the ids' bytes, and the vectors as float32 little-endian.
    The digest is ``sha256("retrieve-content-v1" | dim | lengths | bytes | vectors)``
    over the three stream digests, so it identifies the data, not the Parquet layout.
    """

    def __init__(self) -> None:
        self._lengths = hashlib.sha256()
        self._chars = hashlib.sha256()
        self._vectors = hashlib.sha256()
        self._dim: int | None = None
        self.rows = 0

    def update(self, ids: Sequence[str], vectors: np.ndarray) -> None:
        encoded = [str(i).encode("utf-8") for i in ids]
        self._lengths.update(np.asarray([len(e) for e in encoded], dtype="<u4").tobytes())
        self._chars.update(b"".join(encoded))
        self._vectors.update(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
        self._dim = int(vectors.shape[1]) if vectors.ndim == 2 else self._dim
        self.rows += len(encoded)

    def hexdigest(self) -> str:
        final = hashlib.sha256(b"retrieve-content-v1")
        final.update(str(self._dim or 0).encode())
        for part in (self._lengths, self._chars, self._vectors):
            final.update(part.digest())
        return final.hexdigest()


def content_hash(ids: Sequence[str], vectors: np.ndarray) -> str:
    """The content hash of ids + vectors (see ``ContentHasher``)."""
    hasher = ContentHasher()
    hasher.update(ids, vectors)
    return hasher.hexdigest()


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


def _vectors_array(path: Path, column: pa.ChunkedArray, ids: np.ndarray, notes: list[str],
                   name: str = schema.EMBEDDING) -> np.ndarray:
    """A vector column (``embedding``, ``parts``) as a float32 (n, d) matrix, after the type and shape checks."""
    col_type = column.type
    if not (pa.types.is_fixed_size_list(col_type) or pa.types.is_list(col_type) or pa.types.is_large_list(col_type)):
        raise DataError(f"{path}: column '{name}' must be a list of floats, got {col_type}")
    value_type = col_type.value_type
    if not pa.types.is_floating(value_type):
        raise DataError(f"{path}: column '{name}' must hold floats, got list of {value_type}")
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if array.null_count:
        missing = np.asarray(array.is_null().to_numpy(zero_copy_only=False))
        raise DataError(
            f"{path}: column '{name}' is null in {int(missing.sum())} row(s) (first ids: {_first_ids(ids, missing)})"
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
                f"{path}: column '{name}' has mixed dimensions {sorted(int(d) for d in dims)}; "
                f"{int(odd.sum())} row(s) differ from {common} (first ids: {_first_ids(ids, odd)})"
            )
        dim = int(dims[0]) if len(dims) else 0
        notes.append(f"{path}: '{name}' is a variable-length list; read as fixed dimension {dim}")
    if dim == 0:
        raise DataError(f"{path}: column '{name}' has dimension 0")
    values = array.flatten().to_numpy(zero_copy_only=False)
    if values.dtype != np.float32:
        notes.append(f"{path}: '{name}' values are {value_type}; converted to float32")
        values = values.astype(np.float32)
    vectors = np.ascontiguousarray(values.reshape(len(ids), dim))
    finite = np.isfinite(vectors).all(axis=1)
    if not finite.all():
        bad = ~finite
        raise DataError(
            f"{path}: column '{name}' has NaN or Inf in {int(bad.sum())} row(s) (first ids: {_first_ids(ids, bad)})"
        )
    return vectors


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
    parts = _parts_array(path, table, ids, notes, dict(metadata or {}))
    extra = table.drop_columns([c for c in table.column_names if c in schema.KNOWN_COLUMNS])
    return Embeddings(
        ids=ids, vectors=vectors, pid=pid, camid=camid, camid_known=camid_known, split=split, path=paths,
        parts=parts, extra=extra, metadata=dict(metadata or {}), source=str(source), notes=tuple(notes),
    )


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
    table = parquet.read(columns=wanted)
    if table.num_rows == 0:
        raise DataError(f"{path}: the file has no rows")
    emb = embeddings_from_table(table, path, _decode_metadata(parquet.schema_arrow.metadata))
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


# --------------------------------------------------------------------------- writing


def _creator() -> str:
    # The installed distribution's version: data/ imports nothing from the layers above it.
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"retrieve {version('retrieve')}"
    except PackageNotFoundError:
        return "retrieve"


def embeddings_table(ids: Sequence[str], vectors: np.ndarray, pid=None, camid=None, split=None, paths=None,
                     extra: pa.Table | dict | None = None, parts: np.ndarray | None = None) -> pa.Table:
    """Build an Arrow table in the embeddings format (no metadata); ``parts``: (n, P, d) part features."""
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
    if parts is not None:
        parts = np.asarray(parts)
        if parts.ndim != 3 or len(parts) != n:
            raise DataError(f"parts must be an (n, P, d) array with n = {n} rows, got shape {parts.shape}")
        flat = np.ascontiguousarray(parts).reshape(n, -1)
        columns[schema.PARTS] = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), flat.shape[1])
    table = pa.table(columns)
    if extra is not None:
        extra_table = extra if isinstance(extra, pa.Table) else pa.table(extra)
        for name in extra_table.column_names:
            table = table.append_column(name, extra_table.column(name))
    return table


def canonical_table(table: pa.Table, emb: Embeddings) -> pa.Table:
    """The table with its embedding column as validated float32 fixed-size lists."""
    column = pa.FixedSizeListArray.from_arrays(pa.array(emb.vectors.reshape(-1), type=pa.float32()), emb.dim)
    table = table.set_column(table.column_names.index(schema.EMBEDDING), schema.EMBEDDING, column)
    if emb.parts is not None:
        parts = pa.FixedSizeListArray.from_arrays(pa.array(emb.parts.reshape(-1), type=pa.float32()), emb.parts.shape[1])
        table = table.set_column(table.column_names.index(schema.PARTS), schema.PARTS, parts)
    return table


def with_metadata(table: pa.Table, dim: int, normalized: bool, model: str | None, parts: int = 0) -> pa.Table:
    meta = dict(table.schema.metadata or {})
    meta.update({
        schema.META_FORMAT_VERSION.encode(): schema.FORMAT_VERSION.encode(),
        schema.META_DIM.encode(): str(dim).encode(),
        schema.META_NORMALIZED.encode(): str(bool(normalized)).lower().encode(),
        schema.META_MODEL.encode(): (model or "").encode(),
        schema.META_CREATOR.encode(): _creator().encode(),
    })
    if parts:
        meta[schema.META_PARTS.encode()] = str(int(parts)).encode()
    return table.replace_schema_metadata(meta)


def atomic_output(path: Path) -> Path:
    """A temporary path beside ``path``; rename it into place with ``os.replace`` once complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def write_parquet_atomically(table: pa.Table, path: Path | str, row_group_rows: int | None = None) -> Path:
    """Write a Parquet file under a temporary name and rename it into place (never half-written)."""
    path = Path(path)
    tmp = atomic_output(path)
    try:
        pq.write_table(table, tmp, row_group_size=row_group_rows)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_embeddings(path: Path | str, ids: Sequence[str], vectors: np.ndarray, pid=None, camid=None, split=None,
                     paths=None, extra: pa.Table | dict | None = None, model: str | None = None,
                     row_group_rows: int | None = None, parts: np.ndarray | None = None) -> Path:
    """Write an embeddings file atomically (validated first, so a bad input never lands on disk).

    ``parts``: optional (n, P, d) part features, written as the ``parts`` column with ``retrieve.parts`` = P.
    """
    path = Path(path)
    table = embeddings_table(ids, vectors, pid, camid, split, paths, extra, parts)
    num_parts = 0 if parts is None else int(np.shape(parts)[1])
    emb = embeddings_from_table(table, path, {schema.META_PARTS: str(num_parts)} if num_parts else None)
    table = with_metadata(canonical_table(table, emb), emb.dim, emb.normalized, model, num_parts)
    return write_parquet_atomically(table, path, row_group_rows)


class EmbeddingsWriter:
    """Write an embeddings file batch by batch (for files larger than memory), atomically on close."""

    def __init__(self, path: Path | str, dim: int, model: str | None = None, normalized: bool = True,
                 with_columns: Iterable[str] = (schema.PID, schema.CAMID, schema.SPLIT)) -> None:
        self.path = Path(path)
        fields = [pa.field(schema.ID, pa.string()), pa.field(schema.EMBEDDING, schema.embedding_type(dim))]
        fields += [pa.field(c, schema.COLUMN_TYPES[c]) for c in with_columns]
        self.schema = with_metadata(pa.schema(fields).empty_table(), dim, normalized, model).schema
        self._tmp = atomic_output(self.path)
        self._writer = pq.ParquetWriter(self._tmp, self.schema)
        self.rows = 0

    def write(self, ids, vectors, **columns) -> None:
        table = embeddings_table(ids, np.asarray(vectors, dtype=np.float32),
                                 **{k: v for k, v in columns.items() if k != "extra"})
        self._writer.write_table(table.select(self.schema.names).cast(self.schema))
        self.rows += table.num_rows

    def close(self) -> Path:
        self._writer.close()
        os.replace(self._tmp, self.path)
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
