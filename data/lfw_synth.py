"""Synthetic face-verification data in the LFW layout: embeddings plus an official-format pairs file.

Shape of Labeled Faces in the Wild (Huang et al. 2007): 13,233 images of 5,749 people, 1,680 of
them with two or more images (the largest with 530); the View 2 pairs file holds 10 folds of 300
same and 300 different pairs, each fold drawn from its own people (the folds are people-disjoint).

The embeddings follow the LFW layout: id ``Name_0001`` (the image ``Name/Name_0001.jpg``), pid =
the person's number (1-based: pid 0 means "distractor" in re-ID files), split ``free``, no camera.
Vectors come from the same model as the re-ID presets (``data.synth``: identity centres in
look-alike groups, pose shifts and noise inside a low-dimensional subspace, L2-normalised) without
the camera term. The pairs file: header ``<folds>\\t<pairs per fold>``, then per fold its same
pairs (``name i j``) and its different pairs (``name1 i name2 j``), each block sorted by name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrieval.common.atomic import atomic_file, check_output
from retrieval.data import synth
from retrieval.data.pairs import different_pair_line, pairs_file_text, same_pair_line
from retrieval.data.writer import write_embeddings


@dataclass(frozen=True)
class LfwShape:
    people: int = 5_749
    images: int = 13_233
    multi_image_people: int = 1_680
    largest: int = 530  # images of the most photographed person
    dim: int = 512
    folds: int = 10
    pairs_per_fold: int = 300
    # Noise scale at --difficulty 1.0 (relative to the re-ID presets): a good face model,
    # 10-fold accuracy about 98 %, not a perfect one.
    base_difficulty: float = 1.2


LFW = LfwShape()


@dataclass(frozen=True)
class LfwData:
    names: list[str]  # one per person, pid = index + 1
    counts: np.ndarray  # images per person
    fold_of_person: np.ndarray  # 0 .. folds-1
    pair_lines: list[str]  # without the header


def person_names(people: int) -> list[str]:
    width = max(5, len(str(people)))
    return [f"Person_{i:0{width}d}" for i in range(1, people + 1)]


def image_counts(shape: LfwShape, rng: np.random.Generator) -> np.ndarray:
    """Images per person: one for most, a power law for the rest, summing to ``shape.images``."""
    singles = shape.people - shape.multi_image_people
    multi = _power_law_counts(shape.multi_image_people, shape.images - singles, shape.largest)
    counts = np.concatenate([multi, np.ones(singles, np.int64)])
    return counts[rng.permutation(shape.people)]


def _power_law_counts(n: int, total: int, largest: int) -> np.ndarray:
    """n counts ≥ 2, the r-th largest 2 + ⌊(largest − 2)·r^−α⌋ with α chosen so they sum to ``total``."""
    if n == 0:
        if total != 0:
            raise ValueError("images left over for no multi-image person")
        return np.zeros(0, np.int64)
    if not largest + 2 * (n - 1) <= total <= largest * n:
        raise ValueError(f"{n} people with 2..{largest} images (one with {largest}) cannot hold {total} images")
    ranks = np.arange(1, n + 1, dtype=np.float64)

    def counts(alpha: float) -> np.ndarray:
        return 2 + np.floor((largest - 2) * ranks ** -alpha).astype(np.int64)

    lo, hi = 0.0, 64.0  # sum(counts(lo)) >= total >= sum(counts(hi))
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if counts(mid).sum() >= total else (lo, mid)
    result = counts(hi)  # sums to at most total: the rest goes one image at a time to the next-largest
    short = total - int(result.sum())
    while short > 0:
        room = np.flatnonzero(result < largest)[:short]
        result[room] += 1
        short -= len(room)
    return result


def assign_folds(counts: np.ndarray, folds: int, rng: np.random.Generator) -> np.ndarray:
    """People-disjoint folds: multi-image people and single-image people dealt round-robin in a seeded order."""
    fold = np.empty(len(counts), np.int64)
    for group in (np.flatnonzero(counts >= 2), np.flatnonzero(counts < 2)):
        fold[rng.permutation(group)] = np.arange(len(group)) % folds
    return fold


def draw_pairs(names: list[str], counts: np.ndarray, fold_of_person: np.ndarray, shape: LfwShape,
               rng: np.random.Generator) -> list[str]:
    """The pair lines of every fold: its same pairs, then its different pairs (distinct, sorted by name)."""
    lines: list[str] = []
    for fold in range(shape.folds):
        people = np.flatnonzero(fold_of_person == fold)
        multi = people[counts[people] >= 2]
        same = _distinct(lambda: _same_pair(multi, counts, rng), shape.pairs_per_fold, f"fold {fold + 1} same")
        different = _distinct(lambda: _different_pair(people, counts, rng), shape.pairs_per_fold,
                              f"fold {fold + 1} different")
        lines += [same_pair_line(names[p], i, j) for p, i, j in sorted(same)]
        lines += [different_pair_line(names[p], i, names[q], j) for p, i, q, j in sorted(different)]
    return lines


def _distinct(draw, wanted: int, what: str) -> set[tuple]:
    found: set[tuple] = set()
    for _ in range(100 * wanted):
        if len(found) == wanted:
            return found
        found.add(draw())
    if len(found) == wanted:
        return found
    raise ValueError(f"{what}: could not draw {wanted} distinct pairs; the shape has too few people or images")


def _same_pair(multi: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    if len(multi) == 0:
        raise ValueError("a fold has no person with two images: no same pair can be drawn")
    person = int(multi[rng.integers(len(multi))])
    i, j = sorted(rng.choice(int(counts[person]), size=2, replace=False).tolist())
    return person, i + 1, j + 1


def _different_pair(people: np.ndarray, counts: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int, int]:
    p, q = sorted(rng.choice(people, size=2, replace=False).tolist())
    return p, int(rng.integers(counts[p])) + 1, q, int(rng.integers(counts[q])) + 1


def plan(shape: LfwShape, seed: int) -> LfwData:
    """Who has how many images, which fold each person is in, and the pairs (no vectors yet)."""
    rng = np.random.default_rng([seed, 10])
    counts = image_counts(shape, rng)
    names = person_names(shape.people)
    fold_of_person = assign_folds(counts, shape.folds, rng)
    return LfwData(names, counts, fold_of_person, draw_pairs(names, counts, fold_of_person, shape, rng))


def default_pairs_path(embeddings_path: Path | str) -> Path:
    """``lfw.parquet`` -> ``lfw.pairs.txt`` (next to the embeddings file)."""
    return Path(embeddings_path).with_suffix(".pairs.txt")


def generate_lfw(seed: int, out_path: Path | str, pairs_path: Path | str | None = None, difficulty: float = 1.0,
                 shape: LfwShape = LFW, *, overwrite: bool = True) -> tuple[Path, Path]:
    """Write the embeddings file and its pairs file (each atomically); returns both paths.

    ``overwrite=False`` refuses either output when it exists, before any work. The pairs file
    is published last, so a pairs file never names a missing embeddings file."""
    out_path = Path(out_path)
    pairs_path = default_pairs_path(out_path) if pairs_path is None else Path(pairs_path)
    check_output(out_path, overwrite=overwrite)
    check_output(pairs_path, overwrite=overwrite)
    data = plan(shape, seed)
    pid = np.repeat(np.arange(1, shape.people + 1, dtype=np.int64), data.counts)
    ids = [f"{name}_{i:04d}" for name, count in zip(data.names, data.counts.tolist()) for i in range(1, count + 1)]
    preset = synth.Preset("lfw", 0, shape.images, shape.dim, shape.people, cameras=0)
    directions = dataclasses.replace(synth.draw_directions(preset, seed),
                                     cameras=np.zeros((1, shape.dim), np.float32))
    vectors = synth.draw_vectors(directions, pid, np.zeros(len(pid), np.int64),
                                 difficulty * shape.base_difficulty, np.random.default_rng([seed, 2, 0]))
    with atomic_file(pairs_path, overwrite=overwrite) as pairs_temporary:
        pairs_temporary.write_text(pairs_file_text(shape.folds, shape.pairs_per_fold, data.pair_lines))
        write_embeddings(out_path, ids, vectors, pid=pid, split=np.full(len(pid), "free", dtype=object),
                         model=f"synthetic:lfw:seed={seed}:difficulty={difficulty}", overwrite=overwrite)
    return out_path, pairs_path
