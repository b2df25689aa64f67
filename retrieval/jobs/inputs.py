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
