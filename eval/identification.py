"""1:N identification (protocols.md §6): every probe's candidate list, scored exactly.

Per probe the engine needs four things: its top candidate (identity and score), and for a mated
probe its mate's score and rank. They come from the distance core's keys (``indexes.distance``:
smaller = better; cosine key = ‖p̂ − t̂‖² = 2 − 2·cos, euclidean key = ‖p − t‖²):

* an identity's score is its best column's key (``item``: one column per enrolled item;
  ``mean``: one column per identity, see ``eval.enrolment``);
* the top candidate is the identity with the smallest score, ties by identity number (= first
  gallery row);
* the mate's rank is 1 + the identities scoring better + the tied identities numbered lower.

The per-probe scores come from ``eval.identification_scores``: exhaustive (float32 blocks with
their error bound, near-ties settled by exact keys: the same for any block size, kernel or
device), or over candidate lists returned by an index (exact keys of the listed pairs;
identities outside a list are not seen, labelled as top-k candidates everywhere). Here: the task
(enrolment, templates, probes), the metrics (``eval.open_set``) and the per-probe table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa

from retrieval.common.progress import ProgressCallback
from retrieval.eval.distances import EmbeddingDistances
from retrieval.eval.enrolment import Enrolment, Templates, build_templates, check_pids, enrol
from retrieval.eval.errors import EvaluationError
from retrieval.eval.evaluate import _ids
from retrieval.eval.open_set import (
    DEFAULT_FPIRS,
    DEFAULT_RANKS,
    DetCurve,
    TpirAtFpir,
    check_fpirs,
    cmc_from_ranks,
    det_curve,
    operating_points,
    unreachable_warnings,
)
from retrieval.eval.identification_scores import ProbeScores, score_exhaustive, score_lists  # noqa: F401
from retrieval.indexes.distance import exact_pair_keys, key_to_distance, metric_from_name, normalise, prepare
from retrieval.indexes.errors import FaissIndexError

METRICS = ("cosine", "euclidean")
EXHAUSTIVE = "exhaustive"


PER_PROBE_SCHEMA = pa.schema(
    [
        ("probe_id", pa.string()),
        ("pid", pa.int64()),
        ("mated", pa.bool_()),
        ("top1_identity", pa.int64()),  # the pid of the top candidate (0: an unknown person's item)
        ("top1_gallery_id", pa.string()),  # its best gallery item (mean: its first item)
        ("top1_score", pa.float64()),
        ("mate_rank", pa.int64()),  # null: non-mated, or (top-k lists) the mate was not listed
        ("mate_score", pa.float64()),
    ]
)

CONVENTIONS = {
    "enrolment": "junk pids not enrolled; each pid > 0 one identity; each pid-0 gallery item an identity of its own, never a mate",
    "candidates": "identities ordered by score, ties by the identity's first gallery row",
    "accept": "cosine: similarity > threshold; euclidean: distance < threshold",
    "cmc": "closed set, over mated probes: rank of the mate = 1 + identities scoring better + tied identities with an earlier first gallery row",
    "tpir_at_fpir": "rank-1 criterion; threshold = the non-mated probes' top scores sorted best first, at position floor(f * N_nonmated); no interpolation",
    "mean_template": "L2-normalised sum of the identity's L2-normalised items, the sum correctly rounded to float32; probes L2-normalised too",
}


# --------------------------------------------------------------------------- the task and its result


@dataclass(frozen=True)
class IdentificationTask:
    """Probes (junk-pid probes dropped) against enrolled templates under one metric."""

    enrolment: Enrolment
    templates: Templates
    metric: str
    probes: np.ndarray  # (P, d) as scored (mean template with euclidean: L2-normalised)
    probe_rows: np.ndarray  # (P,) the probes' rows in the input
    probe_pid: np.ndarray | None  # (P,) or None when the probes carry no pid
    mate_identity: np.ndarray  # (P,) −1: non-mated (or unknown)
    probe_ids: np.ndarray  # (P,) strings
    gallery_ids: np.ndarray  # (G,) strings
    num_dropped: int  # junk-pid probes
    device: str = "cpu"

    @cached_property
    def source(self) -> EmbeddingDistances:
        """Probe × template-column keys in blocks (the exhaustive scan prepares every template)."""
        return EmbeddingDistances(self.probes, self.templates.vectors, metric=self.metric, device=self.device)

    def exact_keys(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Exact keys of (probe, template column) pairs, preparing only the columns named."""
        core = metric_from_name(self.metric)
        used, inverse = np.unique(cols, return_inverse=True)
        try:
            probes, templates = prepare(self.probes, core, "probes"), prepare(self.templates.vectors[used], core, "gallery")
        except FaissIndexError as error:
            raise EvaluationError(str(error)) from None
        return exact_pair_keys(probes, rows, templates, inverse, core)

    def to_score(self, keys: np.ndarray) -> np.ndarray:
        """Keys → reported scores (float64): cosine similarity 1 − key/2, or euclidean distance √key."""
        distance = key_to_distance(keys, self.metric).astype(np.float64)
        return 1.0 - distance if self.metric == "cosine" else distance


def identification_task(probe_vectors: np.ndarray, gallery_vectors: np.ndarray, probe_pid: np.ndarray | None,
                        gallery_pid: np.ndarray, *, template: str = "item", metric: str = "cosine",
                        junk_pids: Iterable[int] = (-1,), probe_ids: np.ndarray | None = None,
                        gallery_ids: np.ndarray | None = None, device: str = "cpu") -> IdentificationTask:
    if metric not in METRICS:
        raise EvaluationError(f"unknown identification metric {metric!r}; expected one of {', '.join(METRICS)}")
    enrolment = enrol(gallery_pid, junk_pids)
    if enrolment.num_identities == 0:
        raise EvaluationError("no identity is enrolled: every gallery item has a junk pid")
    probes = np.asarray(probe_vectors, dtype=np.float32)
    probe_ids = _ids(probe_ids, len(probes), "p")
    rows = np.arange(len(probes))
    if probe_pid is not None:
        probe_pid = check_pids(probe_pid, enrolment.junk_pids, "probe")
        if len(probe_pid) != len(probes):
            raise EvaluationError(f"probe pid has {len(probe_pid)} entries for {len(probes)} probes")
        rows = np.flatnonzero(~np.isin(probe_pid, enrolment.junk_pids))
        probe_pid = probe_pid[rows]
    if len(rows) == 0:
        raise EvaluationError("no probes to identify (every probe has a junk pid)")
    templates = build_templates(np.asarray(gallery_vectors, dtype=np.float32), enrolment, template)
    probes = probes[rows] if len(rows) < len(probes) else probes
    if template == "mean" and metric == "euclidean":
        probes = normalise(probes, "probes")  # templates are unit vectors: compare directions with directions
    if probes.ndim != 2 or probes.shape[1] != templates.vectors.shape[1]:
        raise EvaluationError(f"dimension mismatch: probes have shape {probes.shape}, the gallery "
                              f"{templates.vectors.shape[1]} dimensions")
    mate = enrolment.mate_identity(probe_pid) if probe_pid is not None else np.full(len(rows), -1, np.int64)
    return IdentificationTask(enrolment, templates, metric, probes, rows, probe_pid, mate, probe_ids[rows],
                              _ids(gallery_ids, enrolment.num_gallery, "g"), len(probe_ids) - len(rows), device)


@dataclass(frozen=True)
class IdentificationResult:
    """Everything ``retrieve identify`` reports (fractions, not percent)."""

    template: str
    metric: str
    candidates: str  # "exhaustive" or "index top-k (k=…)"
    num_probes: int
    num_mated: int | None  # None: the probes carry no pid
    num_nonmated: int | None
    num_identities: int
    num_gallery: int
    num_dropped_probes: int
    cmc: np.ndarray | None  # cmc[i] = rank-(i+1), over mated probes
    ranks: tuple[int, ...]
    tpir_at_fpir: dict[str, TpirAtFpir] | None
    det: DetCurve | None
    per_probe: pa.Table = field(repr=False)
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()

    def rank(self, k: int) -> float:
        if self.cmc is None or not 1 <= k <= len(self.cmc):
            raise EvaluationError(f"CMC rank-{k} is not available")
        return float(self.cmc[k - 1])

    def to_dict(self) -> dict[str, Any]:
        """The ``--json`` keys."""
        return {
            "protocol": "identification",
            "template": self.template,
            "metric": self.metric,
            "candidates": self.candidates,
            "num_probes": self.num_probes,
            "num_mated": self.num_mated,
            "num_nonmated": self.num_nonmated,
            "num_identities": self.num_identities,
            "num_gallery": self.num_gallery,
            "num_dropped_probes": self.num_dropped_probes,
            "cmc": None if self.cmc is None else {str(k): _finite(self.cmc[k - 1]) for k in self.ranks},
            "tpir_at_fpir": None if self.tpir_at_fpir is None else
            {label: point.to_dict() for label, point in self.tpir_at_fpir.items()},
            "notes": list(self.notes),
            "conventions": CONVENTIONS,
            "warnings": list(self.warnings),
        }


def _finite(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None


def summarise(task: IdentificationTask, scores: ProbeScores, *, fpirs: Sequence[float] = DEFAULT_FPIRS,
              ranks: Sequence[int] = DEFAULT_RANKS, candidates: str = EXHAUSTIVE) -> IdentificationResult:
    """CMC, TPIR@FPIR, the DET curve and the per-probe table from per-probe scores."""
    ranks = _check_ranks(ranks)
    fpirs = check_fpirs(fpirs)
    notes: list[str] = []
    cmc = points = det = None
    num_mated = num_nonmated = None
    warnings: list[str] = []
    mated = task.mate_identity >= 0
    if task.probe_pid is None:
        notes.append("the probes carry no pid: CMC, TPIR@FPIR and the DET curve are skipped (candidate lists only)")
    else:
        num_mated, num_nonmated = int(mated.sum()), int((~mated).sum())
        hit = mated & (scores.mate_rank == 1)
        cmc = cmc_from_ranks(scores.mate_rank[mated], max(max(ranks), 50))
        points, why = operating_points(scores.mate_key[hit], scores.top_key[~mated], num_mated, fpirs, task.to_score)
        if why:
            notes.append(why)
        det = det_curve(scores.mate_key[hit], scores.top_key[~mated], num_mated, task.to_score)
        warnings += unreachable_warnings(points, num_nonmated)
        missing = int((mated & (scores.mate_rank == 0)).sum())
        if missing:
            notes.append(f"{missing} mated probes' mates are not in their top-k candidate lists (counted as misses)")
    return IdentificationResult(
        template=task.templates.name, metric=task.metric, candidates=candidates,
        num_probes=len(task.probe_rows), num_mated=num_mated, num_nonmated=num_nonmated,
        num_identities=task.enrolment.num_identities, num_gallery=task.enrolment.num_gallery,
        num_dropped_probes=task.num_dropped, cmc=cmc, ranks=ranks, tpir_at_fpir=points, det=det,
        per_probe=per_probe_table(task, scores), notes=tuple(notes), warnings=tuple(warnings),
    )


def _check_ranks(ranks: Sequence[int]) -> tuple[int, ...]:
    ranks = tuple(int(k) for k in ranks)
    if not ranks or min(ranks) < 1:
        raise EvaluationError(f"CMC ranks must be positive integers, got {list(ranks)}")
    return ranks


def per_probe_table(task: IdentificationTask, scores: ProbeScores) -> pa.Table:
    mated = task.mate_identity >= 0
    has_pid = task.probe_pid is not None
    found = mated & (scores.mate_rank > 0)
    top_rows = task.templates.gallery_row[scores.top_column]
    return pa.table(
        {
            "probe_id": pa.array(task.probe_ids.astype(str), pa.string()),
            "pid": pa.array(task.probe_pid, pa.int64()) if has_pid else pa.nulls(len(mated), pa.int64()),
            "mated": pa.array(mated) if has_pid else pa.nulls(len(mated), pa.bool_()),
            "top1_identity": pa.array(task.enrolment.identity_pid[scores.top_identity], pa.int64()),
            "top1_gallery_id": pa.array(task.gallery_ids[top_rows].astype(str), pa.string()),
            "top1_score": pa.array(task.to_score(scores.top_key), pa.float64()),
            "mate_rank": pa.array(scores.mate_rank, pa.int64(), mask=~found),
            "mate_score": pa.array(task.to_score(np.nan_to_num(scores.mate_key, nan=0.0)), pa.float64(), mask=~found),
        },
        schema=PER_PROBE_SCHEMA,
    )


# --------------------------------------------------------------------------- the doors


def identify(probe_vectors: np.ndarray, gallery_vectors: np.ndarray, probe_pid: np.ndarray | None,
             gallery_pid: np.ndarray, *, template: str = "item", metric: str = "cosine",
             fpirs: Sequence[float] = DEFAULT_FPIRS, ranks: Sequence[int] = DEFAULT_RANKS,
             junk_pids: Iterable[int] = (-1,), probe_ids: np.ndarray | None = None,
             gallery_ids: np.ndarray | None = None, candidate_rows: np.ndarray | None = None,
             device: str = "cpu", block_rows: int | None = None,
             progress: ProgressCallback | None = None) -> IdentificationResult:
    """1:N identification of every probe against the enrolled gallery (protocols §6).

    ``candidate_rows`` (P_all, k): gallery rows listed for every probe by an index (its top-k,
    in any order; junk rows are ignored): scored over those lists only (``item`` template), and
    labelled ``index top-k`` in the result. Without it every template is scored (exhaustive).
    """
    task = identification_task(probe_vectors, gallery_vectors, probe_pid, gallery_pid, template=template,
                               metric=metric, junk_pids=junk_pids, probe_ids=probe_ids, gallery_ids=gallery_ids,
                               device=device)
    if candidate_rows is None:
        scores = score_exhaustive(task.source, task.templates.identity, task.enrolment.num_identities,
                                  task.mate_identity, block_rows, progress)
        return summarise(task, scores, fpirs=fpirs, ranks=ranks)
    scores, k = score_candidate_rows(task, candidate_rows)
    return summarise(task, scores, fpirs=fpirs, ranks=ranks, candidates=f"index top-k (k={k})")


def score_candidate_rows(task: IdentificationTask, candidate_rows: np.ndarray) -> tuple[ProbeScores, int]:
    """Scores over an index's gallery-row lists (item template), exact keys of the listed pairs."""
    if task.templates.name != "item":
        raise EvaluationError("index candidate lists hold gallery items: use the item template with --index")
    candidate_rows = np.asarray(candidate_rows, dtype=np.int64)
    num_gallery = task.enrolment.num_gallery
    if candidate_rows.ndim != 2 or len(candidate_rows) < int(task.probe_rows.max(initial=-1)) + 1:
        raise EvaluationError(f"candidate lists must be (probes, k) gallery rows, got shape {candidate_rows.shape}")
    if candidate_rows.size and (candidate_rows.min() < 0 or candidate_rows.max() >= num_gallery):
        raise EvaluationError(f"candidate lists hold gallery rows outside 0..{num_gallery - 1} (missing results?)")
    lists = candidate_rows[task.probe_rows]
    column_of_row = np.full(num_gallery, -1, np.int64)
    column_of_row[task.enrolment.rows] = np.arange(len(task.enrolment.rows))
    cols = column_of_row[lists]
    lists_k = cols.shape[1]
    # junk rows are not enrolled: each is replaced by the probe's first listed enrolled column (a repeat changes nothing)
    enrolled = cols >= 0
    if not enrolled.any(axis=1).all():
        raise EvaluationError("a probe's candidate list holds only junk gallery items; search with a larger k")
    first = cols[np.arange(len(cols)), np.argmax(enrolled, axis=1)]
    cols = np.where(enrolled, cols, first[:, None])
    rows = np.repeat(np.arange(len(cols)), lists_k)
    keys = task.exact_keys(rows, cols.ravel()).reshape(cols.shape)
    return score_lists(keys, cols, task.templates.identity, task.mate_identity), lists_k
