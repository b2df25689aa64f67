"""An embeddings data set: one Parquet file, or a folder of Parquet files read as one.

A folder's ``*.parquet`` files are taken in name order (``part-00000.parquet``,
``part-00001.parquet``, ...; names starting with ``.`` or ``_`` are skipped, as Spark's
``_SUCCESS``); their rows, in that order, are the data set's rows. Every file must have the same
columns with the same types, the embedding's dimension included: a file that differs from the
first is named. The content hash (``data.hashing``) runs over every row in order, so it is the
same for the data as one file or split into files in any way.

Reading:

* ``EmbeddingDataset.read`` validates every file (errors name the file) and returns one
  ``Embeddings``; ids must be unique across the whole set.
* ``EmbeddingDataset.iter_batches`` streams the files in order (for sets larger than memory).
* ``plan_parts`` cuts the set into row ranges (``DatasetPart``) and ``read_part`` reads one:
  what a worker of a distributed job reads, without the rest of the set. A part checks its own
  ids; only a whole-set read checks ids across files.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.data import schema
from retrieval.data.errors import DataError
from retrieval.data.hashing import ContentHasher


@dataclass(frozen=True)
class DatasetFile:
    """One file of a data set: its rows are the set's rows ``first_row .. first_row + rows``."""

    path: Path
    rows: int
    first_row: int
    row_group_rows: tuple[int, ...]

    @property
    def stop_row(self) -> int:
        return self.first_row + self.rows


@dataclass(frozen=True)
class DatasetPart:
    """Rows ``start .. stop`` (within the file) of one file: the unit a worker reads."""

    path: Path
    start: int
    stop: int
    row_group_rows: tuple[int, ...]

    @property
    def rows(self) -> int:
        return self.stop - self.start

    def describe(self) -> str:
        return f"{self.path} rows {self.start}..{self.stop}"


@dataclass(frozen=True)
class EmbeddingDataset:
    """The files of one data set, checked to share one schema (``open_dataset``)."""

    source: Path
    files: tuple[DatasetFile, ...]
    arrow_schema: pa.Schema

    @property
    def is_folder(self) -> bool:
        return self.source.is_dir()

    @property
    def num_rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def column_names(self) -> list[str]:
        return list(self.arrow_schema.names)

    @property
    def metadata(self) -> dict[str, str]:
        """The ``retrieve.*`` metadata of the first file."""
        return decode_metadata(self.arrow_schema.metadata)

    def has_column(self, name: str) -> bool:
        return name in self.arrow_schema.names

    def read(self, splits: str | Sequence[str] | None = None, columns: Sequence[str] | None = None):
        """Every row (or the rows of some splits) as one validated ``Embeddings``."""
        from retrieval.data.store import check_unique_ids, concat_embeddings, read_embeddings

        if not self.is_folder:
            return read_embeddings(self.files[0].path, splits=splits, columns=columns)
        files = [f for f in self.files if f.rows]
        if not files:
            raise DataError(f"{self.source}: the data set has no rows")
        parts = [read_embeddings(f.path, columns=columns) for f in files]
        check_same_dimension(self, [(f.path, p.dim) for f, p in zip(files, parts)])
        whole = concat_embeddings(parts, source=str(self.source), metadata=self.metadata)
        check_unique_ids(self.source, whole.ids, " across its files")
        return select_splits(whole, splits)

    def iter_batches(self, batch_rows: int = 65536, splits: str | Sequence[str] | None = None,
                     check_duplicates: bool = True):
        """Stream the rows in order as validated batches (see ``data.store.iter_embedding_batches``)."""
        from retrieval.data.store import iter_embedding_batches

        if not self.is_folder:
            yield from iter_embedding_batches(self.files[0].path, batch_rows, splits, check_duplicates)
            return
        seen: set[str] | None = set() if check_duplicates else None
        rows = 0
        dims: list[tuple[Path, int]] = []
        for file in self.files:
            if file.rows == 0:
                continue
            for batch in _file_batches(file.path, batch_rows, seen):
                if not dims or dims[-1][0] != file.path:
                    dims.append((file.path, batch.dim))
                    check_same_dimension(self, dims)
                batch = select_splits(batch, splits, allow_empty=True)
                rows += len(batch)
                if len(batch):
                    yield batch
        if rows == 0:
            raise nothing_selected(self.source, splits, "the data set has no rows")

    def content_hash(self, batch_rows: int = 65536) -> str:
        """The content hash of every row in order (one streaming pass; nothing held but a batch)."""
        hasher = ContentHasher()
        for batch in self.iter_batches(batch_rows, check_duplicates=False):
            hasher.update(batch.ids, batch.vectors)
        return hasher.hexdigest()


# --------------------------------------------------------------------------- opening


def dataset_files(path: Path | str) -> list[Path]:
    """The Parquet files of a folder in name order (hidden and ``_``-prefixed names skipped)."""
    folder = Path(path)
    files = sorted(p for p in folder.iterdir()
                   if p.suffix == ".parquet" and not p.name.startswith((".", "_")) and p.is_file())
    if not files:
        raise DataError(f"{folder}: the folder holds no Parquet files (*.parquet)")
    return files


def is_dataset_path(path: Path | str) -> bool:
    """True for an existing file or folder (what ``open_dataset`` accepts)."""
    p = Path(path)
    return p.is_file() or p.is_dir()


def open_dataset(path: Path | str) -> EmbeddingDataset:
    """A file or a folder of files as one data set; a folder's files must share one schema."""
    source = Path(path)
    if not source.exists():
        raise DataError(f"{source}: no such file or folder")
    paths = dataset_files(source) if source.is_dir() else [source]
    files: list[DatasetFile] = []
    reference: tuple[Path, pa.Schema] | None = None
    first_row = 0
    for file_path in paths:
        meta = _footer(file_path)
        arrow = meta.schema.to_arrow_schema()
        _check_required(file_path, arrow)
        if reference is None:
            reference = (file_path, arrow)
        else:
            check_same_schema(reference, file_path, arrow)
        groups = tuple(meta.row_group(i).num_rows for i in range(meta.num_row_groups))
        files.append(DatasetFile(file_path, meta.num_rows, first_row, groups))
        first_row += meta.num_rows
    return EmbeddingDataset(source, tuple(files), reference[1])


def _footer(path: Path) -> pq.FileMetaData:
    try:
        return pq.read_metadata(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a Parquet file ({' '.join(str(exc).split())[:120]})") from None


def _check_required(path: Path, arrow: pa.Schema) -> None:
    for required in (schema.ID, schema.EMBEDDING):
        if required not in arrow.names:
            raise DataError(f"{path}: missing required column '{required}' "
                            f"(columns present: {', '.join(arrow.names) or 'none'})")


def check_same_schema(reference: tuple[Path, pa.Schema], path: Path, arrow: pa.Schema) -> None:
    """A file of a folder must have the first file's columns, with the same types."""
    first_path, first = reference
    missing = [n for n in first.names if n not in arrow.names]
    extra = [n for n in arrow.names if n not in first.names]
    if missing or extra:
        what = "; ".join(filter(None, [missing and f"lacks column(s) {', '.join(missing)}",
                                       extra and f"has extra column(s) {', '.join(extra)}"]))
        raise DataError(f"{path}: its columns differ from {first_path.name} of the same folder: {what}")
    for name in first.names:
        mine, theirs = arrow.field(name).type, first.field(name).type
        if mine == theirs:
            continue
        if name == schema.EMBEDDING and pa.types.is_fixed_size_list(mine) and pa.types.is_fixed_size_list(theirs):
            raise DataError(f"{path}: embedding dimension {mine.list_size}, but {first_path.name} of the same "
                            f"folder has {theirs.list_size}")
        raise DataError(f"{path}: column '{name}' is {mine}, but {theirs} in {first_path.name} of the same folder")


def check_same_dimension(dataset: EmbeddingDataset, dims: list[tuple[Path, int]]) -> None:
    """Variable-length embedding lists: every file's (read) dimension must be the first file's."""
    first_path, first_dim = dims[0]
    for path, dim in dims[1:]:
        if dim != first_dim:
            raise DataError(f"{path}: embedding dimension {dim}, but {first_path.name} of the same folder has "
                            f"{first_dim}")


def decode_metadata(raw: dict[bytes, bytes] | None) -> dict[str, str]:
    if not raw:
        return {}
    return {
        k.decode("utf-8", "replace"): v.decode("utf-8", "replace")
        for k, v in raw.items()
        if k.startswith(schema.META_PREFIX.encode())
    }


def _file_batches(path: Path, batch_rows: int, seen: set[str] | None):
    from retrieval.data.store import SHOW_FIRST, iter_embedding_batches

    for batch in iter_embedding_batches(path, batch_rows=batch_rows, check_duplicates=seen is not None):
        if seen is not None:
            repeated = [i for i in batch.ids if i in seen]
            if repeated:
                raise DataError(f"{path}: column 'id' has value(s) already seen in an earlier file of the folder "
                                f"(first: {', '.join(repeated[:SHOW_FIRST])})")
            seen.update(batch.ids.tolist())
        yield batch


# --------------------------------------------------------------------------- splits


def _split_list(splits: str | Sequence[str] | None) -> list[str] | None:
    if splits is None:
        return None
    return [splits] if isinstance(splits, str) else list(splits)


def nothing_selected(source, splits, otherwise: str, present=()) -> DataError:
    """The error for a stream that yielded no row: the splits asked were empty, or there were no rows."""
    wanted = _split_list(splits)
    if wanted and present:
        return empty_split_error(source, ", ".join(wanted), present)
    what = f"split(s) {', '.join(wanted)} are empty" if wanted else otherwise
    return DataError(f"{source}: {what}")


def empty_split_error(source, name: str, present) -> DataError:
    """No row has split ``name``: name the splits present and the closest one (a typo, e.g. 'galery')."""
    present = sorted({str(p) for p in present})
    close = difflib.get_close_matches(name, present, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return DataError(f"{source}: split '{name}' is empty (splits present: {', '.join(present) or 'none'}){hint}")


def select_splits(emb, splits: str | Sequence[str] | None, allow_empty: bool = False):
    """The rows of some splits; a split with no row is an error (unless ``allow_empty``)."""
    wanted = _split_list(splits)
    if wanted is None:
        return emb
    if emb.split is None:
        raise DataError(f"{emb.source}: no 'split' column, cannot select split(s) {', '.join(wanted)}")
    if not allow_empty:
        for name in wanted:
            if not np.any(emb.split == name):
                raise empty_split_error(emb.source, name, emb.split.tolist())
    return emb.select(np.isin(emb.split, wanted))


# --------------------------------------------------------------------------- parts


def plan_parts(dataset: EmbeddingDataset, min_parts: int = 1, max_rows: int | None = None) -> list[DatasetPart]:
    """Row ranges covering the set in order: each file one part, cut further so that there are at
    least ``min_parts`` parts and none holds more than ``max_rows`` rows (empty files are skipped)."""
    total = dataset.num_rows
    if total == 0:
        return []
    cap = total if max_rows is None else max(1, max_rows)
    cap = min(cap, max(1, -(-total // max(1, min_parts))))
    parts = []
    for file in dataset.files:
        pieces = max(1, -(-file.rows // cap))
        edges = np.linspace(0, file.rows, pieces + 1).round().astype(int)
        parts += [DatasetPart(file.path, int(a), int(b), file.row_group_rows)
                  for a, b in zip(edges[:-1], edges[1:]) if b > a]
    return parts


def read_part(part: DatasetPart, splits: str | Sequence[str] | None = None, columns: Sequence[str] | None = None,
              batch_rows: int = 16384):
    """The validated rows of one part (of some splits; possibly none), read without the rest of the file.

    Only the row groups that overlap the part are read, in batches (a batch's copies are all that
    is held beside the result); errors name the file.
    """
    from retrieval.data.store import check_unique_ids, concat_embeddings, embeddings_from_table

    parquet = pq.ParquetFile(part.path)
    names = parquet.schema_arrow.names
    metadata = decode_metadata(parquet.schema_arrow.metadata)
    wanted = [c for c in names if c in schema.KNOWN_COLUMNS or columns is None or c in columns]
    bounds = np.concatenate([[0], np.cumsum(part.row_group_rows)]).astype(int)
    first = max(int(np.searchsorted(bounds, part.start, side="right")) - 1, 0)
    last = max(int(np.searchsorted(bounds, part.stop, side="left")), first + 1)
    row = int(bounds[first]) if len(bounds) > 1 else 0
    pieces = []
    batches = parquet.iter_batches(batch_size=batch_rows, row_groups=list(range(first, min(last, len(bounds) - 1))),
                                   columns=wanted) if len(bounds) > 1 else iter(())
    for batch in batches:
        lo, hi = max(part.start - row, 0), min(part.stop - row, batch.num_rows)
        row += batch.num_rows
        if hi > lo:
            emb = embeddings_from_table(pa.Table.from_batches([batch]).slice(lo, hi - lo), part.path, metadata)
            pieces.append(select_splits(emb, splits, allow_empty=True))
        if row >= part.stop:
            break
    if not pieces:
        empty = parquet.schema_arrow.empty_table().select(wanted)
        return select_splits(embeddings_from_table(empty, part.path, metadata, check_unique=False), splits,
                             allow_empty=True)
    if len(pieces) == 1:
        return pieces[0]
    rows = concat_embeddings(pieces, source=str(part.path), metadata=metadata)
    check_unique_ids(part.path, rows.ids)
    return rows


def iter_part_batches(parts: Sequence[DatasetPart], splits=None) -> Iterator:
    """The parts' rows in order, one part at a time."""
    for part in parts:
        yield read_part(part, splits)


def count_part_rows(part: DatasetPart, split: str | None) -> int:
    """How many rows of one part belong to ``split`` (every row: None), reading only that column."""
    if split is None:
        return part.rows
    parquet = pq.ParquetFile(part.path)
    bounds = np.concatenate([[0], np.cumsum(part.row_group_rows)]).astype(int)
    first = max(int(np.searchsorted(bounds, part.start, side="right")) - 1, 0)
    last = max(int(np.searchsorted(bounds, part.stop, side="left")), first + 1)
    column = parquet.read_row_groups(list(range(first, last)), columns=[schema.SPLIT]).column(schema.SPLIT)
    values = column.slice(part.start - int(bounds[first]), part.rows)
    return int(np.sum(np.asarray(values.to_pylist(), dtype=object) == split))
