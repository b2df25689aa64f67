"""Distance objects for the losses: each knows its direction, so no loss writes `if cosine`.

``matrix(x, y)`` gives the pairwise values; ``closer_by(a, b)`` is how much ``a`` is closer
than ``b`` (positive when ``a`` is the closer one), whatever the direction. A triplet's
violation is then ``margin - closer_by(d_ap, d_an)``.
"""

from __future__ import annotations

import torch


class EuclideanDistance:
    """Euclidean distance (``squared=True``: squared); smaller is closer."""

    is_inverted = False

    def __init__(self, squared: bool = False, eps: float = 1e-12):
        self.squared = squared
        self.eps = eps

    @property
    def name(self) -> str:
        return "sqeuclidean" if self.squared else "euclidean"

    def matrix(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        y = x if y is None else y
        sq = (x * x).sum(1, keepdim=True) + (y * y).sum(1).unsqueeze(0) - 2.0 * x @ y.t()
        sq = sq.clamp(min=0.0)
        if self.squared:
            return sq
        # clamp before sqrt: the gradient of sqrt at 0 is infinite.
        return sq.clamp(min=self.eps).sqrt()

    def closer_by(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return b - a

    def hardest_positive(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the farthest entry under ``mask`` (value, column)."""
        return values.masked_fill(~mask, float("-inf")).max(1)

    def hardest_negative(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row, the closest entry under ``mask`` (value, column)."""
        return values.masked_fill(~mask, float("inf")).min(1)


class CosineSimilarity:
    """Cosine similarity of L2-normalised vectors; larger is closer (inverted)."""

    is_inverted = True
    name = "cosine"

    def matrix(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        x = torch.nn.functional.normalize(x, dim=1)
        y = x if y is None else torch.nn.functional.normalize(y, dim=1)
        return x @ y.t()

    def closer_by(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return a - b

    def hardest_positive(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return values.masked_fill(~mask, float("inf")).min(1)

    def hardest_negative(self, values: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return values.masked_fill(~mask, float("-inf")).max(1)


def label_masks(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positive mask without the diagonal, negative mask) of a batch's labels, both (n, n) bool."""
    same = labels.unsqueeze(0) == labels.unsqueeze(1)
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    return same & ~eye, ~same
