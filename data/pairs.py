"""LFW pairs files: parse ``pairs.txt`` and find each image's row in an embeddings file.

The file starts with a header ``<folds>\t<pairs per fold>`` (or one number: pairs in one fold);
``name i j`` is a same pair, ``name1 i name2 j`` a different pair. Image (name, n) is the row
whose ``id`` is ``name_%04d`` or whose ``path`` ends in ``name/name_%04d.<ext>``. A malformed line
or a missing image is a one-line ``DataError`` (with the line number / the missing names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np

from retrieval.data.errors import DataError


@dataclass(frozen=True)
class PairsFile:
    """The parsed pairs file: image keys ``name_%04d`` of each pair, its label, and the header."""

    first: list[str]
    second: list[str]
    is_same: np.ndarray
    folds: int
    pairs_per_fold: int


def image_key(name: str, number: int) -> str:
    return f"{name}_{number:04d}"


def parse_pairs_file(path: Path) -> PairsFile:
    """Parse an LFW pairs file; any malformed line is a one-line error with its line number."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a text pairs file") from None
    if not lines or not lines[0].split():
        raise DataError(f"{path}:1: empty header; expected '<folds>\\t<pairs per fold>'")
    header = lines[0].split()
    try:
        numbers = [int(field) for field in header]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or any(n < 1 for n in numbers):
        raise DataError(f"{path}:1: bad header {lines[0]!r}; expected '<folds>\\t<pairs per fold>' (positive integers)")
    folds, per_fold = (1, numbers[0]) if len(numbers) == 1 else (numbers[0], numbers[1])
    first, second, same = [], [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        a, b, is_same = _parse_pair_line(path, number, fields)
        first.append(a)
        second.append(b)
        same.append(is_same)
    expected = folds * 2 * per_fold
    if len(first) != expected:
        raise DataError(
            f"{path}: the header announces {folds} × 2 × {per_fold} = {expected} pairs, the file has {len(first)}"
        )
    return PairsFile(first, second, np.array(same, dtype=bool), folds, per_fold)


def _parse_pair_line(path: Path, number: int, fields: list[str]) -> tuple[str, str, bool]:
    where = f"{path}:{number}"
    if len(fields) == 3:
        name, i, j = fields
        return image_key(name, _image_number(where, i)), image_key(name, _image_number(where, j)), True
    if len(fields) == 4:
        name1, i, name2, j = fields
        return image_key(name1, _image_number(where, i)), image_key(name2, _image_number(where, j)), False
    raise DataError(
        f"{where}: expected 'name i j' (same pair) or 'name1 i name2 j' (different pair), got {len(fields)} fields"
    )


def _image_number(where: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise DataError(f"{where}: image number {text!r} is not an integer") from None
    if value < 0:
        raise DataError(f"{where}: image number {value} is negative")
    return value


def image_rows(ids: np.ndarray, paths: np.ndarray | None) -> dict[str, int]:
    """Row of each image key: from ``id`` (``name_%04d``) or from ``path`` (``…/name/name_%04d.<ext>``).

    An id match wins over a path match. Two rows whose paths give one key is an error.
    """
    rows: dict[str, int] = {}
    if paths is not None:
        seen: dict[str, int] = {}
        for row, path in enumerate(paths):
            if path is None:
                continue
            pure = PurePath(str(path).replace("\\", "/"))
            stem, folder = pure.stem, pure.parent.name
            if folder and stem.startswith(folder + "_"):
                if stem in seen:
                    raise DataError(f"image {stem} is given by two rows' paths ({paths[seen[stem]]} and {path})")
                seen[stem] = row
        rows.update(seen)
    rows.update({str(item): row for row, item in enumerate(ids)})
    return rows


def resolve_pairs(pairs: PairsFile, rows: dict[str, int], source: str, pairs_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of both images of every pair; missing images are listed in the error."""
    missing: list[str] = []
    for key in pairs.first + pairs.second:
        if key not in rows and key not in missing:
            missing.append(key)
    if missing:
        shown = ", ".join(missing[:8]) + (f", … ({len(missing)} in all)" if len(missing) > 8 else "")
        raise DataError(
            f"{len(missing)} image(s) named in {pairs_path} are not in {source} "
            f"(looked for id 'name_NNNN' or path '…/name/name_NNNN.ext'): {shown}"
        )
    first = np.fromiter((rows[k] for k in pairs.first), dtype=np.int64, count=len(pairs.first))
    second = np.fromiter((rows[k] for k in pairs.second), dtype=np.int64, count=len(pairs.second))
    return first, second
