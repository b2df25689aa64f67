"""Query × gallery verification trials: every query × gallery pair, scored exactly, never sorted.

Every pair is a trial (genuine when the same identity) under the re-ID junk rules
(``eval.protocol``: junk and same-camera pairs excluded, distractors are impostors). The distances
are exact keys (``EmbeddingDistances.exact_blocks``: every pair's value counts in the curve).
Genuine distances (few) are kept; impostor distances are counted in a fine monotone histogram and
only the impostors that fall into the bins that matter (bins holding a genuine distance or a
TAR@FAR order statistic) are kept and sorted. See ``BinnedImpostors``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from retrieval.eval.errors import EvaluationError
from retrieval.eval.protocol import same_identity
from retrieval.eval.roc import DEFAULT_FARS, accepted_impostor_budget, check_fars, roc_metrics_from
from retrieval.eval.verification import VerificationResult
from retrieval.common.text import few
from retrieval.common.progress import ProgressCallback, no_progress



class MonotoneBinner:
    """Bin index of a distance: ⌊(d − lo)·scale⌋ clipped to [0, num_bins − 1], in the data's dtype.

    Floating subtraction and multiplication by a positive constant are monotone under rounding,
    so d1 ≤ d2 implies bin(d1) ≤ bin(d2): counts by bin plus exact comparisons inside one bin
    give exact counts, whatever the bin edges are. Values outside [lo, hi] fall in the end bins.
    """

    def __init__(self, lo: float, hi: float, num_bins: int, dtype: np.dtype) -> None:
        if not hi > lo:
            hi = lo + 1.0
        self.dtype = np.dtype(dtype)
        self.num_bins = int(num_bins)
        self.lo = self.dtype.type(lo)
        self.scale = self.dtype.type(num_bins / (hi - lo))

    def __call__(self, values: np.ndarray, buffers: "BlockBuffers | None" = None) -> np.ndarray:
        values = np.asarray(values, dtype=self.dtype)
        if buffers is None:
            scaled, bins = np.empty(values.shape, self.dtype), np.empty(values.shape, np.intp)
        else:
            scaled, bins = buffers.get(values.shape, self.dtype)
        np.subtract(values, self.lo, out=scaled)
        np.multiply(scaled, self.scale, out=scaled)
        np.clip(scaled, 0, self.num_bins - 1, out=scaled)
        np.copyto(bins, scaled, casting="unsafe")  # truncation = floor on [0, num_bins)
        return bins  # intp: np.bincount and fancy indexing take it without a copy


class BlockBuffers:
    """Scratch arrays reused from block to block: fresh 10–70 MB arrays per block cost page faults."""

    def __init__(self) -> None:
        self._scaled: np.ndarray | None = None
        self._bins: np.ndarray | None = None

    def get(self, shape: tuple[int, ...], dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
        size = int(np.prod(shape))
        if self._scaled is None or self._scaled.size < size or self._scaled.dtype != dtype:
            self._scaled = np.empty(size, dtype)
            self._bins = np.empty(size, np.intp)
        return self._scaled[:size].reshape(shape), self._bins[:size].reshape(shape)


class BinnedImpostors:
    """Exact impostor counts from a histogram plus the sorted impostors of a few "hot" bins.

    ``counts[b]`` is the exact number of impostors in bin b; ``kept`` holds every impostor of the
    hot bins. A question about a value v (or an order statistic) is answered exactly as long as
    its bin is hot: count = impostors in lower bins + kept impostors of v's bin below v.
    """

    def __init__(self, counts: np.ndarray, kept: np.ndarray, hot: np.ndarray, binner: MonotoneBinner) -> None:
        self.binner = binner
        self.counts = np.asarray(counts, dtype=np.int64)
        self.below_bin = np.concatenate([[0], np.cumsum(self.counts)])  # impostors in bins < b
        self.num = int(self.below_bin[-1])
        self.kept = np.sort(kept)
        self.kept_bins = binner(self.kept) if len(self.kept) else np.empty(0, np.intp)
        self.hot = hot

    def _require_hot(self, bins: np.ndarray) -> None:
        if not np.all(self.hot[bins]):
            raise RuntimeError("internal error: a verification count was asked outside the kept bins")

    def _count(self, values: np.ndarray, side: str) -> np.ndarray:
        values = np.asarray(values, dtype=self.binner.dtype)
        bins = self.binner(values)
        self._require_hot(bins)
        kept_before_bin = np.searchsorted(self.kept_bins, bins, side="left")
        kept_before_value = np.searchsorted(self.kept, values, side=side)
        return self.below_bin[bins] + (kept_before_value - kept_before_bin)

    def count_less(self, values: np.ndarray) -> np.ndarray:
        return self._count(values, "left")

    def count_leq(self, values: np.ndarray) -> np.ndarray:
        return self._count(values, "right")

    def order_stat(self, j: int) -> Any:
        b = self.bin_of_order_stat(j)
        self._require_hot(np.array([b]))
        first_kept = int(np.searchsorted(self.kept_bins, b, side="left"))
        return self.kept[first_kept + (j - int(self.below_bin[b]))]

    def bin_of_order_stat(self, j: int) -> int:
        # bin b holds order statistics below_bin[b] .. below_bin[b+1] − 1
        return int(np.searchsorted(self.below_bin, j, side="right")) - 1


def order_stat_bins(counts: np.ndarray, fars: Sequence[float]) -> np.ndarray:
    """The histogram bins that TAR@FAR needs: for each target, the bin of the (k+1)-th smallest
    impostor and the nearest non-empty bin below it (which holds the impostor just below it)."""
    counts = np.asarray(counts, dtype=np.int64)
    below_bin = np.concatenate([[0], np.cumsum(counts)])
    num = int(below_bin[-1])
    nonempty = np.flatnonzero(counts)
    bins: list[int] = []
    for far in fars:
        k = accepted_impostor_budget(far, num)
        if k >= num:
            continue
        b = int(np.searchsorted(below_bin, k, side="right")) - 1
        bins.append(b)
        lower = nonempty[nonempty < b]
        if len(lower):
            bins.append(int(lower[-1]))
    return np.array(bins, dtype=np.int64)

# --------------------------------------------------------------------------- query × gallery trials

# One histogram bin per ~1/2^20 of the distance range: fine enough that few impostors share a
# bin with a genuine distance, small enough (8 MB) to sum per block.
NUM_BINS = 1 << 20
# Distance blocks are kept between the two passes when all of them fit in this many bytes.
DEFAULT_CACHE_BYTES = 256 * 1024 * 1024
DEFAULT_BLOCK_BYTES = 32 * 1024 * 1024


def trial_masks(labels, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Genuine and excluded masks (b, G) of query rows start..stop under ``labels``' protocol.

    ``labels`` is an ``eval.protocol.RankingLabels``. Excluded = junk (same pid and camid under
    market, junk pids, the item itself under leave-one-out, every trial of a query whose pid is
    a junk pid) or same pid (i.e. not an impostor); genuine = same pid and not junk.
    """
    query_pid = labels.query_pid[start:stop]
    same = same_identity(query_pid[:, None], labels.gallery_pid[None, :])
    junk = np.repeat(labels.gallery_is_junk_pid[None, :], stop - start, axis=0)
    junk[np.isin(query_pid, labels.junk_pids)] = True
    if labels.protocol == "market":
        junk |= same & (labels.query_camid[start:stop, None] == labels.gallery_camid[None, :])
    elif labels.protocol == "leave-one-out":
        self_col = labels.query_self_column[start:stop]
        rows = np.flatnonzero(self_col >= 0)
        junk[rows, self_col[rows]] = True
    genuine = same & ~junk
    junk |= same
    return genuine, junk


def query_gallery_verification(
    source,
    labels,
    *,
    fars: Sequence[float] = DEFAULT_FARS,
    distance: str = "",
    block_rows: int | None = None,
    cache_bytes: int = DEFAULT_CACHE_BYTES,
    num_bins: int = NUM_BINS,
    progress: ProgressCallback | None = None,
) -> VerificationResult:
    """Exact ROC metrics over every query × gallery trial, without sorting the trials.

    ``source``: an ``eval.distances.DistanceSource`` (smaller = closer); ``labels``: an
    ``eval.protocol.RankingLabels`` for the same query and gallery rows.

    Pass 1 (one distance block at a time): keep the genuine distances, count every impostor
    distance into a monotone histogram. Then the bins that hold a genuine distance, or the
    impostor order statistics TAR@FAR needs, are marked. Pass 2 keeps the impostors of those
    bins only (from the blocks kept in memory when they fit in ``cache_bytes``, else from
    recomputed blocks). Counts below any genuine distance, hence the curve, AUC and EER, and
    the order statistics are then exact. Memory: one block, the histogram, the genuine
    distances and the kept impostors. The passes are public (``first_block_range``,
    ``count_trials``, ``hot_trials``, ``verification_from_counts``) so that gallery shards can run
    them apart (``retrieval.distributed``) with the same result.
    """
    fars = check_fars(fars)
    progress = progress or no_progress
    _check_sizes(source, labels)
    block_rows = block_rows or trial_block_rows(source.num_gallery)
    passed = count_trials(source, labels, None, block_rows, progress, num_bins=num_bins, cache_bytes=cache_bytes)
    hot = hot_bins(passed.genuine, passed.counts, passed.binner, fars)
    kept, hot_counts = hot_trials(source, labels, passed.binner, hot, block_rows, progress, blocks=passed.cache)
    counts, genuine, binner = passed.counts, passed.genuine, passed.binner
    del passed  # release the kept distance blocks before the final counts
    return verification_from_counts(genuine, counts, [kept], hot_counts, hot, binner, fars, distance, labels)


def trial_block_rows(num_gallery: int) -> int:
    """Query rows per block of trials (the first block also sets the histogram's range)."""
    return max(1, DEFAULT_BLOCK_BYTES // max(1, 4 * num_gallery))


def _check_sizes(source, labels) -> None:
    if (source.num_queries, source.num_gallery) != (labels.num_queries, labels.num_gallery):
        raise EvaluationError(
            f"distances are {source.num_queries} × {source.num_gallery} but the labels describe "
            f"{labels.num_queries} queries × {labels.num_gallery} gallery items"
        )


@dataclass(frozen=True)
class ValueRange:
    """The smallest and largest distance of the first block's kept trials (``kept`` False: none was
    kept, so over all its trials), and the distances' dtype: what the histogram's edges come from."""

    lo: float
    hi: float
    kept: bool
    dtype: str


def first_block_range(source, labels, block_rows: int) -> ValueRange | None:
    """The range of the first ``block_rows`` queries' kept trials (None without queries or gallery)."""
    for start, block in exact_trial_blocks(source, block_rows):
        _check_nan(block, start)
        genuine, excluded = trial_masks(labels, start, start + block.shape[0])
        return _block_range(block, genuine, excluded)
    return None


def _block_range(block: np.ndarray, genuine: np.ndarray, excluded: np.ndarray) -> ValueRange | None:
    kept = block[~excluded | genuine]
    sample = kept if len(kept) else block
    if sample.size == 0:
        return None
    return ValueRange(float(sample.min()), float(sample.max()), bool(len(kept)), block.dtype.str)


def binner_over(ranges: Sequence[ValueRange], num_bins: int = NUM_BINS) -> MonotoneBinner:
    """Bin edges over the first block's kept distances (of every shard), widened by an eighth on each side.

    Any edges give exact results (values outside fall in the end bins); representative edges
    only keep the number of impostors sharing a bin with a genuine distance small.
    """
    chosen = [r for r in ranges if r.kept] or list(ranges)
    lo, hi = min(r.lo for r in chosen), max(r.hi for r in chosen)
    margin = (hi - lo) / 8
    dtype = np.dtype(chosen[0].dtype)
    dtype = dtype if np.issubdtype(dtype, np.floating) else np.dtype(np.float64)
    return MonotoneBinner(lo - margin, hi + margin, num_bins, dtype)


def _check_nan(block: np.ndarray, start: int) -> None:
    if np.isnan(np.sum(block)):  # a reduction, no (b, G) temporary; NaN anywhere makes the sum NaN
        rows = np.flatnonzero(np.isnan(block).any(axis=1)) + start
        raise EvaluationError(f"distances hold NaN (query rows {few(rows)})")


@dataclass
class TrialCounts:
    """Pass 1: the impostors' histogram (num_bins + 1; the last bin counts the trials that are not
    impostors), the genuine distances (sorted), the binner, and the blocks when they were kept."""

    counts: np.ndarray
    genuine: np.ndarray
    binner: MonotoneBinner
    cache: list | None = None


def count_trials(source, labels, binner: MonotoneBinner | None, block_rows: int,
                 progress: ProgressCallback | None = None, *, num_bins: int = NUM_BINS,
                 cache_bytes: int = 0) -> TrialCounts:
    """Pass 1 with the given binner, or (None) one set by the first block (``binner_over``); the
    blocks are kept for pass 2 when all of them fit in ``cache_bytes``."""
    progress = progress or no_progress
    counts: np.ndarray | None = None
    genuine_parts: list[np.ndarray] = []
    buffers = BlockBuffers()
    cache: list | None = None
    for start, block in exact_trial_blocks(source, block_rows):
        stop = start + block.shape[0]
        _check_nan(block, start)
        genuine, excluded = trial_masks(labels, start, stop)
        if binner is None:
            binner = binner_over([_block_range(block, genuine, excluded)], num_bins)
        if counts is None:
            counts = np.zeros(binner.num_bins + 1, np.int64)
            if source.num_queries * source.num_gallery * binner.dtype.itemsize <= cache_bytes:
                cache = []
        block = np.asarray(block, dtype=binner.dtype)
        genuine_parts.append(block[genuine])
        bins = binner(block, buffers)
        bins[excluded] = binner.num_bins
        counts += np.bincount(bins.ravel(), minlength=binner.num_bins + 1)
        if cache is not None:
            cache.append((start, np.array(block, copy=True)))
        progress("verification: counting trials", stop, source.num_queries)
    if binner is None:
        raise EvaluationError("no queries: nothing to verify")
    genuine = np.sort(np.concatenate(genuine_parts)) if genuine_parts else np.empty(0, binner.dtype)
    return TrialCounts(counts, genuine, binner, cache)


def hot_bins(genuine: np.ndarray, counts: np.ndarray, binner: MonotoneBinner, fars: Sequence[float]) -> np.ndarray:
    """The bins pass 2 keeps: those of a genuine distance and of the order statistics TAR@FAR needs."""
    hot = np.zeros(binner.num_bins + 1, bool)
    if len(genuine):
        hot[binner(np.unique(genuine))] = True
    hot[order_stat_bins(counts[:binner.num_bins], check_fars(fars))] = True
    return hot


def hot_trials(source, labels, binner: MonotoneBinner, hot: np.ndarray, block_rows: int,
               progress: ProgressCallback | None = None, blocks=None) -> tuple[np.ndarray, np.ndarray]:
    """Pass 2: (the impostor distances of the hot bins, their histogram). ``blocks``: pass 1's cache."""
    progress = progress or no_progress
    kept: list[np.ndarray] = []
    hot_counts = np.zeros(binner.num_bins + 1, np.int64)
    buffers = BlockBuffers()
    for start, block in (blocks if blocks is not None else exact_trial_blocks(source, block_rows)):
        stop = start + block.shape[0]
        block = np.asarray(block, dtype=binner.dtype)
        _, excluded = trial_masks(labels, start, stop)
        bins = binner(block, buffers)
        bins[excluded] = binner.num_bins
        in_hot = hot[bins]
        kept.append(block[in_hot])
        hot_counts += np.bincount(bins[in_hot], minlength=binner.num_bins + 1)
        progress("verification: exact counts", stop, source.num_queries)
    return (np.concatenate(kept) if kept else np.empty(0, binner.dtype)), hot_counts


def verification_from_counts(genuine: np.ndarray, counts: np.ndarray, kept: list[np.ndarray], hot_counts: np.ndarray,
                             hot: np.ndarray, binner: MonotoneBinner, fars: Sequence[float], distance: str,
                             labels) -> VerificationResult:
    """The ROC metrics from both passes (summed over shards, when there are several)."""
    num_bins = binner.num_bins
    impostor_counts = counts[:num_bins]
    if len(genuine) == 0:
        raise EvaluationError("no genuine trials: no query has a same-identity gallery item left after junk filtering")
    if impostor_counts.sum() == 0:
        raise EvaluationError("no impostor trials: every kept gallery item has the query's identity")
    if not np.array_equal(hot_counts[:num_bins][hot[:num_bins]], impostor_counts[hot[:num_bins]]):
        raise EvaluationError(
            "internal error: the second pass over the trials counted different impostors than the first "
            "(the distance source is not deterministic); no result was written"
        )
    impostors = BinnedImpostors(impostor_counts, np.concatenate(kept), hot, binner)
    roc = roc_metrics_from(np.sort(genuine), impostors, check_fars(fars))
    parameters = {
        "trials": "query-gallery",
        "protocol": labels.protocol,
        "junk_pids": list(labels.junk_pids),
        "num_queries": labels.num_queries,
        "num_gallery": labels.num_gallery,
        "kept_impostors": int(len(impostors.kept)),
    }
    return VerificationResult("query-gallery", distance, roc, None, parameters)


def exact_trial_blocks(source, block_rows: int):
    """(first row, (b, G) distances) with every value exact: each trial's value enters the curve.

    Sources with ``exact_blocks`` (embeddings: the distance core's keys for every pair) use them;
    others must yield exact values (a bound of 0), or verification refuses them.
    """
    blocks = source.exact_blocks(block_rows) if hasattr(source, "exact_blocks") else source.blocks(block_rows)
    for block in blocks:
        if block.exact_fn is not None or np.any(block.bound):
            raise EvaluationError("query × gallery verification needs exact distances; this source gives approximations")
        yield block.start, source.to_distance(block.values)
