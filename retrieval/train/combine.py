"""Parse a loss specification such as ``1.0*softmax+0.5*triplet:soft-margin`` and build the sum.

Grammar: terms joined by ``+``; a term is ``[WEIGHT*]NAME[:VARIANT]``. Names:
softmax, contrastive, triplet[:batch-hard|batch-all|semi-hard|soft-margin|soft-batch-hard],
improved-triplet, quadruplet, msml (margin sample mining), center, aligned (AlignedReID's local
triplet term on the part features; needs ``--parts P``).
Parsing needs no torch; building does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

LOSS_NAMES = ("softmax", "contrastive", "triplet", "improved-triplet", "quadruplet", "msml", "center", "aligned")
TRIPLET_VARIANTS = ("batch-hard", "batch-all", "semi-hard", "soft-margin", "soft-batch-hard")
DEFAULT_LOSS = "softmax+triplet:batch-hard"

_TERM = re.compile(r"^(?:(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*\*\s*)?(?P<name>[a-z-]+)(?::(?P<variant>[a-z-]+))?$")


@dataclass(frozen=True)
class LossTerm:
    weight: float
    name: str
    variant: str | None

    @property
    def label(self) -> str:
        """Column-safe name of the term, e.g. ``triplet_batch_hard``."""
        text = self.name if self.variant is None else f"{self.name}_{self.variant}"
        return text.replace("-", "_")


def parse_loss_spec(spec: str) -> list[LossTerm]:
    """The terms of ``spec``; ValueError with the offending term when it is not understood."""
    terms = []
    for raw in spec.split("+"):
        text = raw.strip()
        match = _TERM.match(text)
        if not match:
            raise ValueError(f"cannot read loss term {text!r}; expected [WEIGHT*]NAME[:VARIANT], e.g. 0.5*triplet:batch-hard")
        name, variant = match["name"], match["variant"]
        if name not in LOSS_NAMES:
            raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSS_NAMES)}")
        if name == "triplet":
            variant = variant or "batch-hard"
            if variant not in TRIPLET_VARIANTS:
                raise ValueError(f"unknown triplet variant {variant!r}; choose from {', '.join(TRIPLET_VARIANTS)}")
        elif variant is not None:
            raise ValueError(f"loss {name!r} takes no variant (got {variant!r})")
        weight = float(match["weight"]) if match["weight"] else 1.0
        if weight <= 0:
            raise ValueError(f"loss weight must be positive in {text!r}")
        terms.append(LossTerm(weight, name, variant))
    labels = [t.label for t in terms]
    if len(set(labels)) != len(labels):
        raise ValueError(f"loss {spec!r} names the same term twice")
    return terms


def build_term(term: LossTerm, num_classes: int, feat_dim: int, margin: float = 0.3):
    """The torch module of one term."""
    from retrieval.train import losses

    if term.name == "softmax":
        return losses.LabelSmoothingCrossEntropy(0.1)
    if term.name == "contrastive":
        return losses.ContrastiveLoss()
    if term.name == "triplet":
        if term.variant == "soft-margin":
            return losses.TripletMarginLoss(margin, miner="batch-hard", soft=True)
        if term.variant == "soft-batch-hard":
            return losses.SoftBatchHardTripletLoss(margin)
        return losses.TripletMarginLoss(margin, miner=term.variant)
    if term.name == "improved-triplet":
        return losses.ImprovedTripletLoss(margin)
    if term.name == "quadruplet":
        return losses.QuadrupletLoss(margin, margin / 2)
    if term.name == "msml":
        return losses.MarginSampleMiningLoss(margin)
    if term.name == "center":
        return losses.CenterLoss(num_classes, feat_dim)
    if term.name == "aligned":
        return losses.AlignedTripletLoss(margin)
    raise ValueError(term.name)


def uses_term(spec: str, name: str) -> bool:
    """Whether the loss specification has a term called ``name``."""
    return any(term.name == name for term in parse_loss_spec(spec))


def build_loss(spec: str, num_classes: int, feat_dim: int):
    """A ``CombinedLoss`` module for ``spec``."""
    from torch import nn

    terms = parse_loss_spec(spec)

    class CombinedLoss(nn.Module):
        """Weighted sum; ``forward(embeddings, logits, labels, parts=None) -> (total, {label: value})``."""

        def __init__(self):
            super().__init__()
            self.terms = terms
            self.parts = nn.ModuleList(build_term(t, num_classes, feat_dim) for t in terms)

        def forward(self, embeddings, logits, labels, parts=None):
            values = {}
            total = 0.0
            for term, module in zip(self.terms, self.parts):
                if module.needs == "parts":
                    if parts is None:
                        raise ValueError("the aligned loss needs part features (--parts P)")
                    value = module(embeddings, parts, labels)
                else:
                    value = module(logits if module.needs == "logits" else embeddings, labels)
                values[term.label] = value
                total = total + term.weight * value
            return total, values

    return CombinedLoss()
