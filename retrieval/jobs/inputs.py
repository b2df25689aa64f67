"""Which rows of which files a job takes: the split rules, in one place.

* ``evaluate``: queries = the ``query`` split (``leave-one-out``: every row); gallery = the
  ``gallery`` split of the same file, or every row of ``--gallery FILE`` (``leave-one-out``: the
  queries), or none when only an index holds it.
* ``search`` / ``tune`` / ``build-index``: the split asked; else ``query`` (``gallery`` for
  build-index) when the file has a split column; else every row.
* ``verify --trials``: the ``query`` and ``gallery`` splits.

Wherever a file is named, a folder of Parquet files (``data.dataset``) is accepted too. A
distributed job (``--ray``) takes the same rows, but its gallery stays where it is: a
``GalleryView`` (the split of a data set, read part by part by the workers), never loaded here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.data.errors import DataError
from retrieval.labels import LabelledVectors, labelled
from retrieval.run_schema import input_paths


def has_split_column(path: Path) -> bool:
    """Whether the file (or the first file of a folder) has a ``split`` column."""
    try:
        if Path(path).is_dir():
            from retrieval.data.dataset import dataset_files

            path = dataset_files(path)[0]
        return "split" in pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid, ValueError):
        return False  # read_embeddings will name the problem


def default_split(path: Path, split: str | None, default: str) -> str | None:
    """The split to take: the one asked; else ``default`` when the file has splits; else every row (None)."""
    if split is not None:
        return split
    return default if has_split_column(path) else None


def read_split(path: Path, split: str | None, default: str):
    """(Embeddings of the chosen split, the split chosen) of one file (see ``default_split``)."""
    from retrieval.data.store import read_embeddings

    if not Path(path).exists():
        raise FileNotFoundError(2, "no such file", str(path))
    chosen = default_split(path, split, default)
    return read_embeddings(path, splits=chosen), chosen


@dataclass
class EvaluationSets:
    """Queries and gallery as labelled vectors (gallery None when only an index holds it)."""

    queries: LabelledVectors
    gallery: LabelledVectors | None
    splits: dict[str, str | None]  # the splits taken: query_split, gallery_split (None: every row)
    inputs: dict[str, Any] = field(default_factory=dict)  # run.json "inputs"


def evaluation_sets(embeddings: Path, gallery_file: Path | None, query_split: str | None, gallery_split: str | None,
                    protocol: str, need_gallery: bool, index: Path | None = None) -> EvaluationSets:
    """Select queries and gallery from the files as the rules above say."""
    from retrieval.data.store import read_embeddings

    emb = read_embeddings(embeddings)
    loo = protocol == "leave-one-out"
    chosen_query = None if loo and query_split is None else (query_split or "query")
    queries = emb if chosen_query is None else emb.by_split(chosen_query)
    if gallery_file is not None:
        other = read_embeddings(gallery_file)
        chosen_gallery = gallery_split
        gallery = other.by_split(gallery_split) if gallery_split else other
    elif loo and gallery_split is None:
        chosen_gallery, gallery = chosen_query, queries
    elif need_gallery or gallery_split is not None or (emb.split is not None and np.any(emb.split == "gallery")):
        chosen_gallery = gallery_split or "gallery"
        gallery = emb.by_split(chosen_gallery)
    else:
        chosen_gallery, gallery = None, None
    inputs = {**input_paths(embeddings=embeddings), "content_hash": emb.content_hash(),
              **input_paths(gallery=gallery_file), **input_paths(index=index)}
    return EvaluationSets(
        queries=labelled(queries, name="queries"),
        gallery=None if gallery is None else labelled(gallery, name="gallery"),
        splits={"query_split": chosen_query, "gallery_split": chosen_gallery},
        inputs=inputs,
    )


# ------------------------------------------------------------------------------------- search queries

QUERY_FILE_TYPES = (".parquet", ".npy", ".npz")


@dataclass
class QuerySet:
    """Queries for a search: labelled vectors, the split taken, and what run.json records about them."""

    queries: LabelledVectors
    split: str | None
    inputs: dict[str, Any]


def query_set(path: Path | None = None, *, split: str | None = None, ids: Path | None = None,
              vector: str | None = None, vector_file: Path | None = None) -> QuerySet:
    """The queries of a search, given one way: an embeddings Parquet file (its ``query`` split by
    default), a ``.npy`` matrix / ``.npz`` with a ``features`` array (ids from ``--ids`` or the
    ``.npz``'s ``names``, else q0, q1, …), one vector as text (``"0.1,0.2,…"``) or a ``.npy`` vector."""
    from retrieval.errors import OptionError

    given = [name for name, value in (("QUERIES", path), ("--vector", vector), ("--vector-file", vector_file))
             if value is not None]
    if len(given) != 1:
        raise OptionError(f"give the queries one way: a file, --vector or --vector-file (got {', '.join(given) or 'none'})",
                          "--vector")
    if ids is not None and (path is None or path.suffix.lower() == ".parquet"):
        raise OptionError("--ids names the rows of a .npy / .npz query file", "--ids")
    if vector is not None:
        return _array_queries(_parse_vector(vector), None, None, "--vector")
    if vector_file is not None:
        return _array_queries(_load_array(vector_file), None, vector_file, "--vector-file")
    suffix = path.suffix.lower()
    if suffix == ".parquet" or Path(path).is_dir():  # a file, or a folder of Parquet files
        emb, chosen = read_split(path, split, "query")
        return QuerySet(labelled(emb, name="queries"), chosen,
                        {**input_paths(embeddings=path), "content_hash": emb.content_hash()})
    if suffix not in (".npy", ".npz"):
        raise OptionError(f"{path}: queries are a {', '.join(QUERY_FILE_TYPES)} file (got '{suffix}')", "QUERIES",
                          "queries")
    if split is not None:
        raise OptionError("--split picks rows of a Parquet query file; a .npy / .npz has no splits", "--split")
    return _numpy_queries(path, ids)


def _parse_vector(text: str) -> np.ndarray:
    from retrieval.errors import OptionError

    parts = [part.strip() for part in text.replace(" ", ",").split(",") if part.strip()]
    values = []
    for position, part in enumerate(parts, start=1):
        try:
            values.append(float(part))
        except ValueError:
            raise OptionError(f"element {position} ({part!r}) is not a number", "--vector") from None
    if not values:
        raise OptionError("no numbers given (e.g. --vector \"0.1,0.2,0.3\")", "--vector")
    return np.asarray(values, dtype=np.float32)[None, :]


def _load_array(path: Path) -> np.ndarray:
    from retrieval.data.errors import DataError

    if not Path(path).is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    try:
        array = np.load(path, allow_pickle=False)
    except ValueError as exc:
        raise DataError(f"{path}: cannot read as a NumPy .npy array ({exc})") from None
    if isinstance(array, np.lib.npyio.NpzFile):
        raise DataError(f"{path}: an .npz archive; give it as the QUERIES file (its 'features' array)")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{path}: expected a float vector or matrix, got {array.dtype} of shape {array.shape}")
    return array


def _array_queries(vectors: np.ndarray, ids: list[str] | None, path: Path | None, how: str) -> QuerySet:
    from retrieval.data.store import embeddings_from_table
    from retrieval.data.writer import embeddings_table

    ids = ids if ids is not None else [f"q{i}" for i in range(len(vectors))]
    source = path if path is not None else Path(how)
    emb = embeddings_from_table(embeddings_table(ids, vectors), source)
    inputs = {**input_paths(embeddings=path), "content_hash": emb.content_hash(), "queries_given_as": how}
    return QuerySet(labelled(emb, name="queries"), None, inputs)


def _numpy_queries(path: Path, ids: Path | None) -> QuerySet:
    """A .npy matrix or an .npz (features, optional names / labels / cams) as labelled queries."""
    from retrieval.data.importers import ArrayKeys, import_numpy
    from retrieval.data.store import embeddings_from_table

    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    loaded = np.load(path, allow_pickle=False)
    if not isinstance(loaded, np.lib.npyio.NpzFile) and loaded.ndim == 1:  # one vector
        return _array_queries(_load_array(path), _read_ids(ids, 1) if ids else None, path, "QUERIES")
    table = import_numpy(path, ArrayKeys())
    if ids is not None:
        table = table.set_column(table.column_names.index("id"), "id",
                                 pa.array(_read_ids(ids, table.num_rows), pa.string()))
    emb = embeddings_from_table(table, path)
    return QuerySet(labelled(emb, name="queries"), None,
                    {**input_paths(embeddings=path), "content_hash": emb.content_hash(),
                     **input_paths(ids=ids)})


def _read_ids(path: Path, rows: int) -> list[str]:
    """Query ids: a .npy of names, or a text file with one id per line."""
    from retrieval.data.errors import DataError

    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    if path.suffix.lower() == ".npy":
        ids = [str(v) for v in np.load(path, allow_pickle=False).reshape(-1)]
    else:
        ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(ids) != rows:
        raise DataError(f"{path}: {len(ids)} ids for {rows} query vectors")
    return ids


# ------------------------------------------------------------------------------------- on a cluster


@dataclass
class DistributedSets:
    """The queries (read here) and the gallery as a view workers read part by part."""

    queries: LabelledVectors
    gallery: Any  # retrieval.distributed.shards.GalleryView, or None (index top-k mode without a gallery)
    splits: dict[str, str | None]
    inputs: dict[str, Any] = field(default_factory=dict)


def distributed_sets(embeddings: Path, gallery_file: Path | None, query_split: str | None, gallery_split: str | None,
                     protocol: str, need_gallery: bool, index: Path | None = None, min_parts: int = 1) -> DistributedSets:
    """The rows ``evaluation_sets`` takes, without loading the gallery: one streaming pass over
    ``embeddings`` keeps the queries and hashes every row (the same content hash)."""
    from retrieval.distributed.shards import GalleryView

    loo = protocol == "leave-one-out"
    chosen_query = None if loo and query_split is None else (query_split or "query")
    pass_ = streamed(embeddings, keep=chosen_query)
    if gallery_file is not None:
        chosen_gallery, source = gallery_split, gallery_file
    elif loo and gallery_split is None:
        chosen_gallery, source = chosen_query, embeddings
    elif need_gallery or gallery_split is not None or "gallery" in pass_.present:
        chosen_gallery, source = gallery_split or "gallery", embeddings
    else:
        chosen_gallery, source = None, None
    view = None if source is None else GalleryView.of(source, chosen_gallery, min_parts=min_parts)
    inputs = {**input_paths(embeddings=embeddings), "content_hash": pass_.content_hash,
              **input_paths(gallery=gallery_file), **input_paths(index=index)}
    return DistributedSets(pass_.kept, view, {"query_split": chosen_query, "gallery_split": chosen_gallery}, inputs)


@dataclass
class StreamedPass:
    """One pass over a data set on the driver: the rows kept, the content hash, the splits seen."""

    kept: LabelledVectors
    content_hash: str
    present: set[str]
    counted: int  # rows of the counted split


def streamed(path: Path, keep: str | None, hashed: tuple[str, ...] | None = None,
             count: str | None = None) -> StreamedPass:
    """Stream a data set once: keep the rows of split ``keep`` (None: all), hash the rows of the
    splits ``hashed`` (None: all, in order), count the rows of split ``count``."""
    from retrieval.data.dataset import open_dataset
    from retrieval.data.hashing import ContentHasher
    from retrieval.data.store import concat_embeddings

    dataset = open_dataset(path)
    for split in {keep, count, *(hashed or ())} - {None}:
        if not dataset.has_column("split"):
            raise DataError(f"{path}: no 'split' column, cannot select split '{split}'")
    hasher, kept, present, counted = ContentHasher(), [], set(), 0
    for batch in dataset.iter_batches(check_duplicates=False):
        split = batch.split
        if split is not None:
            present.update(split.tolist())
        hashed_rows = batch if hashed is None else batch.select(np.isin(split, hashed))
        hasher.update(hashed_rows.ids, hashed_rows.vectors)
        kept.append(batch if keep is None else batch.select(split == keep))
        counted += int(np.sum(split == count)) if count is not None else 0
    rows = concat_embeddings(kept, source=str(path), metadata=dataset.metadata)
    if len(rows) == 0:
        raise DataError(f"{path}: split '{keep}' is empty (splits present: {', '.join(sorted(present))})")
    _check_unique(path, rows.ids)
    return StreamedPass(labelled(rows, name="queries"), hasher.hexdigest(), present, counted)


def _check_unique(source: Path, ids: np.ndarray) -> None:
    from retrieval.data.store import check_unique_ids

    check_unique_ids(source, ids)
