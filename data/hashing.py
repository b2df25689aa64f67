"""The content hash of an embeddings file: ids and vectors in row order, not the Parquet layout."""

from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np


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
        # the array's own buffer, no bytes copy (a gallery can be gigabytes)
        self._vectors.update(memoryview(np.ascontiguousarray(vectors, dtype="<f4")).cast("B"))
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
