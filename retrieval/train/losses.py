"""Metric-learning losses, each a torch module of a few lines.

A loss asks a distance object for the batch's value matrix (the object knows whether
smaller or larger is closer), a miner for the triplets, and reduces with a named rule.
Embedding losses take ``(embeddings (n, d), labels (n,))``; the softmax loss takes
``(logits (n, classes), labels)``. The attribute ``needs`` says which.

Sources: label smoothing (Szegedy et al. 2016, as in Luo et al.'s BoT baseline);
contrastive (Hadsell, Chopra, LeCun 2006); triplet with batch-all / batch-hard /
soft-margin (Hermans, Beyer, Leibe 2017); semi-hard (Schroff et al., FaceNet 2015);
soft batch-hard weights (Ristani & Tomasi 2018); improved triplet (Cheng et al. 2016);
quadruplet (Chen et al. 2017); margin sample mining (Xiao et al. 2017); center loss
(Wen et al. 2016).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.train.distances import EuclideanDistance, label_masks
from retrieval.train.miners import Triplets, all_triplets, batch_hard, semi_hard

TRIPLET_MINERS = ("batch-hard", "batch-all", "semi-hard", "soft-margin", "soft-batch-hard")


def mean_or_zero(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mean of ``values``; an empty set gives a zero that is still attached to the graph."""
    return values.mean() if values.numel() else like.sum() * 0.0


def mean_of_active(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Mean over the strictly positive entries (Hermans et al.'s "batch all, non-zero")."""
    return mean_or_zero(values[values > 0], like)


class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy against targets (1 - eps) * one_hot + eps / classes."""

    needs = "logits"

    def __init__(self, epsilon: float = 0.1):
        super().__init__()
        self.epsilon = epsilon

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1)
        target = torch.full_like(log_p, self.epsilon / logits.shape[1])
        target.scatter_add_(1, labels.unsqueeze(1), torch.full_like(log_p[:, :1], 1.0 - self.epsilon))
        return -(target * log_p).sum(1).mean()


class ContrastiveLoss(nn.Module):
    """Over all pairs i < j: ½·(d - pos_margin)₊² for a positive pair, ½·(neg_margin - d)₊² for a negative."""

    needs = "embeddings"

    def __init__(self, pos_margin: float = 0.0, neg_margin: float = 1.0, distance=None):
        super().__init__()
        self.pos_margin, self.neg_margin = pos_margin, neg_margin
        self.distance = distance or EuclideanDistance()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.distance.matrix(embeddings)
        pos, neg = label_masks(labels)
        upper = torch.ones_like(pos).triu(1)
        pos_terms = 0.5 * F.relu(self.distance.closer_by(torch.tensor(self.pos_margin), m[pos & upper])) ** 2
        neg_terms = 0.5 * F.relu(self.distance.closer_by(m[neg & upper], torch.tensor(self.neg_margin))) ** 2
        return mean_or_zero(torch.cat([pos_terms, neg_terms]), embeddings)


class TripletMarginLoss(nn.Module):
    """Triplet loss (margin - (d_an - d_ap))₊ over mined triplets; ``soft``: log(1 + exp(d_ap - d_an)).

    miner: "batch-hard" (mean over anchors), "batch-all" (mean over the active triplets),
    "semi-hard" (mean over positive pairs).
    """

    needs = "embeddings"

    def __init__(self, margin: float = 0.3, miner: str = "batch-hard", soft: bool = False, distance=None):
        super().__init__()
        if miner not in ("batch-hard", "batch-all", "semi-hard"):
            raise ValueError(f"unknown triplet miner {miner!r}")
        self.margin, self.miner, self.soft = margin, miner, soft
        self.distance = distance or EuclideanDistance()

    def mine(self, matrix: torch.Tensor, labels: torch.Tensor) -> Triplets:
        if self.miner == "batch-all":
            return all_triplets(labels)
        if self.miner == "semi-hard":
            return semi_hard(matrix, labels, self.distance)
        return batch_hard(matrix, labels, self.distance)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.distance.matrix(embeddings)
        d_ap, d_an = self.mine(m, labels).values(m)
        gap = self.distance.closer_by(d_ap, d_an)
        terms = F.softplus(-gap) if self.soft else F.relu(self.margin - gap)
        if self.miner == "batch-all" and not self.soft:
            return mean_of_active(terms, embeddings)
        return mean_or_zero(terms, embeddings)


class SoftBatchHardTripletLoss(nn.Module):
    """Per anchor, positives weighted by softmax of their hardness and negatives likewise
    (Ristani & Tomasi's adaptive weights), then (margin - (d_an* - d_ap*))₊, mean over anchors."""

    needs = "embeddings"

    def __init__(self, margin: float = 0.3, distance=None):
        super().__init__()
        self.margin = margin
        self.distance = distance or EuclideanDistance()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.distance.matrix(embeddings)
        pos, neg = label_masks(labels)
        zero = torch.zeros((), dtype=m.dtype, device=m.device)
        pos_hardness = self.distance.closer_by(zero, m).masked_fill(~pos, float("-inf"))
        neg_hardness = self.distance.closer_by(m, zero).masked_fill(~neg, float("-inf"))
        usable = pos.any(1) & neg.any(1)
        w_p = torch.softmax(pos_hardness[usable], dim=1)
        w_n = torch.softmax(neg_hardness[usable], dim=1)
        d_ap = (w_p * m[usable].masked_fill(~pos[usable], 0.0)).sum(1)
        d_an = (w_n * m[usable].masked_fill(~neg[usable], 0.0)).sum(1)
        return mean_or_zero(F.relu(self.margin - self.distance.closer_by(d_ap, d_an)), embeddings)


class ImprovedTripletLoss(nn.Module):
    """Cheng et al.: mean over all triplets of (margin - (d_an - d_ap))₊ plus
    beta × mean over positive pairs of (d_ap - pos_bound)₊, an absolute bound on positives."""

    needs = "embeddings"

    def __init__(self, margin: float = 0.3, pos_bound: float = 1.0, beta: float = 1.0, distance=None):
        super().__init__()
        self.margin, self.pos_bound, self.beta = margin, pos_bound, beta
        self.distance = distance or EuclideanDistance()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.distance.matrix(embeddings)
        d_ap, d_an = all_triplets(labels).values(m)
        relative = mean_or_zero(F.relu(self.margin - self.distance.closer_by(d_ap, d_an)), embeddings)
        pos, _ = label_masks(labels)
        bound = torch.tensor(self.pos_bound, dtype=m.dtype, device=m.device)
        absolute = mean_or_zero(F.relu(self.distance.closer_by(bound, m[pos])), embeddings)
        return relative + self.beta * absolute


class QuadrupletLoss(nn.Module):
    """Chen et al., with hard mining: per anchor, (m1 - (d_an - d_ap))₊ + (m2 - (d_n1n2 - d_ap))₊
    with its hardest positive, hardest negative, and the hardest pair (n1, n2) of two other
    identities that both differ from the anchor's; mean over anchors."""

    needs = "embeddings"

    def __init__(self, margin: float = 0.3, margin2: float = 0.15, distance=None):
        super().__init__()
        self.margin, self.margin2 = margin, margin2
        self.distance = distance or EuclideanDistance()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.distance.matrix(embeddings)
        pos, neg = label_masks(labels)
        d_ap, _ = self.distance.hardest_positive(m, pos)
        d_an, _ = self.distance.hardest_negative(m, neg)
        # hardest negative pair per anchor: pairs (i, j) of different labels, neither the anchor's.
        other = neg.unsqueeze(2) & neg.unsqueeze(1) & neg.unsqueeze(0)  # [anchor, i, j]
        pair_values = m.unsqueeze(0).expand_as(other)
        d_nn, _ = self.distance.hardest_negative(pair_values.reshape(len(m), -1), other.reshape(len(m), -1))
        usable = pos.any(1) & neg.any(1)
        first = F.relu(self.margin - self.distance.closer_by(d_ap, d_an))[usable]
        has_pair = other.reshape(len(m), -1).any(1)[usable]
        second = F.relu(self.margin2 - self.distance.closer_by(d_ap[usable], d_nn[usable]))
        second = torch.where(has_pair, second, torch.zeros_like(second))
        return mean_or_zero(first + second, embeddings)


class MarginSampleMiningLoss(nn.Module):
    """Xiao et al.: (margin - (min negative-pair d - max positive-pair d))₊ over the whole batch."""

    needs = "embeddings"

    def __init__(self, margin: float = 0.3, distance=None):
        super().__init__()
        self.margin = margin
        self.distance = distance or EuclideanDistance()

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        m = self.distance.matrix(embeddings)
        pos, neg = label_masks(labels)
        if not (pos.any() and neg.any()):
            return embeddings.sum() * 0.0
        hardest_pos, _ = self.distance.hardest_positive(m.reshape(1, -1), pos.reshape(1, -1))
        hardest_neg, _ = self.distance.hardest_negative(m.reshape(1, -1), neg.reshape(1, -1))
        return F.relu(self.margin - self.distance.closer_by(hardest_pos, hardest_neg)).squeeze(0)


class CenterLoss(nn.Module):
    """Wen et al.: ½‖x - c_y‖² averaged over the batch; the class centres are learned parameters."""

    needs = "embeddings"

    def __init__(self, num_classes: int, dim: int):
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, dim) * 0.01)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return 0.5 * ((embeddings - self.centers[labels]) ** 2).sum(1).mean()


@torch.no_grad()
def mining_statistics(embeddings: torch.Tensor, labels: torch.Tensor, margin: float = 0.3) -> dict[str, float]:
    """Euclidean batch statistics: fraction of all triplets that violate the margin, mean d_ap, mean d_an."""
    m = EuclideanDistance().matrix(embeddings.float())
    pos, neg = label_masks(labels)
    d_ap, d_an = all_triplets(labels).values(m)
    active = (d_an < d_ap + margin).float()
    nan = float("nan")
    return {
        "active_triplets": float(active.mean()) if active.numel() else nan,
        "mean_d_ap": float(m[pos].mean()) if pos.any() else nan,
        "mean_d_an": float(m[neg].mean()) if neg.any() else nan,
    }


def aligned_distance_matrix(parts: torch.Tensor) -> torch.Tensor:
    """(n, n) aligned local distances of a batch's part features (n, P, d), each stripe L2-normalised first.

    The same definition as ``retrieval.eval.aligned`` (euclidean element distances, the monotone
    shortest path through the P × P matrix), differentiable: torch picks the minimum's branch.
    """
    n, p, d = parts.shape
    unit = F.normalize(parts, dim=2).reshape(n * p, d)
    element = EuclideanDistance().matrix(unit).reshape(n, p, n, p).permute(0, 2, 1, 3)  # [a, b, i, j]
    total: list[list[torch.Tensor]] = [[None] * p for _ in range(p)]  # type: ignore[list-item]
    for i in range(p):
        for j in range(p):
            here = element[:, :, i, j]
            if i == 0 and j == 0:
                total[i][j] = here
            elif i == 0:
                total[i][j] = total[i][j - 1] + here
            elif j == 0:
                total[i][j] = total[i - 1][j] + here
            else:
                total[i][j] = torch.minimum(total[i - 1][j], total[i][j - 1]) + here
    return total[p - 1][p - 1]


class AlignedTripletLoss(nn.Module):
    """AlignedReID's local triplet term: the batch-hard triplets mined on the global (embedding)
    distance, scored with the aligned local distance of their part features; (margin - (d_an - d_ap))₊,
    mean over anchors. Sits beside the global triplet term, e.g. ``triplet+aligned``."""

    needs = "parts"

    def __init__(self, margin: float = 0.3):
        super().__init__()
        self.margin = margin
        self.distance = EuclideanDistance()

    def forward(self, embeddings: torch.Tensor, parts: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            triplets = batch_hard(self.distance.matrix(embeddings), labels, self.distance)
        local = aligned_distance_matrix(parts)
        d_ap, d_an = triplets.values(local)
        return mean_or_zero(F.relu(self.margin - (d_an - d_ap)), parts)
