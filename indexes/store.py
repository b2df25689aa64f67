"""Index folders: the public entry points (build, open, read the manifest).

The work is split by responsibility: ``indexes.build`` (stream, sample, train, add),
``indexes.folder`` (the folder on disk: manifest, row table, atomic writes and locked updates)
and ``indexes.handle`` (an opened index and its search). Import from here or from those modules.
"""

from retrieval.indexes.build import ArrayBatch, BuildResult, build_index
from retrieval.indexes.folder import INDEX_FILE, MANIFEST_FILE, ROWS_FILE, read_manifest
from retrieval.indexes.handle import IndexHandle, load_index

__all__ = [
    "ArrayBatch", "BuildResult", "build_index", "IndexHandle", "load_index", "read_manifest",
    "INDEX_FILE", "MANIFEST_FILE", "ROWS_FILE",
]
