"""A sharded index: one folder per shard (each an ordinary index folder) under one manifest.

    IDX/manifest.json     kind "sharded": factory, metric, dim, count and content hash of the whole
                          gallery, build parameters, and the shards in gallery order, each with its
                          first global row, its row count, its rows' content hash and the SHA-256
                          of each of its files
    IDX/shard-00000/      index.faiss, manifest.json, rows.parquet (``indexes.folder``)
    IDX/shard-00001/      ...

Every shard holds a copy of one trained empty index (coarse quantizer and PQ codebooks trained
once on a sample of the whole gallery, ``indexes.build.train_template``) plus its own rows.
Opening checks each shard's files against the manifest and refuses a changed one by name.
Search asks every shard for its top k and merges the lists by (exact key, global row)
(``indexes.search.merge_top_k``): a sharded flat index answers exactly as one flat index.
The shards are searched one after the other here; ``retrieval.distributed.index`` searches them
on a Ray cluster (``ShardedIndexHandle`` takes any ``searcher``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pyarrow as pa

from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.folder import INDEX_FILE, MANIFEST_FILE, ROWS_FILE, read_manifest
from retrieval.indexes.metric import METRIC_ALIASES
from retrieval.indexes.search import SearchResult, check_k, check_queries, merge_top_k

SHARDED_KIND = "sharded"
SHARD_FILES = (INDEX_FILE, ROWS_FILE, MANIFEST_FILE)


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def shard_record(folder: Path, name: str, first_row: int, count: int, content_hash: str | None) -> dict:
    """The manifest's entry of one written shard folder."""
    return {"name": name, "first_row": int(first_row), "count": int(count), "content_hash": content_hash,
            "files": {f: file_sha256(folder / f) for f in SHARD_FILES}}


def is_sharded(manifest: dict) -> bool:
    return manifest.get("kind") == SHARDED_KIND


def check_shard(folder: Path, record: dict) -> Path:
    """The shard's folder, after checking its files are those the index was built with."""
    path = folder / record["name"]
    for name, digest in record["files"].items():
        file = path / name
        if not file.is_file():
            raise FaissIndexError(f"{file}: shard file missing; rebuild the index")
        if file_sha256(file) != digest:
            raise FaissIndexError(f"{file}: shard file changed since the index was built; rebuild the index")
    return path


class ShardSearcher(Protocol):
    """Searches every shard: one ``SearchResult`` per shard (rows local to the shard), in shard order."""

    def search(self, queries: np.ndarray, k: int, nprobe: int | None, ef_search: int | None) -> list[SearchResult]: ...

    def close(self) -> None: ...


class LocalShards:
    """The shards opened in this process (checked, on the first search) and searched one after the other."""

    def __init__(self, folder: Path, records: list[dict], device: str = "auto"):
        self.folder, self.records, self.device = folder, records, device
        self._handles: list | None = None

    @property
    def handles(self) -> list:
        if self._handles is None:
            from retrieval.indexes.handle import load_index

            self._handles = [load_index(check_shard(self.folder, r), device=self.device) for r in self.records]
        return self._handles

    def search(self, queries, k, nprobe, ef_search) -> list[SearchResult]:
        return [h.search_detailed(queries, min(k, h.count), nprobe=nprobe, ef_search=ef_search) for h in self.handles]

    def close(self) -> None:
        self._handles = None


def merged_result(parts: list[SearchResult], first_rows: list[int], k: int, metric: str) -> SearchResult:
    """The shards' answers merged by (exact key, global row), or (distance, global row) without keys."""
    from retrieval.indexes.distance import key_to_distance

    exact = all(p.keys is not None for p in parts)
    lists = [((p.keys if exact else p.distances), p.rows + first) for p, first in zip(parts, first_rows)]
    values, rows = merge_top_k(lists, k)
    distances = key_to_distance(values, metric) if exact else values
    notes = tuple(dict.fromkeys(n for p in parts for n in p.notes))
    params = {**parts[0].params, "k": k, "shards": len(parts)}
    return SearchResult(distances, rows, params, notes, values if exact else None)


class ShardedIndexHandle:
    """An opened sharded index: the interface of ``IndexHandle`` that searching and evaluating use."""

    def __init__(self, path: Path, manifest: dict, device: str = "auto",
                 searcher_factory: Callable[[Path, list[dict], str], ShardSearcher] | None = None):
        self.path = Path(path)
        self.manifest = manifest
        self.device = device
        self.records = list(manifest["shards"])
        self._searcher = (searcher_factory or LocalShards)(self.path, self.records, device)
        self._rows: pa.Table | None = None

    # --- what it is
    dim = property(lambda self: int(self.manifest["dim"]))
    count = property(lambda self: int(self.manifest["count"]))
    metric = property(lambda self: self.manifest["metric"])
    is_exact = property(lambda self: bool(self.manifest.get("exact")))
    stores_vectors = property(lambda self: bool(self.manifest.get("stores_vectors")))
    is_hnsw = property(lambda self: self.manifest.get("shard_kind") == "hnsw")

    @property
    def nlist(self) -> int | None:
        return self.manifest["build"].get("nlist")

    @property
    def rows(self) -> pa.Table:
        """The row table of all shards in gallery order (ids and labels; no vectors)."""
        if self._rows is None:
            import pyarrow.parquet as pq

            self._rows = pa.concat_tables([pq.read_table(self.path / r["name"] / ROWS_FILE) for r in self.records])
        return self._rows

    def row_ids(self, rows: np.ndarray) -> np.ndarray:
        ids = np.asarray(self.rows.column("id").to_numpy(zero_copy_only=False), dtype=object)
        return ids[rows]

    def default_search_params(self) -> dict:
        defaults = dict(self.manifest.get("search_defaults") or {})
        return {"nprobe": defaults.get("nprobe"), "ef_search": defaults.get("ef_search")}

    # --- checks (as IndexHandle's)
    def check_content_hash(self, content_hash: str) -> None:
        built = self.manifest.get("content_hash")
        if built != content_hash:
            raise FaissIndexError(
                f"{self.path}: index was built from other embeddings (content hash {str(built)[:12]}…, "
                f"these are {content_hash[:12]}…); rebuild the index from this file")

    def check_metric(self, metric: str) -> None:
        wanted = METRIC_ALIASES.get(metric)
        if wanted != self.metric:
            raise FaissIndexError(f"{self.path}: index was built for metric {self.metric!r}, not {metric!r}; "
                                  f"rebuild with --metric {wanted or metric} or use the index's metric")

    # --- search
    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None):
        result = self.search_detailed(queries, k, nprobe=nprobe, ef_search=ef_search)
        return result.distances, result.rows

    def search_detailed(self, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None,
                        metric: str | None = None) -> SearchResult:
        if metric is not None:
            self.check_metric(metric)
        check_queries(queries, self.dim, self.metric)
        check_k(k, self.count)
        defaults = self.default_search_params()
        nprobe = nprobe if nprobe is not None else defaults["nprobe"]
        ef_search = ef_search if ef_search is not None else defaults["ef_search"]
        parts = self._searcher.search(np.asarray(queries, dtype=np.float32), k, nprobe, ef_search)
        return merged_result(parts, [r["first_row"] for r in self.records], k, self.metric)

    def close(self) -> None:
        self._searcher.close()


def open_sharded(path: Path | str, device: str = "auto", searcher_factory=None) -> ShardedIndexHandle:
    """Open a sharded index folder (its shards checked against the manifest)."""
    folder = Path(path)
    manifest = read_manifest(folder)
    if not is_sharded(manifest):
        raise FaissIndexError(f"{folder}: not a sharded index")
    return ShardedIndexHandle(folder, manifest, device, searcher_factory)


def sharded_manifest(template_spec, metric: str, dim: int, records: list[dict], content_hash: str | None,
                     split: str | None, source: str | None, seed: int, train_rows: int, stores_vectors: bool,
                     placement, build_seconds: float, warnings: list[str]) -> dict[str, Any]:
    """The top manifest of a sharded index (an index manifest plus ``shards``)."""
    from retrieval.indexes.folder import new_manifest

    manifest = new_manifest(template_spec, metric, dim, sum(r["count"] for r in records), content_hash, split,
                            source, seed, train_rows, stores_vectors, placement)
    manifest["shard_kind"] = manifest["kind"]
    manifest["kind"] = SHARDED_KIND
    manifest["files"] = {}
    manifest["shards"] = records
    manifest["build_seconds"] = round(build_seconds, 3)
    manifest["warnings"] = warnings
    return manifest
