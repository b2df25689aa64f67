"""Image sets for training and embedding: data set layouts, identity folders, the digits.

An image set has per-row arrays (ids, pid, camid or None, split, path) and ``load(rows)``
that returns a normalised float tensor (n, C, H, W). Augmentations work on such batches,
in torch, with an explicit generator so that a seed fixes them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from retrieval.data.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_FOLDERS = ("train", "query", "gallery")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class InMemoryImageSet:
    """Images already decoded and normalised, e.g. the digits: images (n, C, H, W) float32."""

    images: np.ndarray
    ids: np.ndarray
    pid: np.ndarray
    camid: np.ndarray | None
    split: np.ndarray
    path: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        return self.images.shape[2], self.images.shape[3]

    def load(self, rows) -> torch.Tensor:
        return torch.from_numpy(self.images[np.asarray(rows)])


@dataclass
class FileImageSet:
    """Images on disk, decoded with Pillow, resized to (height, width), normalised with ImageNet statistics."""

    files: np.ndarray
    ids: np.ndarray
    pid: np.ndarray
    camid: np.ndarray | None
    split: np.ndarray
    path: np.ndarray
    name: str
    size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.ids)

    channels = 3

    @property
    def image_size(self) -> tuple[int, int]:
        return self.size

    def load(self, rows) -> torch.Tensor:
        # Pillow releases the GIL while decoding and resizing: threads overlap the file reads.
        files = [self.files[r] for r in np.asarray(rows)]
        return torch.stack(list(decoder_pool().map(lambda f: decode_image(f, self.size), files)))


_POOL = {}


def decoder_pool():
    """One shared thread pool for image decoding (at most 8 threads)."""
    if "pool" not in _POOL:
        from concurrent.futures import ThreadPoolExecutor

        _POOL["pool"] = ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1), thread_name_prefix="decode")
    return _POOL["pool"]


def decode_image(path: str, size: tuple[int, int]) -> torch.Tensor:
    """Read one image as RGB, resize bilinearly to (height, width), normalise: (3, H, W) float32."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB").resize((size[1], size[0]), Image.BILINEAR)
            pixels = np.asarray(img, dtype=np.float32) / 255.0
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc})") from None
    mean, std = np.array(IMAGENET_MEAN, np.float32), np.array(IMAGENET_STD, np.float32)
    return torch.from_numpy(((pixels - mean) / std).transpose(2, 0, 1).copy())


def folders_manifest(root: Path | str) -> pa.Table:
    """``--layout folders``: ROOT/<identity>/<images>, or ROOT/{train,query,gallery}/<identity>/<images>.

    A numeric folder name is the identity's pid; otherwise identities are numbered in sorted
    name order. No camera ids.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    has_splits = subdirs and {p.name for p in subdirs} <= set(SPLIT_FOLDERS)
    groups = [(p.name, p) for p in subdirs] if has_splits else [("train", root)]
    entries = []  # (split, identity name, path)
    for split, folder in groups:
        for ident in sorted(p for p in folder.iterdir() if p.is_dir()):
            for f in sorted(ident.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES:
                    entries.append((split, ident.name, str(f)))
    if not entries:
        raise DataError(f"{root}: no images found in identity sub-folders (expected ROOT/<identity>/<image files>)")
    names = sorted({e[1] for e in entries})
    numeric = all(n.isdigit() for n in names)
    pid_of = {n: (int(n) if numeric else i) for i, n in enumerate(names)}
    return pa.table(
        {
            "id": [Path(e[2]).relative_to(root).with_suffix("").as_posix() for e in entries],
            "path": [e[2] for e in entries],
            "pid": pa.array([pid_of[e[1]] for e in entries], pa.int64()),
            "camid": pa.nulls(len(entries), pa.int32()),
            "split": [e[0] for e in entries],
        }
    )


def layout_manifest(layout: str, root: Path | str) -> pa.Table:
    """The (path, pid, camid, split) table of a data set layout."""
    if layout == "folders":
        return folders_manifest(root)
    from retrieval.data.layouts import build_manifest

    return build_manifest(layout, root)


def load_layout_set(layout: str, root: Path | str, size: tuple[int, int]) -> FileImageSet:
    table = layout_manifest(layout, root)
    root = Path(root)
    paths = np.array(table.column("path").to_pylist(), dtype=object)
    files = np.array([p if Path(p).is_absolute() else str(root / p) for p in paths], dtype=object)
    ids = np.array(table.column("id").to_pylist(), dtype=object) if "id" in table.column_names else paths.copy()
    camid_col = table.column("camid")
    camid = None if camid_col.null_count == len(table) else np.asarray(camid_col.fill_null(-1).to_numpy(), np.int64)
    return FileImageSet(
        files=files,
        ids=ids,
        pid=np.asarray(table.column("pid").to_numpy(), np.int64),
        camid=camid,
        split=np.array(table.column("split").to_pylist(), dtype=object),
        path=paths,
        name=layout,
        size=size,
    )


@dataclass(frozen=True)
class Augmentation:
    """Training augmentations: horizontal flip, pad-and-crop, random erasing (Zhong et al.)."""

    flip: bool = True
    pad: int = 10
    erase_prob: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_aspect: float = 0.3

    @classmethod
    def for_images(cls, size: tuple[int, int]) -> "Augmentation":
        # the baseline pads 10 pixels at 256×128; scale with the height.
        return cls(flip=True, pad=max(1, round(10 * size[0] / 256)), erase_prob=0.5)

    @classmethod
    def for_digits(cls) -> "Augmentation":
        # a mirrored digit is another shape; erasing an 8×8 image removes too much.
        return cls(flip=False, pad=1, erase_prob=0.0)

    def __call__(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        batch = batch.clone()
        if self.flip:
            batch = random_flip(batch, gen)
        if self.pad:
            batch = pad_and_crop(batch, self.pad, gen)
        if self.erase_prob:
            batch = random_erase(batch, self.erase_prob, self.erase_area, self.erase_aspect, gen)
        return batch


def random_flip(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(batch), generator=gen) < 0.5
    batch[flip] = batch[flip].flip(-1)
    return batch


def pad_and_crop(batch: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Zero-pad (zero is the mean after normalisation) and crop back at a random offset per image."""
    n, _, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])


def random_erase(batch, prob: float, area: tuple[float, float], min_aspect: float, gen: torch.Generator):
    """Per image with probability ``prob``, set a random rectangle to zero (the mean)."""
    n, _, h, w = batch.shape
    for i in range(n):
        if float(torch.rand((), generator=gen)) >= prob:
            continue
        for _attempt in range(10):
            target = float(torch.empty(()).uniform_(*area, generator=gen)) * h * w
            log_r = float(torch.empty(()).uniform_(np.log(min_aspect), -np.log(min_aspect), generator=gen))
            eh, ew = int(round((target * np.exp(log_r)) ** 0.5)), int(round((target / np.exp(log_r)) ** 0.5))
            if 0 < eh < h and 0 < ew < w:
                y = int(torch.randint(0, h - eh + 1, (), generator=gen))
                x = int(torch.randint(0, w - ew + 1, (), generator=gen))
                batch[i, :, y : y + eh, x : x + ew] = 0.0
                break
    return batch
