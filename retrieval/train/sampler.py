"""The PK sampler: batches of P identities × K images each (numpy only, seeded per epoch).

One epoch: each identity's images are shuffled and cut into chunks of K (a last chunk that
is short is filled up with other images of the same identity, drawn at random; only an
identity with fewer than K images repeats an image within a chunk); then batches take P
distinct identities at random among those that still have chunks, one chunk each, until fewer than P identities have chunks left.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


class PKSampler:
    """Yields lists of P·K row indices into ``labels``; ``set_epoch(e)`` changes the draw."""

    def __init__(self, labels, p: int, k: int, seed: int = 0):
        labels = np.asarray(labels)
        self.p, self.k, self.seed = int(p), int(k), int(seed)
        if self.p < 1 or self.k < 1:
            raise ValueError(f"P and K must be at least 1 (got P={p}, K={k})")
        self.identities, inverse = np.unique(labels, return_inverse=True)
        if len(self.identities) < self.p:
            raise ValueError(f"P={p} identities per batch, but the training set has only {len(self.identities)}")
        order = np.argsort(inverse, kind="stable")
        bounds = np.cumsum(np.bincount(inverse))[:-1]
        self.rows_by_identity = np.split(order, bounds)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _chunks(self, rng: np.random.Generator) -> list[list[np.ndarray]]:
        chunks = []
        for rows in self.rows_by_identity:
            rows = rng.permutation(rows)
            partial = len(rows) % self.k
            if partial:
                # fill the last chunk from the identity's other images, so that a chunk repeats
                # an image only when the identity has fewer than K.
                enough = len(rows) >= self.k
                pool = rows[: len(rows) - partial] if enough else rows
                rows = np.concatenate([rows, rng.choice(pool, size=self.k - partial, replace=not enough)])
            chunks.append(list(rows.reshape(-1, self.k)))
        return chunks

    def batches(self) -> list[list[int]]:
        """This epoch's batches (the same list for the same seed and epoch)."""
        rng = np.random.default_rng([self.seed, self.epoch])
        chunks = self._chunks(rng)
        out = []
        while True:
            alive = [i for i, c in enumerate(chunks) if c]
            if len(alive) < self.p:
                return out
            chosen = rng.choice(alive, size=self.p, replace=False)
            out.append([int(r) for i in chosen for r in chunks[i].pop()])

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self.batches())

    def __len__(self) -> int:
        # how many batches depends on the draw (which identities run out first): count them.
        return len(self.batches())
