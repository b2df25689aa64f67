"""Index jobs: build an index from an embeddings file, tune its search defaults, describe it.

``build`` streams the chosen split of a file into ``indexes.build_index`` (hashing the rows as they
pass); ``tune`` sweeps nprobe / efSearch and writes the cheapest setting meeting the target into
the manifest under the folder's lock (``indexes.folder.update_manifest``), so a concurrent tune or
rebuild never loses or mixes an update.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.common.progress import ProgressCallback
from retrieval.errors import OptionError
from retrieval.jobs.inputs import default_split, read_split


class FileBatches:
    """Re-iterable batches of one split of an embeddings file; hashes the rows of the latest pass."""

    def __init__(self, path: Path, split: str | None, batch_rows: int = 65536):
        self.path, self.split, self.batch_rows = path, split, batch_rows
        self.hasher = None

    def __call__(self):
        from retrieval.data.hashing import ContentHasher
        from retrieval.data.store import iter_embedding_batches

        self.hasher = ContentHasher()
        for batch in iter_embedding_batches(self.path, batch_rows=self.batch_rows, splits=self.split):
            self.hasher.update(batch.ids, batch.vectors)
            yield batch

    def content_hash(self) -> str:
        return self.hasher.hexdigest()


@dataclass(frozen=True)
class BuildOptions:
    kind: str | None = None  # default flat
    factory: str | None = None
    metric: str = "l2"
    nlist: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    hnsw_m: int | None = None
    train_size: int | None = None
    device: str = "auto"
    seed: int = 0
    split: str | None = None  # default: gallery when the file has splits, else every row
    shards: int | None = None  # a sharded index (indexes.sharded) of this many shards

    def check(self) -> None:
        if self.kind is not None and self.factory is not None:
            raise OptionError("give --kind or --factory, not both", "--factory")
        for name in ("nlist", "pq_m", "pq_bits", "hnsw_m", "train_size", "shards"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise OptionError(f"must be at least 1, got {value}", f"--{name.replace('_', '-')}", name)


def build(embeddings: Path, out: Path, options: BuildOptions, *, overwrite: bool,
          progress: ProgressCallback | None = None, cluster=None):
    """Build the index of one split of a file (or folder) into ``out`` (an existing index only with
    ``overwrite``). With ``options.shards``: a sharded index, its shards built on ``cluster`` when
    given (``retrieval.distributed.index``), else one after the other here."""
    from retrieval.indexes.store import build_index

    options.check()
    if not embeddings.exists():
        raise FileNotFoundError(2, "no such file", str(embeddings))
    split = default_split(embeddings, options.split, "gallery")
    if options.shards is not None:
        from retrieval.distributed.index import build_sharded

        return build_sharded(
            embeddings, out, split=split, shards=options.shards, kind=options.kind or "flat", factory=options.factory,
            metric=options.metric, nlist=options.nlist, pq_m=options.pq_m, pq_bits=options.pq_bits,
            hnsw_m=options.hnsw_m, seed=options.seed, train_size=options.train_size, device=options.device,
            overwrite=overwrite, cluster=cluster, progress=progress)
    if cluster is not None:
        raise OptionError("--ray builds a sharded index: give --shards S as well", "--shards")
    batches = FileBatches(embeddings, split)
    return build_index(
        out, batches, kind=options.kind or "flat", factory=options.factory, metric=options.metric, nlist=options.nlist,
        pq_m=options.pq_m, pq_bits=options.pq_bits, hnsw_m=options.hnsw_m, seed=options.seed,
        train_size=options.train_size, content_hash=batches.content_hash, split=split,
        source_path=str(embeddings.resolve()), device=options.device, progress=progress, overwrite=overwrite,
    )


@dataclass(frozen=True)
class Tuning:
    handle: Any
    result: Any  # indexes.tuning.TuneResult
    saved: bool

    def summary(self) -> dict[str, Any]:
        return {**self.result.to_dict(), "index": str(self.handle.path), "saved": self.saved}


def tune(index_dir: Path, queries: Path, *, split: str | None = None, target_recall: float = 0.95, k: int = 10,
         embeddings: Path | None = None, save: bool = True, progress: ProgressCallback | None = None) -> Tuning:
    """Sweep the index's search parameter; with ``save``, write the cheapest setting meeting the target."""
    from retrieval.indexes.store import load_index
    from retrieval.indexes.tuning import tune as sweep

    if k < 1:
        raise OptionError(f"must be at least 1, got {k}", "--k")
    if not 0 < target_recall <= 1:
        raise OptionError(f"must be in (0, 1], got {target_recall}", "--target-recall")
    handle = load_index(index_dir, device="cpu")
    if handle.manifest.get("shards"):
        raise OptionError("a sharded index is not tuned as a whole yet; pass --nprobe / --ef-search to search",
                          "index_dir")
    query_emb, _ = read_split(queries, split, "query")
    gallery = _gallery_for_tuning(handle, embeddings)
    result = sweep(handle, query_emb.vectors, k=k, target_recall=target_recall, gallery=gallery, progress=progress)
    saved = False
    if save and result.best is not None and result.parameter is not None:
        value = result.best[result.parameter]
        tuned = {"parameter": result.parameter, "value": value, "k": k, "target_recall": target_recall,
                 "recall": result.best["recall"], "queries": str(queries)}
        handle.save_search_defaults({result.parameter: value}, tuned)
        saved = True
    return Tuning(handle, result, saved)


def _gallery_for_tuning(handle, embeddings: Path | None):
    """The gallery vectors for exact ground truth, when the index stores compressed codes."""
    from retrieval.data.store import read_embeddings

    if handle.is_exact or handle.stores_vectors:
        return None
    path = embeddings or (Path(handle.manifest["source"]) if handle.manifest.get("source") else None)
    if path is None or not path.is_file():
        return None  # tune() says what to pass
    gallery = read_embeddings(path, splits=handle.manifest.get("split"))
    handle.check_content_hash(gallery.content_hash())
    return gallery.vectors


def describe(index_dir: Path) -> dict[str, Any]:
    """``index-info``: the manifest plus the folder's path and file sizes."""
    from retrieval.indexes.store import load_index

    handle = load_index(index_dir, device="cpu")
    folder = Path(index_dir)
    sizes = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}
    return {"path": str(index_dir), **dict(handle.manifest), "file_bytes": sizes}


# ------------------------------------------------------------------------------------- growing


@dataclass(frozen=True)
class Change:
    """What add-to-index / remove-from-index did: the handle after the change and the rows concerned."""

    handle: Any
    op: str
    rows: int

    def summary(self) -> dict[str, Any]:
        m = self.handle.manifest
        return {"index": str(self.handle.path), "op": self.op, "rows": self.rows, "count": m["count"],
                "factory": m["factory"], "sources": m.get("sources")}


def add_to_index(index_dir: Path, embeddings: Path, *, split: str | None = None) -> Change:
    """Add the rows of one split of a file (default: gallery when it has splits, else every row)."""
    from retrieval.indexes.grow import add_rows

    emb, chosen = read_split(embeddings, split, "gallery")
    handle = add_rows(index_dir, emb, source_path=str(Path(embeddings).resolve()), content_hash=emb.content_hash(),
                      split=chosen)
    return Change(handle, "add", len(emb.ids))


def remove_from_index(index_dir: Path, ids_file: Path) -> Change:
    """Remove the rows whose ids the file lists (one per line, a .npy of names, or a Parquet 'id' column)."""
    from retrieval.indexes.grow import remove_rows

    ids = read_id_list(ids_file)
    return Change(remove_rows(index_dir, ids), "remove", len(ids))


def read_id_list(path: Path) -> list[str]:
    """Ids from a text file (one per line), a .npy of names, or a Parquet file's 'id' column; no repeats."""
    import numpy as np
    import pyarrow.parquet as pq

    from retrieval.data.errors import DataError

    if not Path(path).is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    suffix = Path(path).suffix.lower()
    if suffix == ".npy":
        ids = [str(v) for v in np.load(path, allow_pickle=False).reshape(-1)]
    elif suffix == ".parquet":
        if "id" not in pq.read_schema(path).names:
            raise DataError(f"{path}: no 'id' column")
        ids = [str(v) for v in pq.read_table(path, columns=["id"]).column("id").to_pylist()]
    else:
        ids = [line.strip() for line in Path(path).read_text().splitlines() if line.strip()]
    if not ids:
        raise DataError(f"{path}: no ids in it")
    repeated = sorted({item for item in ids if ids.count(item) > 1}) if len(set(ids)) != len(ids) else []
    if repeated:
        raise DataError(f"{path}: ids listed more than once: {', '.join(map(repr, repeated[:5]))}")
    return ids
