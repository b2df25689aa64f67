"""Labelled vectors and the surface's one door onto the junk/match rule (``eval.protocol.RankingLabels``).

Every place that says whether a gallery item is a match, a non-match or junk for a query goes
through here: evaluation and verification trials (``retrieval.jobs``), the search result tables
(``jobs.search``), and ``Gallery.show`` / ``ranked_strip``. So ``no-camera`` never applies the camera
rule, ``leave-one-out`` always removes the query itself, and the junk identities are the ones asked.

* ``LabelledVectors`` / ``labelled``: vectors with ids, pid, camid (an ``Embeddings`` object or
  arrays with labels given beside them);
* ``default_protocol``: market when both sides have cameras, leave-one-out when the queries are
  gallery items, else no-camera (the notebook's default; the CLI defaults to market);
* ``check_labels``: one clear line for inputs the protocol cannot score;
* ``ranking_labels``: the ``RankingLabels`` of a query set and a gallery under a protocol;
* ``pair_status``: "match" / "non-match" / "junk" of (query, gallery item) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from retrieval.data.errors import DataError
from retrieval.errors import RetrieveError
from retrieval.eval.protocol import RankingLabels

DEFAULT_JUNK_PIDS = (-1,)


@dataclass(frozen=True)
class LabelledVectors:
    """Vectors with the labels evaluation needs (from an ``Embeddings`` object or plain arrays).

    ``camid`` is None unless every row's camera is known; ``camid_missing`` counts the rows
    without one (for the error that names them). ``source``: the file they came from, if any.
    """

    vectors: np.ndarray
    ids: np.ndarray
    pid: np.ndarray | None
    camid: np.ndarray | None
    path: np.ndarray | None = None
    source: str = ""
    camid_missing: int = 0
    parts: np.ndarray | None = None  # (n, P·d) part features (the ``parts`` column), when the data has them
    num_parts: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return int(self.vectors.shape[1])


def labelled(source: Any, pid=None, camid=None, ids=None, name: str = "queries") -> LabelledVectors:
    """Accept an ``data.store.Embeddings`` (its own labels) or an array with labels given beside it."""
    if isinstance(source, LabelledVectors):
        return source
    if hasattr(source, "vectors") and hasattr(source, "ids"):
        return _from_embeddings(source, pid, camid)
    vectors = np.asarray(source, dtype=np.float32)
    if vectors.ndim == 1:
        vectors = vectors[None, :]
    if vectors.ndim != 2:
        raise RetrieveError(f"{name}: expected a (rows, dimension) array, got shape {vectors.shape}")
    ids = np.array([f"{name[0]}{i}" for i in range(len(vectors))], dtype=object) if ids is None else np.asarray(ids, dtype=object)
    if len(ids) != len(vectors):
        raise RetrieveError(f"{name}: {len(ids)} ids for {len(vectors)} vectors")
    return LabelledVectors(
        vectors=np.ascontiguousarray(vectors),
        ids=ids,
        pid=None if pid is None else np.asarray(pid, dtype=np.int64),
        camid=None if camid is None else np.asarray(camid, dtype=np.int64),
        camid_missing=len(vectors) if camid is None else 0,
    )


def _from_embeddings(source: Any, pid, camid) -> LabelledVectors:
    known = getattr(source, "camid_known", None)
    if camid is not None:
        source_camid, missing = np.asarray(camid, dtype=np.int64), 0
    elif source.camid is None:
        source_camid, missing = None, len(source.ids)
    elif known is not None and not bool(np.all(known)):
        source_camid, missing = None, int((~np.asarray(known)).sum())
    else:
        source_camid, missing = source.camid, 0
    return LabelledVectors(
        vectors=np.ascontiguousarray(source.vectors, dtype=np.float32),
        ids=np.asarray(source.ids, dtype=object),
        pid=source.pid if pid is None else np.asarray(pid, dtype=np.int64),
        camid=source_camid,
        path=getattr(source, "path", None),
        source=str(getattr(source, "source", "") or ""),
        camid_missing=missing,
        parts=getattr(source, "parts", None),
        num_parts=int(getattr(source, "num_parts", 0) or 0),
    )


def default_protocol(queries: LabelledVectors, gallery: LabelledVectors) -> str:
    """market when both sides have cameras; leave-one-out when the queries are gallery items; else no-camera."""
    if queries.camid is not None and gallery.camid is not None:
        return "market"
    if set(queries.ids.tolist()) & set(gallery.ids.tolist()):
        return "leave-one-out"
    return "no-camera"


def check_labels(parts: Iterable[tuple[str, LabelledVectors | None]], protocol: str) -> None:
    """One clear line for inputs the protocol cannot score: no identities, or no cameras under market."""
    for name, part in parts:
        if part is None:
            continue
        where = f"{part.source}: " if part.source else ""
        if part.pid is None:
            raise DataError(f"{where}no 'pid' column in the {name}; evaluation needs identities")
        if protocol == "market" and part.camid is None:
            raise DataError(
                f"{where}camid missing for {part.camid_missing or len(part)} of {len(part)} {name} rows; the market "
                f"protocol needs cameras (use --protocol no-camera for data without cameras)"
            )


def check_dimensions(queries: LabelledVectors, gallery: LabelledVectors | None) -> None:
    if gallery is not None and queries.dim != gallery.dim and gallery.vectors.shape[1] > 0:
        raise DataError(
            f"dimension mismatch: queries ({queries.source or 'queries'}) have {queries.dim} dimensions, "
            f"gallery ({gallery.source or 'gallery'}) has {gallery.dim}"
        )


def ranking_labels(query_pid, gallery_pid, query_camid, gallery_camid, *, protocol: str,
                   junk_pids: Iterable[int] = DEFAULT_JUNK_PIDS, query_ids=None, gallery_ids=None) -> RankingLabels:
    """The protocol's labels: cameras are passed only under ``market`` (the other protocols ignore them)."""
    market = protocol == "market"
    return RankingLabels(
        query_pid, gallery_pid, query_camid if market else None, gallery_camid if market else None,
        protocol=protocol, junk_pids=tuple(junk_pids), query_ids=query_ids, gallery_ids=gallery_ids,
    )


def labels_between(queries: LabelledVectors, gallery: LabelledVectors, protocol: str,
                   junk_pids: Iterable[int] = DEFAULT_JUNK_PIDS) -> RankingLabels:
    return ranking_labels(queries.pid, gallery.pid, queries.camid, gallery.camid, protocol=protocol,
                          junk_pids=junk_pids, query_ids=queries.ids, gallery_ids=gallery.ids)


def pair_flags(labels: RankingLabels, rows: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(is_match, is_junk) of (query row, gallery column) pairs."""
    rows = np.asarray(rows, dtype=np.int64)
    cols = np.asarray(cols, dtype=np.int64)
    return labels.is_match(rows, cols), labels.is_junk(rows, cols)


def pair_status(labels: RankingLabels, rows: np.ndarray, cols: np.ndarray) -> list[str]:
    """"match", "junk" or "non-match" of each pair, as the protocol of ``labels`` decides."""
    match, junk = pair_flags(labels, rows, cols)
    return ["junk" if j else ("match" if m else "non-match") for m, j in zip(match.tolist(), junk.tolist())]
