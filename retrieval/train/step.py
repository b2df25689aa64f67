"""One training epoch: PK batches, augmentations, the forward pass of every peer, the losses
(each peer's own terms, plus the mutual terms between peers), the optimiser step.

On CUDA the forward pass runs under ``torch.autocast`` (float16) and the backward pass through a
``GradScaler`` (mixed precision); the losses are computed in float32 on both devices.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import torch

from retrieval.train.losses import mining_statistics
from retrieval.train.mutual import mutual_terms
from retrieval.train.optim import set_lr

MARGIN = 0.3


def autocast(device: torch.device):
    """float16 autocast on CUDA; a no-op context on the CPU."""
    return torch.autocast(device_type=device.type, dtype=torch.float16, enabled=device.type == "cuda")


def grad_scaler(device: torch.device):
    return torch.amp.GradScaler(device.type, enabled=device.type == "cuda")


def prefetched(items: list, load: Callable):
    """Yield ``load(item)`` for each item, loading the next one in a background thread meanwhile.

    One worker thread, in order: the augmentation generator is still drawn from sequentially,
    so the batches are the same as without prefetching.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        future = pool.submit(load, items[0])
        for nxt in items[1:]:
            current = future.result()
            future = pool.submit(load, nxt)
            yield current
        yield future.result()


def batch_losses(outputs, losses, target: torch.Tensor, with_kl: bool,
                 mutual_weight: float = 1.0) -> tuple[torch.Tensor, dict[str, float]]:
    """The summed loss of all peers (what is back-propagated) and the values to record, each the mean over peers.

    The mutual terms are recorded unweighted; ``mutual_weight`` scales what they add to each peer's loss.
    """
    embeddings = [out.pre.float() for out in outputs]
    logits = [out.logits.float() for out in outputs]
    mutual = mutual_terms(embeddings, logits, with_kl) if len(outputs) > 1 else [{}]
    total = 0.0
    sums: dict[str, float] = {}
    for out, loss_fn, extra, emb, logit in zip(outputs, losses, mutual, embeddings, logits):
        own, terms = loss_fn(emb, logit, target, None if out.parts is None else out.parts.float())
        peer_total = own + mutual_weight * sum(extra.values())
        total = total + peer_total
        for name, value in {"loss": peer_total, **{f"loss_{k}": v for k, v in {**terms, **extra}.items()}}.items():
            sums[name] = sums.get(name, 0.0) + float(value.detach())
    return total, {name: value / len(outputs) for name, value in sums.items()}


def run_epoch(network, losses, optimizer, scaler, schedule, sampler, image_set, train_rows, labels, augment, device,
              epoch: int, epochs: int, seed: int, with_kl: bool, mutual_weight: float, progress) -> dict[str, Any]:
    """One epoch of PK batches; returns the epoch's row (mean losses and mining statistics, timing)."""
    sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)  # augmentations, on the CPU
    network.train()
    batches = sampler.batches()
    sums: dict[str, float] = {}
    started = time.perf_counter()
    rate = schedule.lr(epoch, 0, len(batches))
    stage = f"epoch {epoch + 1}/{epochs}"

    def load(batch):
        return augment(image_set.load(train_rows[np.asarray(batch)]), gen)

    for step, (batch, images) in enumerate(zip(batches, prefetched(batches, load))):
        rate = schedule.lr(epoch, step, len(batches))
        set_lr(optimizer, rate)
        images = images.to(device, non_blocking=True)
        target = torch.from_numpy(labels[np.asarray(batch)]).to(device)
        with autocast(device):
            outputs = network(images)
        total, values = batch_losses(outputs, losses, target, with_kl, mutual_weight)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(total).backward()
        scaler.step(optimizer)
        scaler.update()
        values.update(mining_statistics(outputs[0].pre.detach(), target, MARGIN))
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        progress(stage, step + 1, len(batches), loss=sums["loss"] / (step + 1))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return epoch_row(epoch + 1, rate, sums, len(batches), seconds, sum(len(b) for b in batches))


def epoch_row(epoch: int, lr: float, sums: dict[str, float], batches: int, seconds: float, images: int) -> dict[str, Any]:
    row = {"epoch": epoch, "lr": lr}
    row.update({name: value / max(1, batches) for name, value in sums.items()})
    row.update({"batches": batches, "seconds": seconds, "images_per_second": images / seconds if seconds > 0 else None})
    return row
