"""Decoding image files into normalised float arrays, without torch (so that worker processes start light).

``--workers N`` decodes in N processes (``decode_many``); 0 decodes in threads of this process
(Pillow releases the GIL while decoding and resizing, so threads overlap the file reads).
"""

from __future__ import annotations

import os
from concurrent.futures import Executor

import numpy as np

from retrieval.data.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_POOLS: dict[int, Executor] = {}


def decode_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """Read one image as RGB, resize bilinearly to (height, width), normalise: (3, H, W) float32."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def decoder_pool(workers: int = 0) -> Executor:
    """The shared executor: ``workers`` processes (spawned: no inherited torch threads), or threads for 0."""
    if workers not in _POOLS:
        if workers > 0:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            import atexit

            _POOLS[workers] = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            atexit.register(_POOLS[workers].shutdown)  # before the interpreter tears its modules down
        else:
            from concurrent.futures import ThreadPoolExecutor

            _POOLS[0] = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="decode")
    return _POOLS[workers]


def decode_many(files: list[str], size: tuple[int, int], workers: int = 0) -> np.ndarray:
    """(n, 3, H, W) float32 of the files, in order."""
    if not files:
        return np.zeros((0, 3, *size), np.float32)
    sizes = [tuple(size)] * len(files)
    chunk = max(1, len(files) // (4 * max(1, workers))) if workers else 1
    pool = decoder_pool(workers)
    images = pool.map(decode_image, files, sizes, chunksize=chunk) if workers else pool.map(decode_image, files, sizes)
    return np.stack(list(images))
