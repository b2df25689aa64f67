"""Where a search runs: faiss on the GPU, exact torch on CUDA (flat indexes), or faiss on the CPU.

Order for ``device="auto"``: the faiss GPU build when it is installed and sees a GPU; else, for
exact (flat) indexes, torch on CUDA; else the CPU. ``device="cuda"`` asks for the same but is an
error when there is no CUDA device at all. Every path ends in the same exact re-ranking on the
CPU for indexes that store their vectors, so the results are the same on every device.

torch is imported lazily: indexing works without it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import faiss
import numpy as np

from retrieval.indexes.distance import DEVICES, cuda_driver_present, full_precision_torch, torch_cuda_available  # noqa: F401 (one device probe, re-exported)
from retrieval.indexes.errors import FaissIndexError

GPU_MAX_K = 2048  # faiss GPU indexes refuse k (and nprobe) above this

FAISS_CPU = "faiss-cpu"
FAISS_GPU = "faiss-gpu"
TORCH_CUDA = "torch-cuda"


@dataclass
class Placement:
    """The chosen backend and the notes that explain a fallback (returned to the caller, never printed)."""

    device: str  # what was asked
    backend: str  # FAISS_CPU | FAISS_GPU | TORCH_CUDA
    notes: list[str] = field(default_factory=list)


def faiss_gpu_count() -> int:
    """GPUs that faiss can use (0 with faiss-cpu)."""
    get = getattr(faiss, "get_num_gpus", None)
    try:
        return int(get()) if get else 0
    except Exception:  # a broken CUDA runtime is "no GPU" for us
        return 0


def resolve_placement(device: str, *, exact_flat: bool, gpu_ok: bool = True) -> Placement:
    """Pick the backend for ``device`` (auto|cpu|cuda) and an index that is flat or not.

    ``gpu_ok`` is False for index types faiss cannot put on a GPU (HNSW).
    """
    if device not in DEVICES:
        raise FaissIndexError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device == "cpu":
        return Placement(device, FAISS_CPU)
    gpus = faiss_gpu_count()
    if gpus > 0 and gpu_ok:
        return Placement(device, FAISS_GPU)
    torch_cuda = torch_cuda_available() if (exact_flat or device == "cuda") else False
    if exact_flat and torch_cuda:
        return Placement(device, TORCH_CUDA)
    if device == "cuda":
        if gpus == 0 and not torch_cuda:  # (torch_cuda was looked up: device == "cuda")
            raise FaissIndexError("--device cuda: no CUDA device is available (use --device auto or cpu)")
        why = "faiss cannot put this index type on a GPU" if gpus else "the faiss GPU build is not installed"
        return Placement(device, FAISS_CPU, [f"searching on the CPU: {why}; only flat indexes use torch on CUDA"])
    return Placement(device, FAISS_CPU)


class GpuIndex:
    """A faiss GPU copy of a CPU index (the resources object must outlive the index)."""

    def __init__(self, cpu_index: faiss.Index):
        self.resources = faiss.StandardGpuResources()
        self.index = faiss.index_cpu_to_gpu(self.resources, 0, cpu_index)

    def set_parameter(self, name: str, value: int) -> None:
        faiss.GpuParameterSpace().set_index_parameter(self.index, name, value)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.index.search(queries, k)


def gpu_index_or_note(cpu_index: faiss.Index) -> tuple[GpuIndex | None, str | None]:
    """The GPU copy, or None and the reason (faiss has no GPU version of some index types)."""
    try:
        return GpuIndex(cpu_index), None
    except (RuntimeError, AttributeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return None, f"faiss could not copy the index to the GPU ({first}); searching on the CPU"


class TorchFlatSearcher:
    """Exact top-k on CUDA with torch, over a flat index's vectors (already normalised for cosine).

    Returns faiss-convention scores (squared L2, or inner product) so that the caller treats
    every backend the same way.
    """

    def __init__(self, gallery: np.ndarray, metric: str, block_rows: int = 4096, device: str = "cuda"):
        import torch

        full_precision_torch(torch)  # no TF32: the scores must stay within the float32 bound
        self.torch = torch
        self.metric = metric
        self.block_rows = block_rows
        self.device = device  # "cuda"; "cpu" lets the tests check this path without a GPU
        with warnings.catch_warnings():  # the flat index's vectors are a read-only view; we only read them
            warnings.simplefilter("ignore", UserWarning)
            self.gallery = torch.from_numpy(gallery).to(device)
        self.gallery_sq = (self.gallery * self.gallery).sum(dim=1) if metric == "l2" else None

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        torch = self.torch
        scores_out = np.empty((len(queries), k), dtype=np.float32)
        rows_out = np.empty((len(queries), k), dtype=np.int64)
        for start in range(0, len(queries), self.block_rows):
            q = torch.from_numpy(np.ascontiguousarray(queries[start : start + self.block_rows])).to(self.device)
            dots = q @ self.gallery.T
            if self.metric == "l2":
                sq = (q * q).sum(dim=1, keepdim=True) + self.gallery_sq[None, :] - 2.0 * dots
                values, rows = torch.topk(sq, k, dim=1, largest=False, sorted=True)
            else:
                values, rows = torch.topk(dots, k, dim=1, largest=True, sorted=True)
            scores_out[start : start + len(q)] = values.cpu().numpy()
            rows_out[start : start + len(q)] = rows.cpu().numpy()
        return scores_out, rows_out
