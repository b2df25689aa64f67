"""Data set layouts: from a root folder, the manifest (id, path, pid, camid, split) of a public set.

Conventions (protocols.md §4):
* Market-1501: ``bounding_box_train/``, ``query/``, ``bounding_box_test/`` (gallery);
  ``0002_c1s1_000451_03.jpg`` -> pid 2, camid 1; pid -1 junk, 0 distractor.
* DukeMTMC-reID: same folders, ``0001_c2_f0046182.jpg`` -> pid 1, camid 2.
* MSMT17: ``list_train.txt``, ``list_query.txt``, ``list_gallery.txt`` with lines
  ``<relative path> <pid>``; the camera is the third ``_`` field of the file name
  (``0000_000_01_0303morning_0015_0.jpg`` -> camid 1); train images under ``train/``,
  query and gallery under ``test/`` (or ``mask_train_v2/`` / ``mask_test_v2/``).
* VeRi-776: ``image_train/``, ``image_query/``, ``image_test/`` (gallery);
  ``0002_c002_00030600_0.jpg`` -> vehicle 2, camid 2.
* LFW: ``name/name_0001.jpg``; pid = index of the person in sorted name order, no camera,
  split ``free``; id ``name_0001`` (the id that `retrieve verify` looks up).
* CUHK03, the new protocol (Zhong et al. 2017: 767 training, 700 test identities), in the
  ``.mat``-free CUHK03-NP release: ``detected/`` and ``labeled/``, each holding Market-style
  ``bounding_box_train/``, ``query/``, ``bounding_box_test/``; ``0001_c1_1.png`` -> pid 1,
  camid 1 (cameras 1 and 2 of the pair the person was seen in). The root is a variant folder
  or the release folder (then ``variant`` picks ``detected`` or ``labeled``, needed when both
  are there). Ids are relative to the variant folder. Its manifest carries the file metadata
  ``retrieve.dataset`` (``cuhk03-np/detected``) and ``retrieve.cmc_mode``
  (``single-gallery-shot``, the CMC this layout asks for by default; see ``LAYOUT_DEFAULTS``).

Ids are the path relative to the root without its extension (LFW: the file stem).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import pyarrow as pa

from retrieval.data import schema
from retrieval.data.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
LAYOUT_KINDS = ("market", "duke", "msmt17", "veri", "lfw", "cuhk03")
CUHK03_VARIANTS = ("detected", "labeled")
# Evaluation settings a layout asks for unless the user says otherwise (file metadata, retrieve.*).
LAYOUT_DEFAULTS = {"cuhk03": {schema.META_CMC_MODE: "single-gallery-shot"}}

MARKET_NAME = re.compile(r"^(-?\d+)_c(\d+)s\d+_\d+_\d+$")
DUKE_NAME = re.compile(r"^(-?\d+)_c(\d+)_f\d+$")
VERI_NAME = re.compile(r"^(\d+)_c(\d+)_\d+_\d+$")
CUHK03_NAME = re.compile(r"^(-?\d+)_c(\d+)_\d+$")
MSMT_NAME = re.compile(r"^\d+_\d+_(\d+)_")

FOLDER_SPLITS = {
    "market": {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"},
    "duke": {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"},
    "veri": {"train": "image_train", "query": "image_query", "gallery": "image_test"},
    "cuhk03": {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"},
}
FOLDER_PATTERNS = {"market": MARKET_NAME, "duke": DUKE_NAME, "veri": VERI_NAME, "cuhk03": CUHK03_NAME}
MSMT_LISTS = {"train": "list_train.txt", "query": "list_query.txt", "gallery": "list_gallery.txt"}


def manifest_table(rows: list[tuple[str, str, int, int | None, str]]) -> pa.Table:
    ids, paths, pids, camids, splits = (list(c) for c in zip(*rows)) if rows else ([], [], [], [], [])
    return pa.table({
        "id": pa.array(ids, pa.string()),
        "path": pa.array(paths, pa.string()),
        "pid": pa.array(pids, pa.int64()),
        "camid": pa.array(camids, pa.int32()),
        "split": pa.array(splits, pa.string()),
    })


def _require_dir(root: Path, name: str, kind: str) -> Path:
    folder = root / name
    if not folder.is_dir():
        raise DataError(f"{root}: not a {kind} layout: expected folder '{name}/' is missing")
    return folder


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _relative_id(root: Path, path: Path) -> str:
    return path.relative_to(root).with_suffix("").as_posix()


def folder_layout(root: Path, kind: str) -> pa.Table:
    """Market-1501 / DukeMTMC-reID / VeRi-776: one folder per split, ids and cameras in file names."""
    pattern = FOLDER_PATTERNS[kind]
    rows = []
    for split, name in FOLDER_SPLITS[kind].items():
        for image in _images(_require_dir(root, name, kind)):
            match = pattern.match(image.stem)
            if match is None:  # not an image of the set (e.g. a stray thumbnail)
                continue
            rows.append((_relative_id(root, image), str(image), int(match.group(1)), int(match.group(2)), split))
    if not rows:
        raise DataError(f"{root}: no {kind} image names found (e.g. {example_name(kind)})")
    return manifest_table(rows)


def example_name(kind: str) -> str:
    return {"market": "0002_c1s1_000451_03.jpg", "duke": "0001_c2_f0046182.jpg",
            "veri": "0002_c002_00030600_0.jpg", "msmt17": "0000_000_01_0303morning_0015_0.jpg",
            "lfw": "Name/Name_0001.jpg", "cuhk03": "detected/query/0001_c1_1.png"}[kind]


def _msmt_image_root(root: Path, split: str) -> Path:
    names = ("train", "mask_train_v2") if split == "train" else ("test", "mask_test_v2")
    for name in names:
        if (root / name).is_dir():
            return root / name
    raise DataError(f"{root}: not an msmt17 layout: expected folder '{names[0]}/' (or '{names[1]}/') is missing")


def msmt17_layout(root: Path) -> pa.Table:
    """MSMT17: list files of ``<relative path> <pid>``, camera from the file name."""
    rows = []
    for split, list_name in MSMT_LISTS.items():
        list_file = root / list_name
        if not list_file.is_file():
            raise DataError(f"{root}: not an msmt17 layout: expected list file '{list_name}' is missing")
        image_root = _msmt_image_root(root, split)
        for line_no, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DataError(f"{list_file}: line {line_no}: expected '<relative path> <pid>', got {line!r}")
            relative, pid = parts
            match = MSMT_NAME.match(Path(relative).name)
            if match is None:
                raise DataError(f"{list_file}: line {line_no}: cannot read the camera from {Path(relative).name!r}")
            image = image_root / relative
            rows.append((_relative_id(root, image), str(image), int(pid), int(match.group(1)), split))
    return manifest_table(rows)


def lfw_layout(root: Path) -> pa.Table:
    """LFW: one folder per person, images ``name/name_%04d.jpg``."""
    people = sorted(p for p in root.iterdir() if p.is_dir())
    rows = []
    for pid, person in enumerate(people, start=1):  # pid 0 means "distractor" in re-ID files
        for image in _images(person):
            rows.append((image.stem, str(image), pid, None, "free"))
    if not rows:
        raise DataError(f"{root}: not an lfw layout: no person folders with images (e.g. {example_name('lfw')})")
    return manifest_table(rows)


def cuhk03_layout(root: Path, variant: str | None = None) -> pa.Table:
    """CUHK03-NP (new protocol): one variant's Market-style folders, with the layout's defaults."""
    folder, variant = cuhk03_variant_folder(root, variant)
    table = folder_layout(folder, "cuhk03")
    meta = {schema.META_DATASET: f"cuhk03-np/{variant}", **LAYOUT_DEFAULTS["cuhk03"]}
    return table.replace_schema_metadata({k.encode(): v.encode() for k, v in meta.items()})


def cuhk03_variant_folder(root: Path, variant: str | None) -> tuple[Path, str]:
    """The folder of the ``detected`` or ``labeled`` images under a variant or release root."""
    if variant is not None and variant not in CUHK03_VARIANTS:
        raise DataError(f"unknown CUHK03 variant {variant!r} (choose from {', '.join(CUHK03_VARIANTS)})")
    if (root / "query").is_dir() and (root / "bounding_box_test").is_dir():  # a variant folder itself
        named = root.name.lower() if root.name.lower() in CUHK03_VARIANTS else None
        if variant is not None and named is not None and named != variant:
            raise DataError(f"{root}: this is the '{named}' folder, but variant '{variant}' was asked for")
        return root, variant or named or "unknown"
    present = [v for v in CUHK03_VARIANTS if (root / v).is_dir()]
    if variant is not None:
        if variant not in present:
            raise DataError(f"{root}: not a cuhk03 layout: expected folder '{variant}/' is missing")
        return root / variant, variant
    if len(present) == 1:
        return root / present[0], present[0]
    if present:
        raise DataError(f"{root}: holds both detected/ and labeled/ (CUHK03-NP); choose one with the variant "
                        f"(--variant detected or --variant labeled)")
    raise DataError(f"{root}: not a cuhk03 layout: expected 'detected/' or 'labeled/' (each with "
                    f"bounding_box_train/, query/, bounding_box_test/), or one of those folders itself")


LAYOUTS: dict[str, Callable[[Path], pa.Table]] = {
    "market": lambda root: folder_layout(root, "market"),
    "duke": lambda root: folder_layout(root, "duke"),
    "veri": lambda root: folder_layout(root, "veri"),
    "msmt17": msmt17_layout,
    "lfw": lfw_layout,
    "cuhk03": cuhk03_layout,
}


def build_manifest(kind: str, root: Path | str, variant: str | None = None) -> pa.Table:
    """The manifest (id, path, pid, camid, split) of a data set laid out under ``root``.

    ``variant``: which images of a set that ships several (CUHK03: ``detected`` / ``labeled``).
    """
    root = Path(root)
    if kind not in LAYOUTS:
        raise DataError(f"unknown layout '{kind}' (choose from {', '.join(LAYOUT_KINDS)})")
    if not root.is_dir():
        raise DataError(f"{root}: no such folder")
    if kind == "cuhk03":
        return cuhk03_layout(root, variant)
    if variant is not None:
        raise DataError(f"layout '{kind}' has no variants (only cuhk03 has: {', '.join(CUHK03_VARIANTS)})")
    return LAYOUTS[kind](root)


def layout_defaults(metadata: dict[str, str]) -> dict[str, str]:
    """The evaluation defaults recorded in a manifest's or embeddings file's metadata (e.g.
    ``{"cmc_mode": "single-gallery-shot"}``), keys without the ``retrieve.`` prefix."""
    keys = {key for defaults in LAYOUT_DEFAULTS.values() for key in defaults}
    return {key[len(schema.META_PREFIX):]: metadata[key] for key in sorted(keys) if metadata.get(key)}
