"""An index folder on disk: the manifest, the row table, the faiss file; written and updated atomically.

An index folder holds::

    index.faiss      the faiss index (vectors normalised first for cosine)
    manifest.json    format version, factory string, metric, dimension, count, content hash and split
                     of the source embeddings, build parameters, versions, build seconds,
                     default search parameters (updated by ``retrieve tune``)
    rows.parquet     faiss row -> id, pid, camid, split

The folder is filled under a temporary name and renamed into place; the manifest is rewritten in
place only under the folder's lock (``retrieval.common.atomic``), re-read inside it, so two
``tune`` runs never lose each other's update.
"""

from __future__ import annotations

import json
import secrets
from datetime import datetime, timezone
from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.common.atomic import check_output, output_lock, staging_folder, write_json
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.metric import faiss_metric

MANIFEST_FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
ROWS_FILE = "rows.parquet"
REQUIRED_MANIFEST_KEYS = ("format_version", "factory", "metric", "dim", "count", "build", "search_defaults")
# What identifies one build of an index: a manifest update refuses a folder rebuilt meanwhile.
BUILD_IDENTITY_KEYS = ("build_id", "created", "factory", "content_hash", "count")


def library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        project = version("retrieve")
    except PackageNotFoundError:
        project = None
    return {"faiss": faiss.__version__, "numpy": np.__version__, "retrieve": project}


def new_manifest(spec, metric, dim, count, content_hash, split, source_path, seed, train_rows, stores_vectors, placement):
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
        "build_id": secrets.token_hex(8),
        "kind": spec.kind,
        "factory": spec.factory,
        "metric": metric,
        "dim": int(dim),
        "count": int(count),
        "content_hash": content_hash,
        "split": split,
        "source": source_path,
        "exact": spec.kind == "flat" or spec.factory == "Flat",
        "stores_vectors": bool(stores_vectors),
        "build": {**spec.params(), "seed": seed, "train_rows": int(train_rows), "device": placement.backend},
        "search_defaults": dict(spec.search_defaults),
        "tuned": None,
        "versions": library_versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {"index": INDEX_FILE, "rows": ROWS_FILE},
    }


def _not_an_index(path: Path) -> str | None:
    return None if (path / MANIFEST_FILE).exists() else "is not an index folder (no manifest.json), so it is not replaced"


def write_folder(out_dir: Path, index, manifest: dict, rows: pa.Table, *, overwrite: bool = True) -> Path:
    """Write the three files into a staging folder and publish it as ``out_dir``.

    An existing index folder is replaced only with ``overwrite``; any other non-empty folder never.
    """
    check_folder_target(out_dir, overwrite=overwrite)
    with staging_folder(out_dir, overwrite=overwrite, replaceable=_not_an_index) as staging:
        faiss.write_index(index, str(staging / INDEX_FILE))
        pq.write_table(rows, staging / ROWS_FILE)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
    return out_dir


def check_folder_target(out_dir: Path, *, overwrite: bool) -> None:
    """Fail before building when ``out_dir`` cannot take the index (see ``write_folder``)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FaissIndexError(f"{out_dir}: exists and is not a folder; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and _not_an_index(out_dir):
        raise FaissIndexError(f"{out_dir}: folder exists, is not empty and is not an index; choose another --out")
    check_output(out_dir, overwrite=overwrite, folder=True)


def read_manifest(path: Path | str) -> dict:
    """The manifest of an index folder, checked for format and required keys."""
    folder = Path(path)
    if not folder.is_dir():
        raise FaissIndexError(f"{folder}: no such index folder")
    mpath = folder / MANIFEST_FILE
    if not mpath.is_file():
        raise FaissIndexError(f"{folder}: not an index folder (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(mpath.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FaissIndexError(f"{mpath}: corrupt manifest, not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise FaissIndexError(f"{mpath}: corrupt manifest (not a JSON object)")
    missing = [key for key in REQUIRED_MANIFEST_KEYS if key not in manifest]
    if missing:
        raise FaissIndexError(f"{mpath}: corrupt manifest, missing {', '.join(missing)}")
    version = manifest["format_version"]
    if not isinstance(version, int) or version > MANIFEST_FORMAT_VERSION:
        raise FaissIndexError(
            f"{mpath}: index format version {version!r} is not one this retrieve reads ({MANIFEST_FORMAT_VERSION})"
        )
    if manifest["metric"] not in ("l2", "ip", "cosine"):
        raise FaissIndexError(f"{mpath}: corrupt manifest, unknown metric {manifest['metric']!r}")
    return manifest


def read_folder(folder: Path) -> tuple[faiss.Index, dict, pa.Table]:
    """The index, manifest and row table of a folder; a missing, corrupt or mismatched file is a clear error."""
    manifest = read_manifest(folder)
    ipath = folder / manifest.get("files", {}).get("index", INDEX_FILE)
    rpath = folder / manifest.get("files", {}).get("rows", ROWS_FILE)
    if not ipath.is_file():
        raise FaissIndexError(f"{ipath}: index file missing")
    try:
        index = faiss.read_index(str(ipath))
    except RuntimeError:
        raise FaissIndexError(f"{ipath}: corrupt index file (faiss cannot read it); rebuild the index") from None
    if index.ntotal != manifest["count"] or index.d != manifest["dim"]:
        raise FaissIndexError(
            f"{ipath}: index holds {index.ntotal} vectors of dimension {index.d} but the manifest says "
            f"{manifest['count']} of dimension {manifest['dim']}; rebuild the index"
        )
    if index.metric_type != faiss_metric(manifest["metric"]):
        raise FaissIndexError(f"{ipath}: index metric does not match the manifest's {manifest['metric']!r}")
    if not rpath.is_file():
        raise FaissIndexError(f"{rpath}: row table missing")
    try:
        rows = pq.read_table(rpath)
    except (pa.ArrowInvalid, OSError) as exc:
        raise FaissIndexError(f"{rpath}: corrupt row table ({exc})") from None
    if rows.num_rows != manifest["count"] or "id" not in rows.column_names:
        raise FaissIndexError(f"{rpath}: {rows.num_rows} rows but the index holds {manifest['count']}")
    return index, manifest, rows


def update_manifest(folder: Path, changes: dict, built: dict) -> dict:
    """Merge ``changes`` into the manifest on disk, under the folder's lock; returns the new manifest.

    The manifest is re-read inside the lock (another update may have landed since ``built`` was
    read) and the update is refused when the folder now holds another build of the index.
    """
    with output_lock(folder):
        manifest = read_manifest(folder)
        if any(manifest.get(key) != built.get(key) for key in BUILD_IDENTITY_KEYS):
            raise FaissIndexError(f"{folder}: the index was rebuilt while this command ran; run it again")
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(manifest.get(key), dict):
                manifest[key] = {**manifest[key], **value}
            else:
                manifest[key] = value
        write_json(folder / MANIFEST_FILE, manifest, overwrite=True)
    return manifest
