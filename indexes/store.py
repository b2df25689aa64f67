"""Index folders: build (streaming), save with a manifest, load with checks, search.

An index folder holds::

    index.faiss      the faiss index (vectors normalised first for cosine)
    manifest.json    format version, factory string, metric, dimension, count, content hash and split
                     of the source embeddings, build parameters, versions, build seconds,
                     default search parameters (updated by ``retrieve tune``)
    rows.parquet     faiss row -> id, pid, camid, split

The folder is written under a temporary name beside its destination and renamed into place.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.factory import (
    IndexSpec,
    check_trainable,
    default_train_size,
    spec_for_factory,
    spec_for_kind,
)
from retrieval.indexes.faiss_output import captured_stderr_lines, faiss_warnings
from retrieval.indexes.metric import METRIC_ALIASES, check_metric_name, faiss_metric, prepare_vectors
from retrieval.indexes.placement import (
    FAISS_CPU,
    FAISS_GPU,
    GPU_MAX_K,
    TORCH_CUDA,
    Placement,
    TorchFlatSearcher,
    gpu_index_or_note,
    resolve_placement,
    torch_cuda_available,
)
from retrieval.indexes.search import (
    SearchResult,
    candidate_count,
    check_k,
    check_queries,
    exact_rerank,
    exact_topk,
    fill_missing,
    flat_vectors,
    hnsw_of,
    ivf_of,
    order_approximate,
    set_search_parameters,
)

MANIFEST_FORMAT_VERSION = 1
INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.json"
ROWS_FILE = "rows.parquet"
REQUIRED_MANIFEST_KEYS = ("format_version", "factory", "metric", "dim", "count", "build", "search_defaults")
ProgressCallback = Callable[[str, int, int], None]


# ---------------------------------------------------------------- input batches


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

    def __init__(self, capacity: int, seed: int):
        self.capacity = capacity
        self.rng = np.random.default_rng(seed)
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


# ---------------------------------------------------------------- build


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
    manifest = _manifest(spec, metric, index.d, index.ntotal, content_hash, split, source_path, seed,
                         build.train_rows, stores_vectors, placement)
    manifest["build_seconds"] = round(time.perf_counter() - started, 3)
    manifest["warnings"] = build.warnings
    path = _write_folder(Path(out_dir), index, manifest, rows)
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


def _add_pass(batches, spec, params, metric, build: _Build, progress):
    """Create (and train) the index on the first batch, then add every batch; returns index, rows, exactness."""
    index = None
    parts: list[pa.Table] = []
    stores_vectors = False
    for batch in batches():
        added = index.ntotal if index is not None else 0
        vectors = prepare_vectors(batch.vectors, metric, what="gallery", first_row=added)
        if index is None:
            build.spec = spec or spec_for_kind(dim=vectors.shape[1], count=0, **params)
            index = _new_index(build.spec, vectors.shape[1], metric)
            if not index.is_trained:
                build.train_rows, warnings = _train(index, build, progress)
                build.warnings.extend(warnings)
            _prepare_direct_map(index)
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


def _prepare_direct_map(index) -> None:
    """IVF indexes keep a row -> list map so stored vectors can be fetched for exact re-ranking."""
    ivf = ivf_of(index)
    if ivf is not None:
        try:
            ivf.make_direct_map()
        except RuntimeError:
            pass


def _stores_exact_vectors(index, vectors: np.ndarray) -> bool:
    """True when the index gives back the vectors bit for bit (Flat, IVF-Flat, HNSW-Flat; not PQ)."""
    n = min(len(vectors), 16)
    start = index.ntotal - len(vectors)
    try:
        back = index.reconstruct_batch(np.arange(start, start + n, dtype=np.int64))
    except RuntimeError:
        return False
    return bool(np.array_equal(back, vectors[:n]))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    try:
        project = version("retrieve")
    except PackageNotFoundError:
        project = None
    return {"faiss": faiss.__version__, "numpy": np.__version__, "retrieve": project}


def _manifest(spec, metric, dim, count, content_hash, split, source_path, seed, train_rows, stores_vectors, placement):
    return {
        "format_version": MANIFEST_FORMAT_VERSION,
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
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": {"index": INDEX_FILE, "rows": ROWS_FILE},
    }


def _write_folder(out_dir: Path, index, manifest: dict, rows: pa.Table) -> Path:
    if out_dir.exists() and not out_dir.is_dir():
        raise FaissIndexError(f"{out_dir}: exists and is not a folder; choose another --out")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MANIFEST_FILE).exists():
        raise FaissIndexError(f"{out_dir}: folder exists, is not empty and is not an index; choose another --out")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        faiss.write_index(index, str(staging / INDEX_FILE))
        pq.write_table(rows, staging / ROWS_FILE)
        (staging / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
            os.rename(out_dir, old)
            os.rename(staging, out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


# ---------------------------------------------------------------- load


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


def load_index(path: Path | str, device: str = "auto") -> "IndexHandle":
    """Open an index folder; a missing or corrupt file or a manifest that does not match is a clear error."""
    folder = Path(path)
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
    if manifest.get("stores_vectors"):
        _prepare_direct_map(index)
    return IndexHandle(folder, index, manifest, rows, device=device)


# ---------------------------------------------------------------- the handle


class IndexHandle:
    """An opened index: its manifest, row table and search."""

    def __init__(self, path: Path, index: faiss.Index, manifest: dict, rows: pa.Table, device: str = "auto"):
        self.path = Path(path)
        self.index = index
        self.manifest = manifest
        self.rows = rows
        self.device = device
        self.placement = resolve_placement(
            device, exact_flat=self.is_exact, gpu_ok=hnsw_of(index) is None
        )
        self._gpu = None
        self._torch = None

    # --- what it is
    @property
    def dim(self) -> int:
        return int(self.manifest["dim"])

    @property
    def count(self) -> int:
        return int(self.manifest["count"])

    @property
    def metric(self) -> str:
        return self.manifest["metric"]

    @property
    def is_exact(self) -> bool:
        return bool(self.manifest.get("exact"))

    @property
    def stores_vectors(self) -> bool:
        return bool(self.manifest.get("stores_vectors"))

    @property
    def nlist(self) -> int | None:
        ivf = ivf_of(self.index)
        return int(ivf.nlist) if ivf is not None else None

    @property
    def is_hnsw(self) -> bool:
        return hnsw_of(self.index) is not None

    def default_search_params(self) -> dict:
        defaults = dict(self.manifest.get("search_defaults") or {})
        return {"nprobe": defaults.get("nprobe"), "ef_search": defaults.get("ef_search")}

    # --- checks
    def check_content_hash(self, content_hash: str) -> None:
        """The embeddings given again must be the ones the index was built from."""
        built = self.manifest.get("content_hash")
        if built is None:
            raise FaissIndexError(f"{self.path}: the index records no content hash, so it cannot be checked; rebuild it")
        if built != content_hash:
            raise FaissIndexError(
                f"{self.path}: index was built from other embeddings (content hash {built[:12]}…, "
                f"these are {content_hash[:12]}…); rebuild the index from this file"
            )

    def check_metric(self, metric: str) -> None:
        """A search or evaluation asking for another metric convention than the index's is an error."""
        wanted = METRIC_ALIASES.get(metric)
        if wanted != self.metric:
            raise FaissIndexError(
                f"{self.path}: index was built for metric {self.metric!r}, not {metric!r}; "
                f"rebuild with --metric {wanted or metric} or use the index's metric"
            )

    # --- search
    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None):
        """(distances (n, k) float32, rows (n, k) int64): smaller = closer, never -1."""
        result = self.search_detailed(queries, k, nprobe=nprobe, ef_search=ef_search)
        return result.distances, result.rows

    def search_detailed(
        self, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None, metric: str | None = None
    ) -> SearchResult:
        if metric is not None:
            self.check_metric(metric)
        q = check_queries(queries, self.dim, self.metric)
        check_k(k, self.count)
        defaults = self.default_search_params()
        nprobe = nprobe if nprobe is not None else (defaults["nprobe"] if self.nlist else None)
        ef_search = ef_search if ef_search is not None else (defaults["ef_search"] if self.is_hnsw else None)
        if ef_search is not None and self.is_hnsw:
            ef_search = max(ef_search, k)  # HNSW cannot return more than efSearch neighbours well
        set_search_parameters(self.index, nprobe, ef_search)
        notes = list(self.placement.notes)
        backend = self.placement.backend
        if backend == FAISS_GPU and (k > GPU_MAX_K or (nprobe or 0) > GPU_MAX_K):
            backend = TORCH_CUDA if self.is_exact and torch_cuda_available() else FAISS_CPU
            notes.append(f"k {k} or nprobe {nprobe} is above faiss's GPU limit of {GPU_MAX_K}: searched with {backend}")
        # Exact indexes fetch a margin of extra candidates so that ties and float32 rounding cannot drop
        # a row of the true top-k; approximate ones re-rank just their k (exact distances, stable ties).
        kc = candidate_count(k, self.count, self.is_exact, cap=GPU_MAX_K if backend == FAISS_GPU else None)
        if self.is_exact and self.stores_vectors:
            cap = GPU_MAX_K if backend == FAISS_GPU else None

            def candidates(queries: np.ndarray, wanted: int):
                runner = backend if cap is None or wanted <= cap else FAISS_CPU
                return self._run(runner, queries, wanted, nprobe, ef_search, notes)

            distances, rows = exact_topk(candidates, self.index, q, k, self.metric, kc)
        else:
            raw, rows = self._run(backend, q, kc, nprobe, ef_search, notes)
            raw, rows, fill_notes = fill_missing(self.index, q, raw, rows, nprobe, ef_search, wanted_k=k)
            notes.extend(fill_notes)
            if self.stores_vectors:
                distances, rows = exact_rerank(self.index, q, rows, k, self.metric)
            else:
                distances, rows = order_approximate(raw, rows, k, self.metric)
        params = {"k": k, "nprobe": nprobe, "ef_search": ef_search, "backend": backend}
        return SearchResult(distances, rows, params, tuple(notes))

    def _run(self, backend: str, q: np.ndarray, kc: int, nprobe, ef_search, notes: list[str]):
        if backend == FAISS_GPU:
            if self._gpu is None:
                self._gpu, note = gpu_index_or_note(self.index)
                if note:
                    notes.append(note)
                    self.placement = Placement(self.device, FAISS_CPU, [note])
            if self._gpu is not None:
                set_search_parameters(self._gpu.index, nprobe, ef_search, setter=self._gpu.set_parameter)
                return self._gpu.search(q, kc)
        if backend == TORCH_CUDA:
            if self._torch is None:
                self._torch = TorchFlatSearcher(flat_vectors(self.index), self.metric)
            return self._torch.search(q, kc)
        return self.index.search(q, kc)

    # --- ids of rows
    def row_ids(self, rows: np.ndarray) -> np.ndarray:
        ids = np.asarray(self.rows.column("id").to_numpy(zero_copy_only=False), dtype=object)
        return ids[rows]

    def save_search_defaults(self, params: dict, tuned: dict | None = None) -> None:
        """Write new default search parameters (and the tuning record) into manifest.json, atomically."""
        manifest = dict(self.manifest)
        manifest["search_defaults"] = {**(manifest.get("search_defaults") or {}), **params}
        if tuned is not None:
            manifest["tuned"] = tuned
        mpath = self.path / MANIFEST_FILE
        fd, tmp = tempfile.mkstemp(prefix=".manifest.", suffix=".tmp", dir=self.path)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(json.dumps(manifest, indent=2) + "\n")
            os.replace(tmp, mpath)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.manifest = manifest
