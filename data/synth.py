"""Synthetic embeddings at the shapes of the real data sets (performance.md presets), seeded.

Model of an image embedding (then L2-normalised):
    x = identity centre + camera shift + pose shift + latent noise + isotropic noise
* identity centres come in look-alike groups (a shared group direction plus an own
  direction), so that some negatives are hard, as in real data;
* the camera shift is shared by every identity seen by that camera, so that
  same-camera negatives come closer (what the same-camera filter is about);
* all directions lie in one random 64-dimensional subspace (real embeddings have a low
  intrinsic dimension), plus a little isotropic noise in the full space;
* ``difficulty`` scales the camera, pose and noise terms, relative to the preset's own
  ``base_difficulty`` (1.0 for the re-ID presets; 0.25 for ``million``, which models a
  well-trained model, the condition under which approximate indexes are judged).
Gallery extras where the real set has them: distractors (``pid 0``, unrelated images)
and junk (``pid -1``, failed detections: a weak mix of a random identity and noise).

Rows are written queries first, then gallery, in batches: a preset of any size is
generated without holding more than one batch of vectors (plus the centres).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from retrieval.common.progress import ProgressCallback

GROUP_SIZE = 8  # identities per look-alike group
FACES_DIFFICULTY = 0.25  # the faces preset: a well-trained face model, as the million preset (people well apart)
BATCH_ROWS = 50_000
POSES = 8
LATENT_DIM = 64
# Weights of the terms added to an identity centre, at difficulty 1.0.
CAMERA_WEIGHT = 0.51
POSE_WEIGHT = 0.51
LATENT_NOISE_WEIGHT = 0.77
ISOTROPIC_NOISE_WEIGHT = 0.85


@dataclass(frozen=True)
class Preset:
    name: str
    queries: int
    gallery: int
    dim: int
    identities: int
    cameras: int
    junk_fraction: float = 0.0
    distractor_fraction: float = 0.0
    # Noise scale at --difficulty 1.0. The index-scale preset models a well-trained model
    # (identities clearly apart), the condition under which approximate indexes are judged.
    base_difficulty: float = 1.0
    # Fraction of the queries showing people with no gallery image (non-mated probes of 1:N
    # identification); each such query is an identity of its own, numbered after the gallery's.
    unenrolled_queries: float = 0.0

    @property
    def unenrolled(self) -> int:
        return round(self.queries * self.unenrolled_queries)

    @property
    def total_identities(self) -> int:
        return self.identities + self.unenrolled


PRESETS: dict[str, Preset] = {
    "small": Preset("small", 300, 2_000, 128, 100, 6, junk_fraction=0.05, distractor_fraction=0.10),
    "market": Preset("market", 3_368, 15_913, 2_048, 750, 6, junk_fraction=0.06, distractor_fraction=0.15),
    "msmt17": Preset("msmt17", 11_659, 82_161, 2_048, 3_060, 15),
    "veri": Preset("veri", 1_678, 11_579, 2_048, 200, 20),
    "million": Preset("million", 10_000, 1_000_000, 256, 100_000, 50, base_difficulty=0.25),
    # FaceNet's other tasks at scale: 1:N identification (half the probes unenrolled) and clustering
    # of the gallery (10 images of each of 100,000 well-separated people, 128-D).
    "faces": Preset("faces", 10_000, 1_000_000, 128, 100_000, 10, base_difficulty=FACES_DIFFICULTY,
                    unenrolled_queries=0.5),
    # The same protocol at 1/100 the size, with a realistic (not well-trained) model: the tour.
    "faces-small": Preset("faces-small", 1_000, 10_000, 128, 1_000, 10, base_difficulty=1.0,
                          unenrolled_queries=0.5),
}


@dataclass(frozen=True)
class RowPlan:
    """pid, camid and split of every row (queries first), before any vector is drawn."""

    pid: np.ndarray
    camid: np.ndarray
    split: np.ndarray  # 0 = query, 1 = gallery

    def __len__(self) -> int:
        return len(self.pid)


def plan_rows(preset: Preset, seed: int) -> RowPlan:
    rng = np.random.default_rng([seed, 0])
    n_ids, n_cams = preset.identities, preset.cameras
    n_junk = round(preset.gallery * preset.junk_fraction)
    n_distractors = round(preset.gallery * preset.distractor_fraction)
    n_true = preset.gallery - n_junk - n_distractors
    gallery_pid = rng.permutation(np.resize(np.arange(1, n_ids + 1), n_true))
    gallery_cam = rng.integers(1, n_cams + 1, size=n_true)
    query_pid = rng.permutation(np.resize(np.arange(1, n_ids + 1), preset.queries))
    if preset.unenrolled:  # people never enrolled, mixed among the others
        query_pid[: preset.unenrolled] = n_ids + 1 + np.arange(preset.unenrolled)
        query_pid = rng.permutation(query_pid)
    query_cam = rng.integers(1, n_cams + 1, size=preset.queries)
    query_cam = _cameras_with_a_valid_match(query_pid, query_cam, gallery_pid, gallery_cam, n_cams)
    extra_pid = np.concatenate([np.zeros(n_distractors, np.int64), np.full(n_junk, -1, np.int64)])
    extra_cam = rng.integers(1, n_cams + 1, size=n_distractors + n_junk)
    order = rng.permutation(preset.gallery)  # mix distractors and junk into the gallery
    pid = np.concatenate([query_pid, np.concatenate([gallery_pid, extra_pid])[order]])
    camid = np.concatenate([query_cam, np.concatenate([gallery_cam, extra_cam])[order]])
    split = np.concatenate([np.zeros(preset.queries, np.int8), np.ones(preset.gallery, np.int8)])
    return RowPlan(pid.astype(np.int64), camid.astype(np.int64), split)


def _cameras_with_a_valid_match(query_pid, query_cam, gallery_pid, gallery_cam, n_cams) -> np.ndarray:
    """Move a query off its camera when every gallery image of its identity is from that camera."""
    query_cam = query_cam.copy()
    order = np.lexsort((gallery_cam, gallery_pid))
    pids, first = np.unique(gallery_pid[order], return_index=True)
    lo_cam = gallery_cam[order][first]
    last = np.r_[first[1:], len(order)] - 1
    hi_cam = gallery_cam[order][last]
    single_cam = dict(zip(pids[lo_cam == hi_cam].tolist(), lo_cam[lo_cam == hi_cam].tolist()))
    for i, p in enumerate(query_pid.tolist()):
        cam = single_cam.get(p)
        if cam is not None and query_cam[i] == cam:
            query_cam[i] = cam % n_cams + 1
    return query_cam


def _unit_rows(rng: np.random.Generator, rows: int, dim: int) -> np.ndarray:
    x = rng.standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


@dataclass(frozen=True)
class Directions:
    """Unit directions in the embedding space, all drawn inside one low-dimensional latent subspace."""

    basis: np.ndarray  # (d, L) orthonormal: the latent subspace
    centres: np.ndarray  # (identities + 1, d); row 0 unused
    cameras: np.ndarray  # (cameras + 1, d)
    poses: np.ndarray  # (POSES, d)


def latent_dim(dim: int) -> int:
    # Real embeddings have a low intrinsic dimension: identities spread over a few dozen
    # directions, so that neighbourhoods (and index cells) are well defined at any d.
    return min(dim, LATENT_DIM)


def draw_directions(preset: Preset, seed: int) -> Directions:
    rng = np.random.default_rng([seed, 1])
    latent = latent_dim(preset.dim)
    basis, _ = np.linalg.qr(rng.standard_normal((preset.dim, latent)))
    basis = basis.astype(np.float32)
    n_groups = -(-preset.total_identities // GROUP_SIZE)
    groups = _unit_rows(rng, n_groups, latent)
    own = _unit_rows(rng, preset.total_identities + 1, latent)
    group_of = np.r_[0, np.arange(preset.total_identities) // GROUP_SIZE]
    centres = 0.6 * groups[group_of] + 0.8 * own
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return Directions(
        basis,
        centres @ basis.T,
        _unit_rows(rng, preset.cameras + 1, latent) @ basis.T,
        _unit_rows(rng, POSES, latent) @ basis.T,
    )


def draw_vectors(directions: Directions, pid: np.ndarray, camid: np.ndarray, difficulty: float,
                 rng: np.random.Generator) -> np.ndarray:
    """Vectors for one batch of planned rows (unit L2 norm, float32)."""
    n, (dim, latent) = len(pid), directions.basis.shape
    base = np.empty((n, dim), np.float32)
    true = pid > 0
    base[true] = directions.centres[pid[true]]
    distractor = pid == 0
    base[distractor] = _unit_rows(rng, int(distractor.sum()), latent) @ directions.basis.T
    junk = pid < 0
    if junk.any():
        random_ids = rng.integers(1, len(directions.centres), size=int(junk.sum()))
        base[junk] = 0.5 * directions.centres[random_ids] + _unit_rows(rng, int(junk.sum()), latent) @ directions.basis.T
    pose = directions.poses[rng.integers(0, POSES, size=n)] * rng.uniform(0, 1, size=(n, 1)).astype(np.float32)
    latent_noise = _unit_rows(rng, n, latent) @ directions.basis.T
    isotropic_noise = _unit_rows(rng, n, dim)
    x = base + difficulty * (CAMERA_WEIGHT * directions.cameras[camid] + POSE_WEIGHT * pose
                             + LATENT_NOISE_WEIGHT * latent_noise + ISOTROPIC_NOISE_WEIGHT * isotropic_noise)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32, copy=False)


def row_ids(split: np.ndarray, start: int, queries: int) -> list[str]:
    return [f"q{i:07d}" if s == 0 else f"g{i - queries:07d}" for i, s in zip(range(start, start + len(split)), split)]


@dataclass(frozen=True)
class Batch:
    """One batch of generated rows (queries first, then gallery)."""

    start: int
    ids: list[str]
    vectors: np.ndarray
    pid: np.ndarray
    camid: np.ndarray
    split: np.ndarray  # 0 = query, 1 = gallery


def batches(preset: str | Preset, seed: int, difficulty: float = 1.0,
            batch_rows: int = BATCH_ROWS) -> Iterator[Batch]:
    """The preset's rows, batch by batch (what ``generate`` writes; benchmarks take them in memory)."""
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    plan = plan_rows(preset, seed)
    directions = draw_directions(preset, seed)
    for batch, start in enumerate(range(0, len(plan), batch_rows)):
        stop = min(start + batch_rows, len(plan))
        rng = np.random.default_rng([seed, 2, batch])
        pid, camid, split = plan.pid[start:stop], plan.camid[start:stop], plan.split[start:stop]
        vectors = draw_vectors(directions, pid, camid, difficulty * preset.base_difficulty, rng)
        yield Batch(start, row_ids(split, start, preset.queries), vectors, pid, camid, split)


def in_memory(preset: str | Preset, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """All of the preset's rows in memory, queries first: (vectors (n, dim) float32, pid (n,))."""
    preset = PRESETS[preset] if isinstance(preset, str) else preset
    vectors = np.empty((preset.queries + preset.gallery, preset.dim), np.float32)
    pid = np.empty(len(vectors), np.int64)
    for batch in batches(preset, seed):
        vectors[batch.start:batch.start + len(batch.ids)] = batch.vectors
        pid[batch.start:batch.start + len(batch.ids)] = batch.pid
    return vectors, pid


def generate(preset: str | Preset, seed: int, out_path: Path | str, difficulty: float = 1.0,
             batch_rows: int = BATCH_ROWS, progress: ProgressCallback | None = None, *,
             overwrite: bool = True) -> Path:
    """Write a synthetic embeddings file for a preset (streamed in batches, atomically).

    ``overwrite=False`` refuses an existing file (``retrieval.common.atomic``)."""
    from retrieval.data.writer import EmbeddingsWriter

    preset = PRESETS[preset] if isinstance(preset, str) else preset
    total = preset.queries + preset.gallery
    split_names = np.array(["query", "gallery"], dtype=object)
    with EmbeddingsWriter(out_path, preset.dim, model=f"synthetic:{preset.name}:seed={seed}:difficulty={difficulty}",
                          normalized=True, overwrite=overwrite) as writer:
        for batch in batches(preset, seed, difficulty, batch_rows):
            writer.write(batch.ids, batch.vectors, pid=batch.pid, camid=batch.camid.astype(np.int32),
                         split=split_names[batch.split])
            if progress is not None:
                progress("synthesising", batch.start + len(batch.ids), total)
    return Path(out_path)
