"""Image sets for training and embedding: data set layouts, identity folders, the digits.

An image set has per-row arrays (ids, pid, camid or None, split, path) and ``load(rows)``
that returns a normalised float tensor (n, C, H, W). Augmentations work on such batches,
in torch, with an explicit generator so that a seed fixes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from retrieval.data.errors import DataError
from retrieval.train.decode import decode_many

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
SPLIT_FOLDERS = ("train", "query", "gallery")


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
    """Images on disk, decoded with Pillow, resized to (height, width), normalised with ImageNet statistics.

    ``workers`` > 0 decodes in that many processes, 0 in threads of this process.
    """

    files: np.ndarray
    ids: np.ndarray
    pid: np.ndarray
    camid: np.ndarray | None
    split: np.ndarray
    path: np.ndarray
    name: str
    size: tuple[int, int]
    workers: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    channels = 3

    @property
    def image_size(self) -> tuple[int, int]:
        return self.size

    def load(self, rows) -> torch.Tensor:
        files = [str(self.files[r]) for r in np.asarray(rows)]
        return torch.from_numpy(decode_many(files, tuple(self.size), self.workers))


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


def load_layout_set(layout: str, root: Path | str, size: tuple[int, int], workers: int = 0) -> FileImageSet:
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
        workers=workers,
    )


@dataclass(frozen=True)
class Augmentation:
    """Training augmentations: horizontal flip, pad-and-crop, random erasing (Zhong et al.).

    ``fill``: the value padded in, i.e. the background after normalisation (0, the mean, for
    ImageNet-normalised photos; -1, white paper, for the digits scaled to [-1, 1]).
    """

    flip: bool = True
    pad: int = 10
    fill: float = 0.0
    erase_prob: float = 0.5
    erase_area: tuple[float, float] = (0.02, 0.4)
    erase_aspect: float = 0.3

    @classmethod
    def for_images(cls, size: tuple[int, int]) -> "Augmentation":
        # the baseline pads 10 pixels at 256×128; scale with the height.
        return cls(flip=True, pad=max(1, round(10 * size[0] / 256)), erase_prob=0.5)

    @classmethod
    def for_digits(cls) -> "Augmentation":
        # a mirrored digit is another shape; erasing an 8×8 image removes too much; the
        # background is pixel value 0, scaled to -1.
        return cls(flip=False, pad=1, fill=-1.0, erase_prob=0.0)

    def __call__(self, batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        batch = batch.clone()
        if self.flip:
            batch = random_flip(batch, gen)
        if self.pad:
            batch = pad_and_crop(batch, self.pad, gen, self.fill)
        if self.erase_prob:
            batch = random_erase(batch, self.erase_prob, self.erase_area, self.erase_aspect, gen)
        return batch


def random_flip(batch: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    flip = torch.rand(len(batch), generator=gen) < 0.5
    batch[flip] = batch[flip].flip(-1)
    return batch


def pad_and_crop(batch: torch.Tensor, pad: int, gen: torch.Generator, fill: float = 0.0) -> torch.Tensor:
    """Pad with ``fill`` (the background value) and crop back at a random offset per image."""
    n, _, h, w = batch.shape
    padded = torch.nn.functional.pad(batch, (pad, pad, pad, pad), value=fill)
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
