"""Which rows of which files a job takes: the split rules, in one place.

* ``evaluate``: queries = the ``query`` split (``leave-one-out``: every row); gallery = the
  ``gallery`` split of the same file, or every row of ``--gallery FILE`` (``leave-one-out``: the
  queries), or none when only an index holds it.
* ``search`` / ``tune`` / ``build-index``: the split asked; else ``query`` (``gallery`` for
  build-index) when the file has a split column; else every row.
* ``verify --trials``: the ``query`` and ``gallery`` splits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.labels import LabelledVectors, labelled
from retrieval.run_schema import input_paths


def has_split_column(path: Path) -> bool:
    try:
        return "split" in pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid):
        return False  # read_embeddings will name the problem


def default_split(path: Path, split: str | None, default: str) -> str | None:
    """The split to take: the one asked; else ``default`` when the file has splits; else every row (None)."""
    if split is not None:
        return split
    return default if has_split_column(path) else None


def read_split(path: Path, split: str | None, default: str):
    """(Embeddings of the chosen split, the split chosen) of one file (see ``default_split``)."""
    from retrieval.data.store import read_embeddings

    if not Path(path).is_file():
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
