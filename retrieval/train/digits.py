"""`--dataset digits`: scikit-learn's real 8×8 handwritten digits as an open-set retrieval task.

Train on the digits 0–5 (split "train"); evaluate on 6–9, where a seeded fifth of each
digit's images are queries and the rest the gallery (protocol no-camera: no camera ids).
The images ship with scikit-learn (``load_digits``), so nothing is downloaded.
Identity (pid) = digit + 1, because pid 0 means "distractor" in re-ID files.
"""

from __future__ import annotations

import numpy as np

TRAIN_DIGITS = (0, 1, 2, 3, 4, 5)
TEST_DIGITS = (6, 7, 8, 9)
QUERY_FRACTION = 0.2


def digits_split(targets: np.ndarray, seed: int = 0) -> np.ndarray:
    """The split of each image: train for 0–5; query (a seeded fifth per digit) or gallery for 6–9."""
    split = np.full(len(targets), "train", dtype=object)
    rng = np.random.default_rng(seed)
    for digit in TEST_DIGITS:
        rows = np.flatnonzero(targets == digit)
        n_query = int(round(QUERY_FRACTION * len(rows)))
        chosen = rng.permutation(rows)
        split[chosen[:n_query]] = "query"
        split[chosen[n_query:]] = "gallery"
    return split


def load_digits_set(seed: int = 0):
    """An ``InMemoryImageSet`` of all 1797 digits, pixel values scaled to [-1, 1]."""
    from sklearn.datasets import load_digits

    from retrieval.train.images import InMemoryImageSet

    bunch = load_digits()
    images = (bunch.images.astype(np.float32) / 16.0 - 0.5) / 0.5  # (n, 8, 8)
    targets = bunch.target.astype(np.int64)
    n = len(targets)
    return InMemoryImageSet(
        images=images[:, None, :, :],
        ids=np.array([f"digit-{i:04d}" for i in range(n)], dtype=object),
        pid=targets + 1,
        camid=None,
        split=digits_split(targets, seed),
        path=np.array([f"sklearn:digits/{i}" for i in range(n)], dtype=object),
        name="digits",
    )
