"""An opened index: its manifest and row table, checks against other inputs, and search.

``load_index`` opens a folder (``indexes.folder``); ``IndexHandle.search`` answers k-nearest
queries on the CPU, faiss GPU or torch CUDA (``indexes.placement``), with exact distances and
stable ties for exact indexes (``indexes.search``).
"""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np
import pyarrow as pa

from retrieval.indexes.distance import key_to_distance
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.folder import read_folder, read_manifest, update_manifest
from retrieval.indexes.metric import METRIC_ALIASES
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
    exact_rerank_keys,
    exact_topk_keys,
    fill_missing,
    flat_vectors,
    hnsw_of,
    ivf_of,
    order_approximate,
    set_search_parameters,
)


def load_index(path: Path | str, device: str = "auto"):
    """Open an index folder; a missing or corrupt file or a manifest that does not match is a clear error.

    A sharded index (``indexes.sharded``) opens as a ``ShardedIndexHandle`` searching its shards here.
    """
    folder = Path(path)
    from retrieval.indexes.sharded import ShardedIndexHandle, is_sharded

    manifest = read_manifest(folder)
    if is_sharded(manifest):
        return ShardedIndexHandle(folder, manifest, device)
    index, manifest, rows = read_folder(folder)
    if manifest.get("stores_vectors"):
        prepare_direct_map(index)
    return IndexHandle(folder, index, manifest, rows, device=device)


def prepare_direct_map(index) -> None:
    """IVF indexes keep a row -> list map so stored vectors can be fetched for exact re-ranking."""
    ivf = ivf_of(index)
    if ivf is not None:
        try:
            ivf.make_direct_map()
        except RuntimeError:
            pass


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
        if built is None and len(self.manifest.get("sources") or []) > 1:
            raise FaissIndexError(
                f"{self.path}: rows were added or removed since the build (manifest 'sources'), so no single "
                "embeddings file's content hash describes it; search it, or rebuild it from one file to evaluate"
            )
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

            keys, rows = exact_topk_keys(candidates, self.index, q, k, self.metric, kc)
        else:
            raw, rows = self._run(backend, q, kc, nprobe, ef_search, notes)
            raw, rows, fill_notes = fill_missing(self.index, q, raw, rows, nprobe, ef_search, wanted_k=k)
            notes.extend(fill_notes)
            if self.stores_vectors:
                keys, rows = exact_rerank_keys(self.index, q, rows, k, self.metric)
            else:
                keys = None
                distances, rows = order_approximate(raw, rows, k, self.metric)
        if keys is not None:
            distances = key_to_distance(keys, self.metric)
        params = {"k": k, "nprobe": nprobe, "ef_search": ef_search, "backend": backend}
        return SearchResult(distances, rows, params, tuple(notes), keys)

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
        """Write new default search parameters (and the tuning record) into manifest.json.

        Under the folder's lock, merged into the manifest as it is on disk then (see
        ``folder.update_manifest``), so concurrent updates are never lost.
        """
        changes: dict = {"search_defaults": dict(params)}
        if tuned is not None:
            changes["tuned"] = tuned
        self.manifest = update_manifest(self.path, changes, built=self.manifest)
