"""Distance blocks left on the GPU: the few whole-block operations of ranking, done there.

Ranking (``eval.ranking``) reads a whole block only to compare it with per-row thresholds (count
the entries at or below, select them) and to bound each row's k-th smallest value from a column
sample; everything else reads a few chosen entries. ``DeviceValues`` holds a block as a torch
tensor on its device and does exactly those operations there, so only the selected entries travel
to the host. Thresholds are float64; a float32 value x satisfies x ≤ t exactly when x ≤ the largest
float32 ≤ t (``float32_at_most``), so the device compares float32 with float32 and decides every
comparison as the host's float64 comparison does: the same entries, the same ranks.
"""

from __future__ import annotations

import numpy as np

from retrieval.indexes.distance import float32_at_most
from retrieval.indexes.arrays import nonzero_2d


class DeviceValues:
    """A (b, G) float32 block on a torch device, with the operations ``eval.ranking`` needs."""

    dtype = np.dtype(np.float32)

    def __init__(self, tensor) -> None:
        self.tensor = tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.tensor.shape)

    @property
    def size(self) -> int:
        return int(self.tensor.numel())

    def __getitem__(self, index):
        """``values[first:last]``: those rows, still on the device; ``values[rows, cols]``: the
        chosen entries, as a host float32 array."""
        if isinstance(index, slice):
            return DeviceValues(self.tensor[index])
        rows, cols = (self._index(part) for part in index)
        return self.tensor[rows, cols].cpu().numpy()

    def count_at_most(self, threshold: np.ndarray) -> np.ndarray:
        """Per row, how many entries are ≤ ``threshold[row]`` (float64)."""
        return (self.tensor <= self._column(threshold)).sum(dim=1).cpu().numpy().astype(np.int64)

    def entries_at_most(self, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, cols, float32 values) of the entries ≤ ``threshold[row]``, in row-major order."""
        import torch

        rows, cols = torch.nonzero(self.tensor <= self._column(threshold), as_tuple=True)
        values = self.tensor[rows, cols]
        return rows.cpu().numpy(), cols.cpu().numpy(), values.cpu().numpy()

    def kth_smallest(self, k: int, step: int) -> np.ndarray:
        """Per row, the k-th smallest (1-based) of columns 0, step, 2·step, … as float64."""
        import torch

        return torch.kthvalue(self.tensor[:, ::step], k, dim=1).values.cpu().numpy().astype(np.float64)

    def _column(self, threshold: np.ndarray):
        import torch

        return torch.from_numpy(float32_at_most(threshold)).to(self.tensor.device)[:, None]

    def _index(self, part):
        import torch

        return torch.from_numpy(np.ascontiguousarray(part, dtype=np.int64)).to(self.tensor.device)


def count_at_most(values, threshold: np.ndarray) -> np.ndarray:
    """Per row of a host array or ``DeviceValues``, the entries ≤ ``threshold[row]``."""
    if isinstance(values, DeviceValues):
        return values.count_at_most(threshold)
    return np.count_nonzero(values <= threshold[:, None], axis=1)


def entries_at_most(values, threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, values) of the entries ≤ ``threshold[row]``, row-major, host arrays."""
    if isinstance(values, DeviceValues):
        return values.entries_at_most(threshold)
    rows, cols = nonzero_2d(values <= threshold[:, None])
    return rows, cols, values[rows, cols]


def kth_smallest_of_columns(values, k: int, step: int) -> np.ndarray:
    """Per row, the k-th smallest of columns 0, step, 2·step, … (float64)."""
    if isinstance(values, DeviceValues):
        return values.kth_smallest(k, step)
    part = values if step == 1 else values[:, ::step]
    return np.partition(part, k - 1, axis=1)[:, k - 1].astype(np.float64)
