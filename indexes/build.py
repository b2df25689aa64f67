"""Build a faiss index from embeddings streamed in batches: sample, train, add, write the folder.

``build_index`` reads its source twice for trained indexes (a seeded streaming sample for
training, then every row to add), so a gallery larger than memory can be indexed; the folder is
written by ``indexes.folder``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import faiss
import numpy as np
import pyarrow as pa

from retrieval.common.progress import ProgressCallback
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.factory import (
    IndexSpec,
    check_trainable,
    default_train_size,
    spec_for_factory,
    spec_for_kind,
)
from retrieval.indexes.faiss_output import captured_stderr_lines, faiss_warnings
from retrieval.indexes.folder import check_folder_target, new_manifest, write_folder
from retrieval.indexes.handle import IndexHandle, prepare_direct_map
from retrieval.indexes.metric import check_metric_name, faiss_metric, prepare_vectors
from retrieval.indexes.placement import FAISS_CPU, FAISS_GPU, Placement, resolve_placement
from retrieval.indexes.search import ivf_of


@dataclass
class ArrayBatch:
    """One batch of gallery rows (the shape of ``data.store.Embeddings`` that indexing needs)."""

    ids: np.ndarray
    vectors: np.ndarray
    pid: np.ndarray | None = None
    camid: np.ndarray | None = None
    split: np.ndarray | None = None
    camid_known: np.ndarray | None = None


def _batch_source(source: Any, ids: np.ndarray | None) -> Callable[[], Iterable[Any]]:
    """Turn an array, one Embeddings-like object, a list of batches or a batch factory into a re-iterable."""
    if isinstance(source, np.ndarray):
        row_ids = np.asarray(ids, dtype=object) if ids is not None else np.arange(len(source)).astype(str).astype(object)
        if len(row_ids) != len(source):
            raise FaissIndexError(f"{len(row_ids)} ids for {len(source)} vectors")
        batch = ArrayBatch(row_ids, source)
        return lambda: [batch]
    if hasattr(source, "vectors") and hasattr(source, "ids"):
        return lambda: [source]
    if callable(source):
        return source
    if isinstance(source, (list, tuple)):
        return lambda: source
    raise FaissIndexError(f"cannot build an index from {type(source).__name__}")


def _rows_of(batch: Any, split: str | None) -> pa.Table:
    """The rows table part of one batch: id, pid, camid (null where unknown), split."""
    n = len(batch.vectors)
    pid = getattr(batch, "pid", None)
    camid = getattr(batch, "camid", None)
    known = getattr(batch, "camid_known", None)
    batch_split = getattr(batch, "split", None)
    camid_arr = None
    if camid is not None:
        mask = None if known is None else ~np.asarray(known, dtype=bool)
        camid_arr = pa.array(np.asarray(camid, dtype=np.int64), mask=mask, type=pa.int64())
    if batch_split is not None:
        split_arr = pa.array([None if s is None else str(s) for s in batch_split], type=pa.string())
    else:
        split_arr = pa.array([split] * n, type=pa.string())
    return pa.table(
        {
            "id": pa.array([str(i) for i in batch.ids], type=pa.string()),
            "pid": pa.array(np.asarray(pid, dtype=np.int64)) if pid is not None else pa.nulls(n, pa.int64()),
            "camid": camid_arr if camid_arr is not None else pa.nulls(n, pa.int64()),
            "split": split_arr,
        }
    )


class _TrainSample:
    """A seeded uniform sample of rows drawn while streaming: keep the rows with the smallest random keys.

    The keys come from one seeded stream in row order, so the sample does not depend on batch sizes.
    """

    def __init__(self, capacity: int, seed: int, first_row: int = 0):
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
        if first_row:  # a shard starting at gallery row first_row draws the keys one stream gives those rows
            self.rng.bit_generator.advance(first_row)
        self.keys = np.empty(0)
        self.rows = np.empty(0, dtype=np.int64)
        self.vectors: np.ndarray | None = None

    def offer(self, first_row: int, vectors: np.ndarray) -> None:
        keys = self.rng.random(len(vectors))
        if self.capacity == 0:
            return
        keys = np.concatenate([self.keys, keys])
        rows = np.concatenate([self.rows, np.arange(first_row, first_row + len(vectors))])
        stacked = vectors if self.vectors is None else np.concatenate([self.vectors, vectors])
        self._keep(keys, rows, stacked)

    @classmethod
    def merged(cls, parts: list["_TrainSample"], capacity: int) -> "_TrainSample":
        """The sample one stream over all rows keeps, from the samples of consecutive shards."""
        out = cls(capacity, 0)
        for part in parts:
            if part.vectors is not None:
                out._keep(np.concatenate([out.keys, part.keys]), np.concatenate([out.rows, part.rows]),
                          part.vectors if out.vectors is None else np.concatenate([out.vectors, part.vectors]))
        return out

    def _keep(self, keys: np.ndarray, rows: np.ndarray, stacked: np.ndarray) -> None:
        if len(keys) > self.capacity:
            keep = np.argpartition(keys, self.capacity - 1)[: self.capacity]
            keys, rows, stacked = keys[keep], rows[keep], stacked[keep]
        self.keys, self.rows, self.vectors = keys, rows, np.ascontiguousarray(stacked)

    def take(self, size: int) -> np.ndarray:
        """The ``size`` rows with the smallest keys, in gallery-row order."""
        if self.vectors is None:
            raise FaissIndexError("the gallery is empty")
        chosen = np.argsort(self.keys, kind="stable")[:size]
        chosen = chosen[np.argsort(self.rows[chosen], kind="stable")]
        return self.vectors[chosen]


@dataclass
class BuildResult:
    handle: "IndexHandle"
    warnings: list[str] = field(default_factory=list)  # one-line warnings for the user
    notes: list[str] = field(default_factory=list)  # fallbacks (e.g. CPU instead of GPU)

    @property
    def manifest(self) -> dict:
        return self.handle.manifest


def build_index(
    out_dir: Path | str,
    source: Any,
    *,
    kind: str = "flat",
    factory: str | None = None,
    metric: str = "l2",
    nlist: int | None = None,
    pq_m: int | None = None,
    pq_bits: int | None = None,
    hnsw_m: int | None = None,
    seed: int = 0,
    train_size: int | None = None,
    ids: np.ndarray | None = None,
    content_hash: str | Callable[[], str] | None = None,
    split: str | None = None,
    source_path: str | None = None,
    device: str = "auto",
    progress: ProgressCallback | None = None,
    overwrite: bool = True,
) -> BuildResult:
    """Build an index from ``source`` and write its folder to ``out_dir``.

    ``source``: a (n, d) array (with optional ``ids``), an Embeddings-like object (``ids``,
    ``vectors``, optional ``pid``/``camid``/``split``), a list of such batches, or a callable that
    returns a fresh iterator of batches (read twice for trained indexes: once to sample the
    training rows, once to add). ``content_hash`` may be a callable, called after the last batch
    was added (so that a streaming caller can hash the rows as they pass). Training uses a seeded
    sample of ``train_size`` rows (default: 64 per IVF list / PQ centroid).
    """
    started = time.perf_counter()
    check_metric_name(metric)
    check_folder_target(Path(out_dir), overwrite=overwrite)
    progress = progress or (lambda stage, done, total: None)
    batches = _batch_source(source, ids)
    params = {"kind": kind, "nlist": nlist, "pq_m": pq_m, "pq_bits": pq_bits, "hnsw_m": hnsw_m}
    if factory is None:
        spec_for_kind(kind, 64, 1 << 20, nlist=nlist, pq_bits=pq_bits, hnsw_m=hnsw_m)  # bad options fail first
    placement = Placement(device, FAISS_CPU) if device == "cpu" else resolve_placement(device, exact_flat=False)
    build = _Build(placement=placement, notes=list(placement.notes), seed=seed, train_size=train_size, split=split)

    spec = spec_for_factory(factory) if factory is not None else None
    if factory is not None or kind in ("ivf", "ivfpq"):
        capacity = train_size if train_size is not None else _sample_capacity(nlist, pq_bits)
        build.sample = _TrainSample(capacity, seed)
        build.count, dim = _sampling_pass(batches, metric, build.sample, progress)
        spec = spec or spec_for_kind(dim=dim, count=build.count, **params)
    index, rows, stores_vectors = _add_pass(batches, spec, params, metric, build, progress)

    if callable(content_hash):
        content_hash = content_hash()  # e.g. a hash computed while the batches streamed by
    spec = build.spec
    manifest = new_manifest(spec, metric, index.d, index.ntotal, content_hash, split, source_path, seed,
                         build.train_rows, stores_vectors, placement)
    manifest["build_seconds"] = round(time.perf_counter() - started, 3)
    manifest["warnings"] = build.warnings
    path = write_folder(Path(out_dir), index, manifest, rows, overwrite=overwrite)
    return BuildResult(IndexHandle(path, index, manifest, rows, device=device), build.warnings, build.notes)


@dataclass
class _Build:
    """State shared by the passes of one build."""

    placement: Placement
    notes: list[str]
    seed: int
    train_size: int | None
    split: str | None = None  # recorded for batches that carry no split column
    sample: "_TrainSample | None" = None
    count: int | None = None
    spec: IndexSpec | None = None
    train_rows: int = 0
    warnings: list[str] = field(default_factory=list)


def _add_pass(batches, spec, params, metric, build: _Build, progress, template=None):
    """Create (and train) the index on the first batch, then add every batch; returns index, rows, exactness.

    ``template``: an empty index already trained (a shard of a sharded build) to add to instead."""
    index = None
    parts: list[pa.Table] = []
    stores_vectors = False
    for batch in batches():
        added = index.ntotal if index is not None else 0
        vectors = prepare_vectors(batch.vectors, metric, what="gallery", first_row=added)
        if index is None and template is not None:
            build.spec, index = spec, template
        if index is None:
            build.spec = spec or spec_for_kind(dim=vectors.shape[1], count=0, **params)
            index = _new_index(build.spec, vectors.shape[1], metric)
            if not index.is_trained:
                build.train_rows, warnings = _train(index, build, progress)
                build.warnings.extend(warnings)
            prepare_direct_map(index)
        if vectors.shape[1] != index.d:
            raise FaissIndexError(f"gallery batch has dimension {vectors.shape[1]}, expected {index.d}")
        index.add(vectors)
        if added == 0:
            stores_vectors = _stores_exact_vectors(index, vectors)
        parts.append(_rows_of(batch, build.split))
        progress("add", index.ntotal, max(index.ntotal, build.count or 0))
    if index is None or index.ntotal == 0:
        raise FaissIndexError("the gallery is empty: nothing to index")
    if build.count is not None and index.ntotal != build.count:
        raise FaissIndexError(f"the gallery changed while indexing ({build.count} rows sampled, {index.ntotal} added)")
    return index, pa.concat_tables(parts), stores_vectors


@dataclass
class Template:
    """An empty index trained once (on a sample of the whole gallery): what every shard adds to."""

    index: faiss.Index
    spec: IndexSpec
    train_rows: int
    warnings: list[str]
    notes: list[str]
    placement: Placement

    def __getstate__(self) -> dict:  # faiss indexes travel as their serialised bytes (to Ray workers)
        return {**self.__dict__, "index": faiss.serialize_index(self.index)}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update({**state, "index": faiss.deserialize_index(state["index"])})


def needs_sample(kind: str, factory: str | None) -> bool:
    """Whether the build trains on a sample (IVF, PQ, any factory string)."""
    return factory is not None or kind in ("ivf", "ivfpq")


def sample_capacity(nlist: int | None, pq_bits: int | None, train_size: int | None) -> int:
    return train_size if train_size is not None else _sample_capacity(nlist, pq_bits)


def train_template(*, dim: int, count: int, sample: "_TrainSample | None", kind: str = "flat", factory: str | None = None,
                   metric: str = "l2", nlist: int | None = None, pq_m: int | None = None, pq_bits: int | None = None,
                   hnsw_m: int | None = None, seed: int = 0, train_size: int | None = None, device: str = "auto",
                   progress: ProgressCallback | None = None) -> Template:
    """The empty index ``build_index`` would create and train for ``count`` rows of dimension ``dim``,
    trained on ``sample`` (drawn over all rows, e.g. merged from shards: ``_TrainSample.merged``)."""
    progress = progress or (lambda stage, done, total: None)
    check_metric_name(metric)
    params = {"kind": kind, "nlist": nlist, "pq_m": pq_m, "pq_bits": pq_bits, "hnsw_m": hnsw_m}
    placement = Placement(device, FAISS_CPU) if device == "cpu" else resolve_placement(device, exact_flat=False)
    build = _Build(placement=placement, notes=list(placement.notes), seed=seed, train_size=train_size,
                   sample=sample, count=count)
    spec = spec_for_factory(factory) if factory is not None else spec_for_kind(
        dim=dim, count=count if needs_sample(kind, factory) else 0, **params)
    build.spec = spec
    index = _new_index(spec, dim, metric)
    if not index.is_trained:
        build.train_rows, warnings = _train(index, build, progress)
        build.warnings.extend(warnings)
    prepare_direct_map(index)
    return Template(index, spec, build.train_rows, build.warnings, build.notes, placement)


def add_to_template(batches, template: Template, metric: str, *, seed: int = 0, split: str | None = None,
                    progress: ProgressCallback | None = None):
    """Add every batch to a copy of the template: (index, row table, whether it stores exact vectors)."""
    progress = progress or (lambda stage, done, total: None)
    build = _Build(placement=template.placement, notes=[], seed=seed, train_size=None, split=split,
                   train_rows=template.train_rows)
    copy = faiss.deserialize_index(faiss.serialize_index(template.index))
    prepare_direct_map(copy)
    return _add_pass(_batch_source(batches, None), template.spec, {}, metric, build, progress, template=copy)


def _sample_capacity(nlist: int | None, pq_bits: int | None) -> int:
    """How many rows the streaming sample keeps before the gallery size (hence default nlist) is known."""
    per = 64
    return max(1 << 18, per * (nlist or 0), per * (2 ** (pq_bits or 8)))


def _sampling_pass(batches, metric: str, sample: _TrainSample, progress) -> tuple[int, int]:
    count = 0
    dim = None
    for batch in batches():
        vectors = prepare_vectors(batch.vectors, metric, what="gallery", first_row=count)
        if dim is None:
            dim = vectors.shape[1]
        elif vectors.shape[1] != dim:
            raise FaissIndexError(f"gallery batch has dimension {vectors.shape[1]}, expected {dim}")
        sample.offer(count, vectors)
        count += len(vectors)
        progress("sample", count, count)
    if count == 0:
        raise FaissIndexError("the gallery is empty: nothing to index")
    return count, dim


def _new_index(spec: IndexSpec, dim: int, metric: str) -> faiss.Index:
    try:
        return faiss.index_factory(dim, spec.factory, faiss_metric(metric))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else ""
        raise FaissIndexError(f"faiss cannot make an index from factory string {spec.factory!r} (dimension {dim}): {first}") from None


def _train(index, build: _Build, progress) -> tuple[int, list[str]]:
    spec, sample, count = build.spec, build.sample, build.count
    if sample is None:
        raise FaissIndexError(f"factory string {spec.factory!r} needs training but no sample was drawn")
    size = build.train_size if build.train_size is not None else default_train_size(spec, count)
    size = min(size, count, len(sample.rows))
    warnings = check_trainable(spec, count, size)
    training = sample.take(size)
    ivf = ivf_of(index)
    if ivf is not None:
        ivf.cp.seed = build.seed
        if build.placement.backend == FAISS_GPU:
            _train_centroids_on_gpu(ivf, build.notes)
    _configure_pq_training(index, build.seed)
    progress("train", 0, 1)
    try:
        with captured_stderr_lines() as lines:
            index.train(training)
    except RuntimeError as exc:
        text = " ".join(str(exc).split())
        raise FaissIndexError(f"faiss could not train {spec.factory!r} on {size} rows: {text[-300:]}") from None
    warnings.extend(faiss_warnings(lines, already_said=bool(warnings)))
    progress("train", 1, 1)
    return size, warnings


def _configure_pq_training(index, seed: int) -> None:
    """Seed the PQ k-means (reproducible builds) and switch off polysemous training.

    index_factory turns on polysemous training for PQ codes; we never search with Hamming
    filtering, and that training takes minutes even for a few thousand rows.
    """
    ivf = ivf_of(index)
    down = faiss.downcast_index(ivf) if ivf is not None else faiss.downcast_index(index)
    if hasattr(down, "do_polysemous_training"):
        down.do_polysemous_training = False
    pq_obj = getattr(down, "pq", None)
    if pq_obj is not None and hasattr(pq_obj, "cp"):
        pq_obj.cp.seed = seed


def _train_centroids_on_gpu(ivf, notes: list[str]) -> None:
    """Run the IVF k-means on the GPU (faiss GPU build): the usual way to speed up large builds."""
    try:
        resources = faiss.StandardGpuResources()
        gpu_flat = faiss.index_cpu_to_gpu(resources, 0, faiss.IndexFlat(ivf.d, ivf.metric_type))
        ivf.clustering_index = gpu_flat
        ivf._retrieve_gpu_keepalive = (resources, gpu_flat)
    except (RuntimeError, AttributeError) as exc:
        notes.append(f"IVF k-means on the CPU: the GPU was not usable ({str(exc).strip()[:120]})")


def _stores_exact_vectors(index, vectors: np.ndarray) -> bool:
    """True when the index gives back the vectors bit for bit (Flat, IVF-Flat, HNSW-Flat; not PQ)."""
    n = min(len(vectors), 16)
    start = index.ntotal - len(vectors)
    try:
        back = index.reconstruct_batch(np.arange(start, start + n, dtype=np.int64))
    except RuntimeError:
        return False
    return bool(np.array_equal(back, vectors[:n]))
