"""Adam (default) or SGD, with linear warm-up and step decay (the strong re-ID baseline's schedule).

The baseline: lr 3.5e-4, 120 epochs, warm-up over the first 10 epochs from 1 % of the
rate, ×0.1 at epochs 40 and 70. For a run of E epochs the same shape is scaled: warm-up
over min(10, E/12) epochs (per iteration, so a short run still warms up smoothly) and
decay at 1/3 and 7/12 of the run.
"""

from __future__ import annotations

from dataclasses import dataclass

from retrieval.train.choices import OPTIMIZERS

DEFAULT_LR = 3.5e-4
WEIGHT_DECAY = 5e-4
SGD_MOMENTUM = 0.9


@dataclass(frozen=True)
class Schedule:
    base_lr: float
    warmup_epochs: float
    milestones: tuple[int, ...]
    gamma: float = 0.1
    warmup_start: float = 0.01

    @classmethod
    def scaled(cls, epochs: int, base_lr: float = DEFAULT_LR) -> "Schedule":
        warmup = min(10.0, epochs / 12.0)
        milestones = tuple(sorted({round(epochs * 40 / 120), round(epochs * 70 / 120)} - {0}))
        return cls(base_lr, warmup, milestones)

    def lr(self, epoch: int, step: int, steps_per_epoch: int) -> float:
        """The rate for iteration ``step`` (0-based) of ``epoch`` (0-based)."""
        rate = self.base_lr * self.gamma ** sum(epoch >= m for m in self.milestones)
        progress = epoch + step / max(1, steps_per_epoch)
        if progress < self.warmup_epochs:
            rate *= self.warmup_start + (1 - self.warmup_start) * progress / self.warmup_epochs
        return rate


def make_optimizer(parameters, name: str = "adam", base_lr: float = DEFAULT_LR):
    """Adam, or SGD with Nesterov momentum 0.9; weight decay 5e-4 for both."""
    import torch

    trainable = [p for p in parameters if p.requires_grad]
    if name == "sgd":
        return torch.optim.SGD(trainable, lr=base_lr, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY)
    if name == "adam":
        return torch.optim.Adam(trainable, lr=base_lr, weight_decay=WEIGHT_DECAY)
    raise ValueError(f"unknown optimizer {name!r}; choose from {', '.join(OPTIMIZERS)}")


def set_lr(optimizer, rate: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = rate
