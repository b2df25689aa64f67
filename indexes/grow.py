"""Indexes that grow and shrink: add rows from another embeddings file, remove rows by id.

Row numbers stay 0..n−1 in ``rows.parquet`` order, so search results map to ids as before:

* **add** (every kind faiss can add to: Flat, IVF, IVF-PQ, HNSW): the new rows follow the old
  ones. A Flat index then equals a build on the union; a trained IVF puts each new vector in the
  list its trained quantizer assigns, so its lists equal those of the union added to the same
  trained index (training is not repeated: rebuild to retrain on the union).
* **remove** (Flat and other flat-code indexes, IVF): the remaining rows keep their order and are
  renumbered; IVF lists keep their entries' order with the removed ones dropped, i.e. the lists of
  the remaining rows added to the same trained index. HNSW is refused: faiss cannot delete nodes
  from an HNSW graph (``remove_ids`` is not implemented for it); rebuild without those ids.

Ids must stay unique: an add whose ids are already in the index is refused, naming them. The
manifest keeps ``sources`` (each file added, with its content hash and row count, and each
removal), the row ``count``, and ``content_hash`` null once no single file holds the rows (the
content-hash check against an embeddings file then explains why it cannot be made). The folder is
rewritten atomically; a concurrent change of the same index is detected under its lock.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.common.atomic import staging_folder
from retrieval.common.text import few
from retrieval.indexes.build import _rows_of
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.folder import (
    BUILD_IDENTITY_KEYS,
    INDEX_FILE,
    MANIFEST_FILE,
    ROWS_FILE,
    read_folder,
    read_manifest,
)
from retrieval.indexes.handle import IndexHandle, prepare_direct_map
from retrieval.indexes.metric import prepare_vectors
from retrieval.indexes.search import hnsw_of, ivf_of

HNSW_REMOVAL = ("HNSW indexes cannot remove rows: faiss cannot delete nodes from an HNSW graph "
                "(remove_ids is not implemented for it); rebuild the index without those ids")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _sources(manifest: dict) -> list[dict[str, Any]]:
    """The manifest's source list; an index from before growth had one source, its build."""
    if manifest.get("sources"):
        return list(manifest["sources"])
    return [{"op": "build", "path": manifest.get("source"), "split": manifest.get("split"),
             "content_hash": manifest.get("content_hash"), "rows": manifest.get("count"),
             "at": manifest.get("created")}]


def add_rows(folder: Path | str, batch: Any, *, source_path: str | None, content_hash: str | None,
             split: str | None = None) -> IndexHandle:
    """Add the rows of ``batch`` (ids, vectors, optional pid / camid / split) to the index in ``folder``."""
    folder = Path(folder)
    index, manifest, rows = read_folder(folder)
    ids = np.asarray([str(i) for i in batch.ids], dtype=object)
    _refuse_duplicates(ids, rows)
    vectors = prepare_vectors(batch.vectors, manifest["metric"], what="new rows")
    if vectors.shape[1] != index.d:
        raise FaissIndexError(f"the new rows have {vectors.shape[1]} dimensions, the index {index.d}")
    if len(vectors) == 0:
        raise FaissIndexError("no rows to add")
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.set_direct_map_type(faiss.DirectMap.NoMap)  # rebuilt below when the index keeps one
    before = index.ntotal
    index.add(vectors)
    if index.ntotal != before + len(vectors):
        raise FaissIndexError(f"faiss added {index.ntotal - before} of {len(vectors)} rows to {manifest['factory']}")
    new_rows = pa.concat_tables([rows, _rows_of(batch, split).cast(rows.schema)])
    change = {"op": "add", "path": source_path, "split": split, "content_hash": content_hash, "rows": len(vectors),
              "at": _now()}
    return _publish(folder, index, manifest, new_rows, change)


def remove_rows(folder: Path | str, remove_ids: list[str]) -> IndexHandle:
    """Remove the rows with these ids from the index in ``folder`` (HNSW refused)."""
    folder = Path(folder)
    index, manifest, rows = read_folder(folder)
    if hnsw_of(index) is not None:
        raise FaissIndexError(f"{folder}: {HNSW_REMOVAL}")
    row_of = {item: row for row, item in enumerate(rows.column("id").to_pylist())}
    unknown = [item for item in remove_ids if item not in row_of]
    if unknown:
        raise FaissIndexError(f"{folder}: {len(unknown)} id(s) to remove are not in the index: "
                              f"{few(map(repr, unknown))}")
    removed = np.zeros(index.ntotal, dtype=bool)
    removed[[row_of[item] for item in remove_ids]] = True
    if removed.all():
        raise FaissIndexError(f"{folder}: removing every row would leave an empty index; delete the folder instead")
    _remove_from_faiss(index, removed, manifest["factory"])
    kept = rows.filter(pa.array(~removed))
    change = {"op": "remove", "rows": int(removed.sum()), "ids": sorted(remove_ids)[:20], "at": _now()}
    return _publish(folder, index, manifest, kept, change)


def _refuse_duplicates(ids: np.ndarray, rows: pa.Table) -> None:
    unique, counts = np.unique(ids.astype(str), return_counts=True)
    if (counts > 1).any():
        raise FaissIndexError(f"the new rows repeat ids: {few(map(repr, unique[counts > 1].tolist()))}")
    present = set(rows.column("id").to_pylist())
    clash = [item for item in ids.tolist() if item in present]
    if clash:
        raise FaissIndexError(f"{len(clash)} id(s) of the new rows are already in the index: "
                              f"{few(map(repr, clash))}; ids must stay unique")


def _remove_from_faiss(index, removed: np.ndarray, factory: str) -> None:
    """Drop the flagged rows and renumber the rest 0..m−1, keeping their order."""
    ivf = ivf_of(index)
    count = int(removed.sum())
    if ivf is not None:
        _remove_from_ivf(ivf, removed)
        if index is not ivf:
            index.ntotal = ivf.ntotal
        return
    before = index.ntotal
    try:
        index.remove_ids(faiss.IDSelectorBatch(np.flatnonzero(removed).astype(np.int64)))
    except RuntimeError as exc:
        raise FaissIndexError(f"faiss cannot remove rows from {factory!r} ({str(exc).strip().splitlines()[-1]}); "
                              "rebuild the index without those ids") from None
    if index.ntotal != before - count:
        raise FaissIndexError(f"faiss removed {before - index.ntotal} of {count} rows from {factory!r}; rebuild instead")


def _remove_from_ivf(ivf, removed: np.ndarray) -> None:
    """Rewrite every inverted list without the removed rows, ids renumbered, order kept."""
    ivf.set_direct_map_type(faiss.DirectMap.NoMap)
    renumber = np.cumsum(~removed) - 1
    lists = ivf.invlists
    code_size = lists.code_size
    for number in range(ivf.nlist):
        size = lists.list_size(number)
        if size == 0:
            continue
        ids = faiss.rev_swig_ptr(lists.get_ids(number), size).copy()
        codes = faiss.rev_swig_ptr(lists.get_codes(number), size * code_size).copy().reshape(size, code_size)
        keep = ~removed[ids]
        new_ids = np.ascontiguousarray(renumber[ids[keep]], dtype=np.int64)
        new_codes = np.ascontiguousarray(codes[keep])
        lists.resize(number, len(new_ids))
        if len(new_ids):
            lists.update_entries(number, 0, len(new_ids), faiss.swig_ptr(new_ids), faiss.swig_ptr(new_codes))
    ivf.ntotal = int((~removed).sum())


def _publish(folder: Path, index, manifest: dict, rows: pa.Table, change: dict) -> IndexHandle:
    """Replace the folder with the changed index, refusing when another change landed meanwhile."""
    built = dict(manifest)
    updated = {**manifest, "build_id": secrets.token_hex(8), "count": int(index.ntotal), "content_hash": None,
               "source": None, "sources": _sources(manifest) + [change], "modified": change["at"]}

    def changed_meanwhile(target: Path) -> str | None:
        on_disk = read_manifest(target)
        if any(on_disk.get(key) != built.get(key) for key in BUILD_IDENTITY_KEYS):
            return "was changed by another command while this one ran; run it again"
        return None

    with staging_folder(folder, overwrite=True, replaceable=changed_meanwhile) as staging:
        faiss.write_index(index, str(staging / INDEX_FILE))
        pq.write_table(rows, staging / ROWS_FILE)
        (staging / MANIFEST_FILE).write_text(json.dumps(updated, indent=2) + "\n")
    if updated.get("stores_vectors"):
        prepare_direct_map(index)
    return IndexHandle(folder, index, updated, rows)


__all__ = ["add_rows", "remove_rows", "HNSW_REMOVAL"]
