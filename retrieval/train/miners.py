"""Miners: which (anchor, positive, negative) triplets of a batch a loss looks at.

Each miner takes the pairwise value matrix of the batch (from a distance object), the
labels and the distance object, and returns index tensors. Anchors without a positive
or without a negative in the batch give no triplet.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retrieval.train.distances import label_masks


@dataclass(frozen=True)
class Triplets:
    anchor: torch.Tensor
    positive: torch.Tensor
    negative: torch.Tensor

    def __len__(self) -> int:
        return int(self.anchor.numel())

    def values(self, matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(d_ap, d_an) of each triplet read from the batch's value matrix."""
        return matrix[self.anchor, self.positive], matrix[self.anchor, self.negative]


def all_triplets(labels: torch.Tensor) -> Triplets:
    """Batch-all: every anchor, every positive (not itself), every negative."""
    pos, neg = label_masks(labels)
    valid = pos.unsqueeze(2) & neg.unsqueeze(1)  # [a, p, n]
    a, p, n = valid.nonzero(as_tuple=True)
    return Triplets(a, p, n)


def batch_hard(matrix: torch.Tensor, labels: torch.Tensor, distance) -> Triplets:
    """Per anchor, its hardest positive (farthest) and hardest negative (closest) in the batch."""
    pos, neg = label_masks(labels)
    usable = pos.any(1) & neg.any(1)
    _, p = distance.hardest_positive(matrix, pos)
    _, n = distance.hardest_negative(matrix, neg)
    a = usable.nonzero(as_tuple=True)[0]
    return Triplets(a, p[a], n[a])


def semi_hard(matrix: torch.Tensor, labels: torch.Tensor, distance) -> Triplets:
    """FaceNet's semi-hard mining: per positive pair (a, p), the closest negative that is still
    farther than p. Where no negative is farther than p, the farthest negative is taken
    (the convention of TensorFlow Addons' semi-hard triplet loss)."""
    pos, neg = label_masks(labels)
    a, p = pos.nonzero(as_tuple=True)
    d_ap = matrix[a, p].unsqueeze(1)  # (pairs, 1)
    rows = matrix[a]  # (pairs, n): anchor's values to everyone
    neg_rows = neg[a]
    farther = neg_rows & (distance.closer_by(d_ap, rows) > 0)
    _, semi = distance.hardest_negative(rows, farther)
    # "easiest" negative: the hardest-positive rule (farthest) applied to the negatives.
    _, easiest = distance.hardest_positive(rows, neg_rows)
    n = torch.where(farther.any(1), semi, easiest)
    keep = neg_rows.any(1)
    return Triplets(a[keep], p[keep], n[keep])
