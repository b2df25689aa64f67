"""Gallery shards: which rows of which files each worker reads, and the reading itself.

A ``GalleryView`` is the gallery of a distributed job: the rows of one split (or every row) of a
data set (``data.dataset``: one Parquet file or a folder of them), cut into parts (files, or row
ranges of a large file). A worker reads only its part (``load_part``), so the driver never holds
the gallery's vectors. The gallery's row order, hence every global column, is the data set's
order filtered by the split: the order a one-process run reads.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from retrieval.data.dataset import DatasetPart, open_dataset, plan_parts, read_part
from retrieval.data.errors import DataError
from retrieval.labels import LabelledVectors, labelled

# Parts are cut so that none holds more than this many bytes of vectors (a worker's share at a time).
MAX_PART_BYTES = 64 << 20


@dataclass(frozen=True)
class GalleryView:
    """The gallery rows of a data set: the rows of ``split`` (None: every row), in its files' order."""

    source: str
    split: str | None
    parts: tuple[DatasetPart, ...]

    @classmethod
    def of(cls, path: Path | str, split: str | None, min_parts: int = 1,
           max_part_bytes: int = MAX_PART_BYTES) -> "GalleryView":
        dataset = open_dataset(path)
        if split is not None and not dataset.has_column("split"):
            raise DataError(f"{path}: no 'split' column, cannot select split '{split}'")
        embedding = dataset.arrow_schema.field("embedding").type
        dim = getattr(embedding, "list_size", 0) or 0  # variable-length lists: cut by files only
        max_rows = max(1, max_part_bytes // (4 * dim)) if dim > 0 else None
        parts = plan_parts(dataset, min_parts=min_parts, max_rows=max_rows)
        if not parts:
            raise DataError(f"{path}: the data set has no rows")
        return cls(str(path), split, tuple(parts))

    def __len__(self) -> int:
        return len(self.parts)

    def empty_error(self) -> DataError:
        what = f"split '{self.split}' is empty" if self.split is not None else "the data set has no rows"
        return DataError(f"{self.source}: {what}")


# A worker keeps the parts it read, most recent first, up to this many bytes of vectors, so that the
# rounds of a job (and the jobs of a session) do not read a part again; 0 keeps only the current one.
CACHE_ENV = "RETRIEVE_RAY_CACHE_BYTES"
DEFAULT_CACHE_BYTES = 1 << 30

@dataclass
class _Entry:
    rows: LabelledVectors
    token: str | None = None  # the job whose state is kept beside the rows
    state: object = None


_cache: "OrderedDict[tuple, _Entry]" = OrderedDict()


def _entry(part: DatasetPart, split: str | None) -> _Entry:
    stat = os.stat(part.path)
    key = (str(part.path), part.start, part.stop, split, stat.st_mtime_ns, stat.st_size)
    if key in _cache:
        _cache.move_to_end(key, last=False)
        return _cache[key]
    budget = int(os.environ.get(CACHE_ENV, DEFAULT_CACHE_BYTES))
    entry = _Entry(labelled(read_part(part, split), name="gallery"))
    _cache[key] = entry
    _cache.move_to_end(key, last=False)
    held = 0
    for other in list(_cache):
        held += 2 * _cache[other].rows.vectors.nbytes  # the rows and about as much of derived state
        if other != key and held > budget:
            del _cache[other]
    return entry


def load_part(part: DatasetPart, split: str | None) -> LabelledVectors:
    """One part's gallery rows as labelled vectors, from this worker's cache when it read them already."""
    return _entry(part, split).rows


def part_state(part: DatasetPart, split: str | None, token: str, make):
    """(The part's rows, ``make(rows)``), the state kept beside the rows for the rounds of one job
    (``token``): a distance source with its norms, the labels, ... built once per worker and part."""
    entry = _entry(part, split)
    if entry.token != token:
        entry.token, entry.state = token, make(entry.rows)
    return entry.rows, entry.state
