"""Sharded indexes: built from the files where they are, searched by shard actors on Ray.

Build (``build_sharded``; on a cluster, or shard after shard in this process):

1. the gallery's parts are grouped into S contiguous shards (``shard_groups``);
2. trained kinds (IVF, PQ, factory strings): each shard draws its part of the training sample
   with the keys one stream over the whole gallery would give its rows (``sample_task``); the
   driver merges them into the very sample a one-process build draws and trains the coarse
   quantizer and PQ codebooks once (``indexes.build.train_template``);
3. each shard adds its own rows to a copy of the trained index and writes its own index folder
   (``add_task``); the driver writes the manifest listing the shards with their hashes
   (``indexes.sharded``) and publishes the folder atomically.

Search (``open_index`` with a cluster): one actor per shard opens its shard (checking its files)
and keeps it; a search fans out to every actor and the driver merges the lists by (exact key,
global row). An actor killed mid-search is restarted by Ray and the search retried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from retrieval.common.progress import ProgressCallback, no_progress
from retrieval.data.dataset import DatasetPart, count_part_rows, read_part
from retrieval.distributed.shards import GalleryView
from retrieval.distributed.tasks import TASK_RETRIES, fault_point, gather, put, remote


def shard_groups(parts: Sequence[DatasetPart], shards: int) -> list[list[DatasetPart]]:
    """Contiguous groups of parts, about equal in rows (never more groups than parts)."""
    rows = np.cumsum([p.rows for p in parts])
    targets = rows[-1] * np.arange(1, shards) / shards
    cuts = np.abs(rows[None, :] - targets[:, None]).argmin(axis=1) + 1  # the part end nearest each target
    edges = sorted(set([0, *np.minimum(cuts, len(parts)).tolist(), len(parts)]))
    return [list(parts[a:b]) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def sample_task(parts, split, metric: str, capacity: int, seed: int, first_row: int):
    """A shard's share of the training sample: the keys a stream over all rows gives its rows."""
    from retrieval.indexes.build import _TrainSample
    from retrieval.indexes.metric import prepare_vectors

    fault_point("sample")
    sample = _TrainSample(capacity, seed, first_row)
    row = first_row
    for part in parts:
        emb = read_part(part, split)
        if len(emb):
            sample.offer(row, prepare_vectors(emb.vectors, metric, what="gallery", first_row=row))
            row += len(emb)
    sample.rng = None  # not needed any more (and not sent back)
    return sample


def add_task(parts, split, template, metric: str, seed: int, folder: str, name: str, first_row: int,
             source: str | None) -> dict:
    """Add one shard's rows to a copy of the trained index and write the shard's folder."""
    from retrieval.data.hashing import ContentHasher
    from retrieval.indexes.build import add_to_template
    from retrieval.indexes.folder import new_manifest, write_folder
    from retrieval.indexes.sharded import shard_record

    fault_point("add")
    hasher = ContentHasher()

    def batches():
        for part in parts:
            emb = read_part(part, split)
            if len(emb):
                hasher.update(emb.ids, emb.vectors)
                yield emb

    index, rows, stores_vectors = add_to_template(batches, template, metric, seed=seed, split=split)
    manifest = new_manifest(template.spec, metric, index.d, index.ntotal, hasher.hexdigest(), split, source, seed,
                            template.train_rows, stores_vectors, template.placement)
    manifest["shard"] = {"name": name, "first_row": int(first_row)}
    path = Path(folder) / name
    write_folder(path, index, manifest, rows, overwrite=True)  # a retried task replaces its own shard
    return {**shard_record(path, name, first_row, index.ntotal, manifest["content_hash"]),
            "stores_vectors": stores_vectors}


class _Shards:
    """Runs shard functions on the cluster (tasks with retries) or one after the other here."""

    def __init__(self, cluster, progress: ProgressCallback):
        self.cluster, self.progress = cluster, progress

    def start(self, fn: Callable, calls: list[tuple], stage: str) -> Callable[[], list[Any]]:
        """Launch the calls; returns a function that waits for (or, here, computes) their results."""
        if self.cluster is None:
            def run_here() -> list[Any]:
                results = []
                for i, args in enumerate(calls):
                    results.append(fn(*args))
                    self.progress(stage, i + 1, len(calls))
                return results

            return run_here
        task = remote(fn)
        refs = [task.remote(*args) for args in calls]
        return lambda: gather(refs, self.progress, stage)


@dataclass
class ShardedBuild:
    handle: Any
    warnings: list[str]
    notes: list[str]

    @property
    def manifest(self) -> dict:
        return self.handle.manifest


def build_sharded(embeddings: Path, out: Path, *, split: str | None, shards: int, kind: str = "flat",
                  factory: str | None = None, metric: str = "l2", nlist: int | None = None, pq_m: int | None = None,
                  pq_bits: int | None = None, hnsw_m: int | None = None, seed: int = 0, train_size: int | None = None,
                  device: str = "auto", overwrite: bool = False, cluster=None,
                  progress: ProgressCallback | None = None) -> ShardedBuild:
    """Build a sharded index of one split of a data set into ``out`` (see the module docstring)."""
    from retrieval.common.atomic import staging_folder, write_json
    from retrieval.data.dataset import open_dataset
    from retrieval.indexes.build import _TrainSample, needs_sample, sample_capacity, train_template
    from retrieval.indexes.errors import FaissIndexError
    from retrieval.indexes.folder import MANIFEST_FILE, _not_an_index, check_folder_target
    from retrieval.indexes.metric import check_metric_name
    from retrieval.indexes.sharded import ShardedIndexHandle, shard_name, sharded_manifest

    started = time.perf_counter()
    progress = progress or no_progress
    check_metric_name(metric)
    check_folder_target(out, overwrite=overwrite)
    runner = _Shards(cluster, progress)
    view = GalleryView.of(embeddings, split, min_parts=shards)
    groups = shard_groups(view.parts, shards)
    counts = [sum(count_part_rows(p, split) for p in group) for group in groups]
    groups, counts = [g for g, c in zip(groups, counts) if c], [c for c in counts if c]
    if not groups:
        raise view.empty_error()
    first_rows = [int(x) for x in np.concatenate([[0], np.cumsum(counts)[:-1]])]
    total = int(sum(counts))
    sample = None
    if needs_sample(kind, factory):
        capacity = sample_capacity(nlist, pq_bits, train_size)
        calls = [(g, split, metric, capacity, seed, first) for g, first in zip(groups, first_rows)]
        sample = _TrainSample.merged(runner.start(sample_task, calls, "index: sample, shards")(), capacity)
    dim = _dimension(open_dataset(embeddings), groups[0], split)
    template = train_template(dim=dim, count=total, sample=sample, kind=kind, factory=factory, metric=metric,
                              nlist=nlist, pq_m=pq_m, pq_bits=pq_bits, hnsw_m=hnsw_m, seed=seed, train_size=train_size,
                              device=device, progress=progress)
    source = str(Path(embeddings).resolve())
    with staging_folder(out, overwrite=overwrite, replaceable=_not_an_index) as staging:
        template_ref = template if cluster is None else put(template)
        calls = [(g, split, template_ref, metric, seed, str(staging), shard_name(i), first, source)
                 for i, (g, first) in enumerate(zip(groups, first_rows))]
        finish = runner.start(add_task, calls, "index: add, shards")
        content_hash = open_dataset(embeddings).content_hash() if split is None else _split_hash(embeddings, split)
        records = finish()
        if sum(r["count"] for r in records) != total:
            raise FaissIndexError(f"{embeddings}: the gallery changed while indexing")
        manifest = sharded_manifest(template.spec, metric, dim, records, content_hash, split, source, seed,
                                    template.train_rows, all(r.pop("stores_vectors") for r in records),
                                    template.placement, time.perf_counter() - started, template.warnings)
        write_json(staging / MANIFEST_FILE, manifest, overwrite=False)
    return ShardedBuild(ShardedIndexHandle(out, manifest, device), template.warnings, template.notes)


def _dimension(dataset, group: list[DatasetPart], split: str | None) -> int:
    import pyarrow as pa

    kind = dataset.arrow_schema.field("embedding").type
    if pa.types.is_fixed_size_list(kind):
        return int(kind.list_size)
    return next(read_part(p, split).dim for p in group if count_part_rows(p, split))


def _split_hash(path: Path, split: str) -> str:
    from retrieval.data.dataset import open_dataset
    from retrieval.data.hashing import ContentHasher

    hasher = ContentHasher()
    for batch in open_dataset(path).iter_batches(splits=split, check_duplicates=False):
        hasher.update(batch.ids, batch.vectors)
    return hasher.hexdigest()


# ----------------------------------------------------------------------------------------- search


class ShardActor:
    """Holds one opened shard on a worker and answers searches (a Ray actor)."""

    def __init__(self, folder: str, record: dict, device: str):
        from retrieval.indexes.handle import load_index
        from retrieval.indexes.sharded import check_shard

        self.handle = load_index(check_shard(Path(folder), record), device=device)

    def search(self, queries: np.ndarray, k: int, nprobe, ef_search):
        fault_point("search")
        return self.handle.search_detailed(queries, min(k, self.handle.count), nprobe=nprobe, ef_search=ef_search)


class RayShards:
    """One ``ShardActor`` per shard, spread over the cluster; searches fan out and come back in order."""

    def __init__(self, folder: Path, records: list[dict], device: str, progress: ProgressCallback | None = None):
        from retrieval.distributed.cluster import import_ray

        ray = import_ray()
        actor = ray.remote(num_cpus=0, max_restarts=TASK_RETRIES, max_task_retries=TASK_RETRIES,
                           scheduling_strategy="SPREAD")(ShardActor)
        self.actors = [actor.remote(str(folder), record, device) for record in records]
        self.progress = progress

    def search(self, queries, k, nprobe, ef_search):
        queries_ref = put(queries)
        return gather([a.search.remote(queries_ref, k, nprobe, ef_search) for a in self.actors], self.progress,
                      "search: shards")

    def close(self) -> None:
        from retrieval.distributed.cluster import import_ray

        for actor in self.actors:
            import_ray().kill(actor)
        self.actors = []


def open_index(path: Path | str, device: str = "auto", cluster=None, progress: ProgressCallback | None = None):
    """An opened index; a sharded one on a cluster searches through shard actors there."""
    from retrieval.indexes.folder import read_manifest
    from retrieval.indexes.handle import load_index
    from retrieval.indexes.sharded import ShardedIndexHandle, is_sharded

    manifest = read_manifest(Path(path))
    if cluster is None or not is_sharded(manifest):
        return load_index(path, device=device)
    return ShardedIndexHandle(Path(path), manifest, device,
                              searcher_factory=lambda folder, records, dev: RayShards(folder, records, dev, progress))
