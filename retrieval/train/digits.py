"""`--dataset digits`: scikit-learn's real 8×8 handwritten digits as an open-set retrieval task.

Train on the digits 0–5 (split "train"); evaluate on 6–9, where a fixed fifth of each digit's
images are queries and the rest the gallery (protocol no-camera: no camera ids). The split is
the same for every run (it never depends on ``--seed``), so seeds are scored on one test set.
The images ship with scikit-learn (``load_digits``), so nothing is downloaded.
Identity (pid) = digit + 1, because pid 0 means "distractor" in re-ID files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

TRAIN_DIGITS = (0, 1, 2, 3, 4, 5)
TEST_DIGITS = (6, 7, 8, 9)
QUERY_FRACTION = 0.2
SPLIT_SEED = 0  # the query/gallery draw; fixed, never the training seed
IMAGE_FOLDER = "digits-images"
IMAGE_SCALE = 6  # 8×8 digits written as 48×48 PNGs (nearest neighbour), big enough for report tiles


def digits_split(targets: np.ndarray) -> np.ndarray:
    """The split of each image: train for 0–5; query (a fixed fifth per digit) or gallery for 6–9."""
    split = np.full(len(targets), "train", dtype=object)
    rng = np.random.default_rng(SPLIT_SEED)
    for digit in TEST_DIGITS:
        rows = np.flatnonzero(targets == digit)
        n_query = int(round(QUERY_FRACTION * len(rows)))
        chosen = rng.permutation(rows)
        split[chosen[:n_query]] = "query"
        split[chosen[n_query:]] = "gallery"
    return split


def digit_ids(n: int) -> np.ndarray:
    return np.array([f"digit-{i:04d}" for i in range(n)], dtype=object)


def read_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as (n, 64) pixel counts 0–16 and their digit, read from scikit-learn's file.

    scikit-learn ships them as ``sklearn/datasets/data/digits.csv.gz`` (64 pixels, then the digit,
    per row); reading that file directly spares importing scikit-learn (about 2 s), which
    ``load_digits`` would do. Falls back to ``load_digits`` if the file has moved.
    """
    import gzip
    from importlib.util import find_spec

    spec = find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("--dataset digits needs scikit-learn (it ships the images)")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # pragma: no cover - another scikit-learn layout
        from sklearn.datasets import load_digits

        bunch = load_digits()
        return bunch.data.astype(np.int64), bunch.target.astype(np.int64)
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    return table[:, :-1], table[:, -1]


def load_digits_set():
    """An ``InMemoryImageSet`` of all 1797 digits, pixel values scaled to [-1, 1] (background -1)."""
    from retrieval.train.images import InMemoryImageSet

    pixels, targets = read_digits()
    images = (pixels.reshape(-1, 8, 8).astype(np.float32) / 16.0 - 0.5) / 0.5  # (n, 8, 8)
    ids = digit_ids(len(targets))
    return InMemoryImageSet(
        images=images[:, None, :, :],
        ids=ids,
        pid=targets + 1,
        camid=None,
        split=digits_split(targets),
        path=np.array([f"{IMAGE_FOLDER}/{i}.png" for i in ids], dtype=object),
        name="digits",
    )


def write_digit_images(folder: Path | str, images: np.ndarray, ids: np.ndarray) -> Path:
    """The digits as PNG files ``folder/<id>.png`` (dark ink on white, 48×48); kept if already complete.

    Written into a staging folder and renamed into place (``retrieval.common.atomic``), so a folder
    that exists is whole. ``images``: (n, 1, 8, 8) in [-1, 1].
    """
    from PIL import Image

    from retrieval.common.atomic import staging_folder

    folder = Path(folder)
    if folder.is_dir() and all((folder / f"{i}.png").is_file() for i in ids):
        return folder
    ink = np.clip((images[:, 0] + 1.0) / 2.0, 0.0, 1.0)  # 0 paper .. 1 ink
    pixels = np.round(255.0 * (1.0 - ink)).astype(np.uint8)
    with staging_folder(folder, overwrite=True) as staging:  # replaces an incomplete folder
        for item, image in zip(ids, pixels):
            big = np.kron(image, np.ones((IMAGE_SCALE, IMAGE_SCALE), np.uint8))
            Image.fromarray(big, mode="L").save(staging / f"{item}.png")
    return folder
