"""Deep mutual learning (Zhang et al., CVPR 2018) between N peer networks trained together.

Beside its own loss, peer i is pulled towards each other peer j ≠ i (the other side detached,
so each term trains peer i only), mean over the N − 1 others:

* ``mutual_kl``: KL(p_j ‖ p_i) of the classifiers' class posteriors p = softmax(logits), mean over
  the batch (the DML paper's term); only when the loss has a softmax term (otherwise the
  classifiers are not trained and their posteriors mean nothing).
* ``mutual_metric``: the mean over the batch's n² pairs of (D_i − D_j)², D the euclidean distance
  matrix of the pre-bn features (the metric mutual term of AlignedReID, Zhang et al. 2017).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retrieval.train.distances import EuclideanDistance


def kl_towards(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """KL(softmax(target) ‖ softmax(logits)), mean over rows; the target is detached."""
    target = F.log_softmax(target_logits.detach().float(), dim=1)
    return F.kl_div(F.log_softmax(logits.float(), dim=1), target, reduction="batchmean", log_target=True)


def metric_towards(embeddings: torch.Tensor, target_embeddings: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of the two batch distance matrices; the target is detached."""
    distance = EuclideanDistance()
    return (distance.matrix(embeddings.float()) - distance.matrix(target_embeddings.detach().float())).pow(2).mean()


def mutual_terms(embeddings: list[torch.Tensor], logits: list[torch.Tensor], with_kl: bool) -> list[dict[str, torch.Tensor]]:
    """Per peer, its mutual terms {"mutual_kl"?, "mutual_metric"} towards the other peers."""
    peers = len(embeddings)
    out = []
    for i in range(peers):
        others = [j for j in range(peers) if j != i]
        terms = {"mutual_metric": sum(metric_towards(embeddings[i], embeddings[j]) for j in others) / len(others)}
        if with_kl:
            terms["mutual_kl"] = sum(kl_towards(logits[i], logits[j]) for j in others) / len(others)
        out.append(terms)
    return out
