"""Query × gallery verification trials over gallery shards on Ray, with one process's result.

The passes of ``eval.trials`` run per gallery part: the first block's value range (all shards
together set the histogram's edges exactly as one process would), pass 1 (impostor histogram,
genuine distances), the hot bins on the driver, pass 2 (the impostors of the hot bins). Counts
add up across shards and the kept distances are sorted, so the ROC, AUC, EER and TAR@FAR are
identical to ``eval.trials.query_gallery_verification`` on the whole gallery.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np

from retrieval.common.progress import ProgressCallback
from retrieval.distributed.shards import GalleryView, part_state
from retrieval.distributed.tasks import fault_point, gather, put, remote
from retrieval.labels import LabelledVectors, check_labels, labels_between

CACHE_BYTES = 256 * 1024 * 1024  # a worker keeps its part's pass-1 blocks for pass 2 up to this


@dataclass(frozen=True)
class TrialSpec:
    distance: str
    protocol: str
    junk_pids: tuple[int, ...]
    device: str
    first_block_rows: int  # the one-process block rows: the first block sets the histogram's edges
    run: str  # identifies this run's blocks in a worker's cache


_blocks: dict[tuple, list] = {}


def _shard(part, split, queries: LabelledVectors, spec: TrialSpec):
    """(distance source, labels) of one part, built once per worker for all passes."""
    from retrieval.eval.distances import EmbeddingDistances

    def make(gallery: LabelledVectors):
        if len(gallery) == 0:
            return None, None
        check_labels([("gallery split", gallery)], spec.protocol)
        labels = labels_between(queries, gallery, spec.protocol, spec.junk_pids)
        return EmbeddingDistances(queries.vectors, gallery.vectors, metric=spec.distance, device=spec.device), labels

    return part_state(part, split, spec.run, make)[1]


def range_task(part, split, queries, spec: TrialSpec):
    from retrieval.eval.trials import first_block_range

    source, labels = _shard(part, split, queries, spec)
    return None if source is None else first_block_range(source, labels, spec.first_block_rows)


def count_task(part, split, queries, spec: TrialSpec, binner):
    from retrieval.eval.trials import count_trials, trial_block_rows

    fault_point("trials")
    source, labels = _shard(part, split, queries, spec)
    if source is None:
        return np.zeros(binner.num_bins + 1, np.int64), np.empty(0, binner.dtype)
    passed = count_trials(source, labels, binner, trial_block_rows(source.num_gallery), cache_bytes=CACHE_BYTES)
    _blocks.clear()
    if passed.cache is not None:
        _blocks[(spec.run, part)] = passed.cache
    return passed.counts, passed.genuine


def hot_task(part, split, queries, spec: TrialSpec, binner, hot):
    from retrieval.eval.trials import hot_trials, trial_block_rows

    source, labels = _shard(part, split, queries, spec)
    if source is None:
        return np.empty(0, binner.dtype), np.zeros(binner.num_bins + 1, np.int64)
    blocks = _blocks.pop((spec.run, part), None)
    _blocks.clear()
    return hot_trials(source, labels, binner, hot, trial_block_rows(source.num_gallery), blocks=blocks)


def verify_on_cluster(queries: LabelledVectors, view: GalleryView, num_gallery: int, *, distance: str, protocol: str,
                      junk_pids: tuple[int, ...], fars, device: str = "cpu",
                      progress: ProgressCallback | None = None):
    """The ``VerificationResult`` of every query × gallery trial, the gallery read by the workers."""
    from retrieval.eval.errors import EvaluationError
    from retrieval.eval.trials import binner_over, hot_bins, trial_block_rows, verification_from_counts

    junk_pids = tuple(sorted(set(junk_pids)))
    spec = TrialSpec(distance, protocol, junk_pids, device, trial_block_rows(num_gallery), uuid.uuid4().hex)
    queries_ref = put(queries)
    ranges = [r for r in gather([remote(range_task).remote(p, view.split, queries_ref, spec) for p in view.parts],
                                progress, "verification: shards, range") if r is not None]
    if not ranges:
        raise EvaluationError("no queries or no gallery items: nothing to verify")
    binner = binner_over(ranges)
    firsts = gather([remote(count_task).remote(p, view.split, queries_ref, spec, binner) for p in view.parts],
                    progress, "verification: shards, counting trials")
    counts = np.sum([c for c, _ in firsts], axis=0)
    genuine = np.sort(np.concatenate([g for _, g in firsts]))
    hot = hot_bins(genuine, counts, binner, fars)
    hot_ref = put(hot)
    seconds = gather([remote(hot_task).remote(p, view.split, queries_ref, spec, binner, hot_ref) for p in view.parts],
                     progress, "verification: shards, exact counts")
    hot_counts = np.sum([h for _, h in seconds], axis=0)
    labels = SimpleNamespace(protocol=protocol, junk_pids=junk_pids, num_queries=len(queries),
                             num_gallery=num_gallery)
    return verification_from_counts(genuine, counts, [k for k, _ in seconds], hot_counts, hot, binner, fars,
                                    distance, labels)
