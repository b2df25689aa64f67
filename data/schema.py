"""The embeddings Parquet format: column names, types and file metadata keys.

Required columns: ``id`` (string, unique) and ``embedding`` (fixed_size_list<float32>[d],
which DuckDB reads as ``FLOAT[d]``). Usual columns: ``pid`` (int64), ``camid`` (int32,
nullable), ``split`` (string), ``path`` (string). Optional ``parts``
(fixed_size_list<float32>[P·d]): P local (part) features of d values per row, stripe by stripe,
with the file metadata ``retrieve.parts`` = P. Any other column is carried through.
File key-value metadata (all values are strings, keys prefixed ``retrieve.``):
format version, dim, normalized ("true"/"false"), model, creator, parts (when the column is there);
from a data set layout (carried from its manifest by ``import --layout``): dataset, and the
evaluation defaults the layout asks for (cmc_mode).
"""

from __future__ import annotations

import pyarrow as pa

FORMAT_VERSION = "1"

ID = "id"
EMBEDDING = "embedding"
PID = "pid"
CAMID = "camid"
SPLIT = "split"
PATH = "path"
PARTS = "parts"

KNOWN_COLUMNS = (ID, EMBEDDING, PID, CAMID, SPLIT, PATH, PARTS)
KNOWN_SPLITS = ("train", "query", "gallery", "free")

META_PREFIX = "retrieve."
META_FORMAT_VERSION = "retrieve.format_version"
META_DIM = "retrieve.dim"
META_NORMALIZED = "retrieve.normalized"
META_MODEL = "retrieve.model"
META_CREATOR = "retrieve.creator"
META_DATASET = "retrieve.dataset"
META_CMC_MODE = "retrieve.cmc_mode"
LAYOUT_META_KEYS = (META_DATASET, META_CMC_MODE)
META_PARTS = "retrieve.parts"

COLUMN_TYPES: dict[str, pa.DataType] = {
    ID: pa.string(),
    PID: pa.int64(),
    CAMID: pa.int32(),
    SPLIT: pa.string(),
    PATH: pa.string(),
}


def embedding_type(dim: int) -> pa.DataType:
    """The Arrow type of the embedding column for dimension ``dim``."""
    return pa.list_(pa.float32(), dim)
