"""The embedding network on a backbone's feature map, and groups of peers for mutual learning.

    map --flatten--> body
    map --pool--> pooled --head--> pre-bn --BatchNorm (BNNeck)--> post-bn --> classifier logits
    map --P horizontal stripes, 1×1 conv--> parts (the local branch of AlignedReID, optional)

* ``--pool``: ``avg`` / ``max`` (global), ``gem`` (generalised mean, learned exponent,
  Radenović et al. 2018), ``flatten`` (the whole map, every position kept: C·h·w values).
* ``--head``: ``none`` (pre-bn is pooled), ``linear`` or ``mlp`` (Linear-BN-ReLU-Linear), a
  projection between the retrieval feature and the losses (as in SimCLR, Chen et al. 2020): the
  losses shape the head's output and the features before it stay more general.
* BNNeck (Luo et al. 2019): pre-bn feeds the metric losses; a BatchNorm1d without a learned shift
  gives post-bn, which feeds a bias-free classifier (the softmax loss).
* The retrieval feature is one of ``FEATURES``: ``body`` (the backbone's whole map, flattened:
  where the strokes are is kept), ``pooled``, ``pre-bn`` (what the metric losses see), ``post-bn``.
* Parts: the map max-pooled into P horizontal stripes (top to bottom), each reduced by a 1×1
  conv + BN + ReLU to ``part_dim`` values (AlignedReID, Zhang et al. 2017).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from retrieval.train.choices import FEATURES, HEADS, POOLS
from retrieval.train.models import build_backbone

__all__ = ["FEATURES", "HEADS", "POOLS", "EmbeddingNet", "PeerGroup", "build_network", "network_spec"]
DEFAULT_HEAD_DIM = 128
DEFAULT_PART_DIM = 64


class GeM(nn.Module):
    """Generalised mean pooling: (mean of x^p)^(1/p) over the map, p learned (starts at 3)."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean((2, 3)).pow(1.0 / self.p)


def make_pool(name: str) -> nn.Module:
    if name == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
    if name == "max":
        return nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten())
    if name == "flatten":
        return nn.Flatten()
    if name == "gem":
        return GeM()
    raise ValueError(f"unknown pool {name!r}; choose from {', '.join(POOLS)}")


def make_head(name: str, dim_in: int, dim_out: int) -> nn.Module:
    if name == "none":
        return nn.Identity()
    if name == "linear":
        return nn.Linear(dim_in, dim_out)
    if name == "mlp":
        hidden = max(dim_out, min(dim_in, 512))
        return nn.Sequential(nn.Linear(dim_in, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                             nn.Linear(hidden, dim_out))
    raise ValueError(f"unknown head {name!r}; choose from {', '.join(HEADS)}")


class PartBranch(nn.Module):
    """P horizontal stripes of the map (max over each stripe), 1×1 conv + BN + ReLU: (n, P, part_dim)."""

    def __init__(self, channels: int, parts: int, part_dim: int):
        super().__init__()
        self.stripes = nn.AdaptiveMaxPool2d((parts, 1))
        self.reduce = nn.Sequential(nn.Conv2d(channels, part_dim, 1, bias=False), nn.BatchNorm2d(part_dim),
                                    nn.ReLU(inplace=True))

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.reduce(self.stripes(feature_map)).squeeze(3).transpose(1, 2)


@dataclass
class Features:
    """One forward pass: the three retrieval features, the logits, and the parts (or None)."""

    body: torch.Tensor
    pooled: torch.Tensor
    pre: torch.Tensor
    post: torch.Tensor
    logits: torch.Tensor
    parts: torch.Tensor | None = None

    def feature(self, name: str) -> torch.Tensor:
        return {"body": self.body, "pooled": self.pooled, "pre-bn": self.pre, "post-bn": self.post}[name]


class EmbeddingNet(nn.Module):
    """Backbone + pool + head + BNNeck + classifier (+ part branch); ``forward`` gives ``Features``."""

    def __init__(self, backbone: nn.Module, num_classes: int, image_size, pool: str = "avg", head: str = "none",
                 head_dim: int = DEFAULT_HEAD_DIM, parts: int = 0, part_dim: int = DEFAULT_PART_DIM):
        super().__init__()
        self.backbone = backbone
        self.pool = make_pool(pool)
        self.body_dim, self.pooled_dim = self._dims(image_size)
        self.head = make_head(head, self.pooled_dim, head_dim)
        self.feat_dim = self.pooled_dim if head == "none" else head_dim
        self.neck = nn.BatchNorm1d(self.feat_dim)
        self.neck.bias.requires_grad_(False)  # no shift: keeps the post-BN feature centred for cosine
        self.classifier = nn.Linear(self.feat_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        self.parts = PartBranch(backbone.out_channels, parts, part_dim) if parts else None

    @torch.no_grad()
    def _dims(self, image_size) -> tuple[int, int]:
        """(body, pooled) widths, from a dry run at the image size."""
        was_training = self.backbone.training
        self.backbone.eval()  # a dry run must not touch the BatchNorm statistics
        feature_map = self.backbone(torch.zeros(1, self.backbone_in_channels(), *image_size))
        self.backbone.train(was_training)
        return int(feature_map[0].numel()), int(self.pool(feature_map).shape[1])

    def backbone_in_channels(self) -> int:
        first = next(m for m in self.backbone.modules() if isinstance(m, nn.Conv2d))
        return first.in_channels

    def dims(self) -> dict[str, int]:
        """The width of each retrieval feature."""
        return {"body": self.body_dim, "pooled": self.pooled_dim, "pre-bn": self.feat_dim, "post-bn": self.feat_dim}

    def forward(self, x: torch.Tensor) -> Features:
        feature_map = self.backbone(x)
        pooled = self.pool(feature_map)
        pre = self.head(pooled)
        post = self.neck(pre)
        parts = None if self.parts is None else self.parts(feature_map)
        return Features(feature_map.flatten(1), pooled, pre, post, self.classifier(post), parts)


class PeerGroup(nn.Module):
    """N peer networks trained together (deep mutual learning); N = 1 is plain training."""

    def __init__(self, peers: list[EmbeddingNet]):
        super().__init__()
        self.peers = nn.ModuleList(peers)

    def __len__(self) -> int:
        return len(self.peers)

    def forward(self, x: torch.Tensor) -> list[Features]:
        return [peer(x) for peer in self.peers]


def network_spec(config: Any, in_channels: int, num_classes: int) -> dict[str, Any]:
    """The architecture a model folder records (``config.json``'s "model")."""
    return {
        "backbone": config.backbone, "depth": config.depth, "width": config.width, "in_channels": in_channels,
        "num_classes": num_classes, "image_size": list(config.image_size), "pool": config.pool, "head": config.head,
        "head_dim": config.head_dim, "parts": config.parts, "part_dim": config.part_dim, "peers": config.mutual,
    }


def build_peer(spec: dict[str, Any]) -> EmbeddingNet:
    backbone = build_backbone(spec["backbone"], spec["in_channels"], spec.get("depth"), spec.get("width"))
    return EmbeddingNet(backbone, spec["num_classes"], spec["image_size"], spec.get("pool", "avg"),
                        spec.get("head", "none"), spec.get("head_dim") or DEFAULT_HEAD_DIM, spec.get("parts") or 0,
                        spec.get("part_dim") or DEFAULT_PART_DIM)


def build_network(spec: dict[str, Any]) -> PeerGroup:
    """The peer group of a spec (a model folder written before pools and peers existed: one avg-pooled peer)."""
    return PeerGroup([build_peer(spec) for _ in range(spec.get("peers") or 1)])
