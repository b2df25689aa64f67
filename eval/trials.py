"""Query × gallery verification trials: every query × gallery pair, scored exactly, never sorted.

Every pair is a trial (genuine when the same identity) under the re-ID junk rules
(``eval.protocol``: junk and same-camera pairs excluded, distractors are impostors). The distances
are exact keys (``EmbeddingDistances.exact_blocks``: every pair's value counts in the curve).
Genuine distances (few) are kept; impostor distances are counted in a fine monotone histogram and
only the impostors that fall into the bins that matter (bins holding a genuine distance or a
TAR@FAR order statistic) are kept and sorted. See ``BinnedImpostors``.
"""

from __future__ import annotations

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
    distances and the kept impostors.
    """
    fars = check_fars(fars)
    progress = progress or no_progress
    num_queries, num_gallery = source.num_queries, source.num_gallery
    if (num_queries, num_gallery) != (labels.num_queries, labels.num_gallery):
        raise EvaluationError(
            f"distances are {num_queries} × {num_gallery} but the labels describe "
            f"{labels.num_queries} queries × {labels.num_gallery} gallery items"
        )
    if block_rows is None:
        block_rows = max(1, DEFAULT_BLOCK_BYTES // max(1, 4 * num_gallery))
    cache: list[tuple[int, np.ndarray]] | None = None

    genuine_parts: list[np.ndarray] = []
    binner: MonotoneBinner | None = None
    counts = np.zeros(num_bins + 1, np.int64)  # last bin: trials that are not impostors
    buffers = BlockBuffers()
    for start, block in exact_trial_blocks(source, block_rows):
        stop = start + block.shape[0]
        if np.isnan(np.sum(block)):  # a reduction, no (b, G) temporary; NaN anywhere makes the sum NaN
            rows = np.flatnonzero(np.isnan(block).any(axis=1)) + start
            raise EvaluationError(f"distances hold NaN (query rows {few(rows)})")
        genuine, excluded = trial_masks(labels, start, stop)
        if binner is None:
            binner = _binner_for(block, excluded, genuine, num_bins)
            if num_queries * num_gallery * binner.dtype.itemsize <= cache_bytes:
                cache = []
        else:
            block = np.asarray(block, dtype=binner.dtype)
        genuine_parts.append(block[genuine])
        bins = binner(block, buffers)
        bins[excluded] = num_bins
        counts += np.bincount(bins.ravel(), minlength=num_bins + 1)
        if cache is not None:
            cache.append((start, np.array(block, copy=True)))
        progress("verification: counting trials", stop, num_queries)
    if binner is None:
        raise EvaluationError("no queries: nothing to verify")
    impostor_counts = counts[:num_bins]
    genuine = np.sort(np.concatenate(genuine_parts))
    if len(genuine) == 0:
        raise EvaluationError("no genuine trials: no query has a same-identity gallery item left after junk filtering")
    if impostor_counts.sum() == 0:
        raise EvaluationError("no impostor trials: every kept gallery item has the query's identity")

    hot = np.zeros(num_bins + 1, bool)
    hot[binner(np.unique(genuine))] = True
    hot[order_stat_bins(impostor_counts, fars)] = True

    blocks = cache if cache is not None else exact_trial_blocks(source, block_rows)
    kept: list[np.ndarray] = []
    hot_counts = np.zeros(num_bins + 1, np.int64)
    for start, block in blocks:
        stop = start + block.shape[0]
        block = np.asarray(block, dtype=binner.dtype)
        _, excluded = trial_masks(labels, start, stop)
        bins = binner(block, buffers)
        bins[excluded] = num_bins
        in_hot = hot[bins]
        kept.append(block[in_hot])
        hot_counts += np.bincount(bins[in_hot], minlength=num_bins + 1)
        progress("verification: exact counts", stop, num_queries)
    del cache, blocks  # release the kept distance blocks before the final counts
    if not np.array_equal(hot_counts[:num_bins][hot[:num_bins]], impostor_counts[hot[:num_bins]]):
        raise EvaluationError(
            "internal error: the second pass over the trials counted different impostors than the first "
            "(the distance source is not deterministic); no result was written"
        )
    impostors = BinnedImpostors(impostor_counts, np.concatenate(kept), hot, binner)
    roc = roc_metrics_from(genuine, impostors, fars)
    parameters = {
        "trials": "query-gallery",
        "protocol": labels.protocol,
        "junk_pids": list(labels.junk_pids),
        "num_queries": num_queries,
        "num_gallery": num_gallery,
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


def _binner_for(block: np.ndarray, excluded: np.ndarray, genuine: np.ndarray, num_bins: int) -> MonotoneBinner:
    """Bin edges over the first block's kept distances, widened by an eighth on each side.

    Any edges give exact results (values outside fall in the end bins); representative edges
    only keep the number of impostors sharing a bin with a genuine distance small.
    """
    kept = block[~excluded | genuine]
    sample = kept if len(kept) else block
    lo, hi = float(sample.min()), float(sample.max())
    margin = (hi - lo) / 8
    dtype = block.dtype if np.issubdtype(block.dtype, np.floating) else np.float64
    return MonotoneBinner(lo - margin, hi + margin, num_bins, dtype)
