"""Per-probe 1:N scores, exact (protocols.md §6): the top candidate, the mate's score and rank.

Scores are the distance core's keys (smaller = better). An identity's score is its best column's
key; the top candidate is the identity with the smallest score, ties by identity number (= first
gallery row); the mate's rank is 1 + the identities scoring better + the tied ones numbered lower.

``score_exhaustive`` walks query blocks of float32 approximations with their error bound B: the
top candidates are among the columns within 2B of a row's approximate minimum, the mate's score
among its columns within 2B of their approximate minimum, and for the rank a column is surely
better than the mate's exact score κ when its value is below κ − B, surely not when above κ + B;
only the columns in between get exact keys. ``score_lists`` does the same over candidate lists.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrieval.common.progress import ProgressCallback
from retrieval.eval.distances import DistanceBlock, DistanceSource, block_rows_for
from retrieval.eval.errors import EvaluationError
from retrieval.indexes.distance import above, below
from retrieval.indexes.arrays import nonzero_2d


@dataclass(frozen=True)
class ProbeScores:
    """Per probe (keys: smaller = better)."""

    top_key: np.ndarray  # (P,) float32 exact key of the top candidate
    top_column: np.ndarray  # (P,) its best template column (lowest column among ties)
    top_identity: np.ndarray  # (P,) identity number
    mate_key: np.ndarray  # (P,) float32; NaN when non-mated (or the mate was not listed)
    mate_rank: np.ndarray  # (P,) 1-based; 0 when non-mated (or the mate was not listed)
    refined_pairs: int = 0  # pairs whose exact key was needed (exhaustive mode)


def _empty_scores(num_probes: int) -> dict[str, np.ndarray]:
    return dict(
        top_key=np.full(num_probes, np.inf, np.float32),
        top_column=np.full(num_probes, -1, np.int64),
        top_identity=np.full(num_probes, -1, np.int64),
        mate_key=np.full(num_probes, np.nan, np.float32),
        mate_rank=np.zeros(num_probes, np.int64),
    )


class _ColumnsOf:
    """The template columns of each identity (a CSR layout)."""

    def __init__(self, identity: np.ndarray, num_identities: int) -> None:
        self.order = np.argsort(identity, kind="stable")
        self.starts = np.searchsorted(identity[self.order], np.arange(num_identities + 1))

    def columns(self, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(owner, column): every column of identities[owner], grouped by owner in order."""
        counts = self.starts[identities + 1] - self.starts[identities]
        owner = np.repeat(np.arange(len(identities)), counts)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        return owner, self.order[np.repeat(self.starts[identities], counts) + offsets]


class _ExactPairs:
    """Exact keys of chosen (local row, column) pairs of a block, fetched in one call."""

    def __init__(self, block: DistanceBlock, rows: np.ndarray, cols: np.ndarray) -> None:
        self.width = block.values.shape[1]
        self.keys = np.unique(rows * self.width + cols)
        self.values = block.exact(self.keys // self.width, self.keys % self.width)

    def get(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return self.values[np.searchsorted(self.keys, rows * self.width + cols)]


def score_exhaustive(source: DistanceSource, identity: np.ndarray, num_identities: int, mate_identity: np.ndarray,
                     block_rows: int | None = None, progress: ProgressCallback | None = None) -> ProbeScores:
    """Exact per-probe scores from a source of probe × template-column keys (any block size)."""
    identity = np.asarray(identity, dtype=np.int64)
    if len(identity) != source.num_gallery:
        raise EvaluationError(f"{len(identity)} column identities for {source.num_gallery} template columns")
    out = _empty_scores(source.num_queries)
    by_identity = _ColumnsOf(identity, num_identities)
    refined = 0
    for block in source.blocks(block_rows or block_rows_for(source.num_gallery)):
        refined += _score_block(block, identity, num_identities, by_identity, mate_identity, out)
        if progress is not None:
            progress("identifying", block.stop, source.num_queries)
    return ProbeScores(**out, refined_pairs=refined)


def _score_block(block, identity, num_identities, by_identity, mate_identity, out) -> int:
    values, start, stop = block.values, block.start, block.stop
    bound = np.asarray(block.bound, dtype=np.float64)
    mates = mate_identity[start:stop]
    top_r, top_c = nonzero_2d(values <= above(values.min(axis=1), 2.0 * bound)[:, None])
    mate_r, mate_c = _mate_candidates(values, bound, mates, by_identity)
    exact = _ExactPairs(block, np.concatenate([top_r, mate_r]), np.concatenate([top_c, mate_c]))
    _store_top(exact.get(top_r, top_c), top_r, top_c, identity, start, out)
    kappa = np.full(len(mates), np.inf, np.float32)
    np.minimum.at(kappa, mate_r, exact.get(mate_r, mate_c))
    mated = mates >= 0
    rank, refined = _mate_ranks(block, bound, kappa, mates, identity, num_identities)
    out["mate_key"][start:stop][mated] = kappa[mated]
    out["mate_rank"][start:stop][mated] = rank[mated]
    return len(exact.keys) + refined


def _mate_candidates(values, bound, mates, by_identity):
    """(rows, cols) of each mated row's mate columns within 2B of their approximate minimum."""
    mated = np.flatnonzero(mates >= 0)
    owner, cols = by_identity.columns(mates[mated])
    rows = mated[owner]
    v = values[rows, cols]
    lowest = np.full(len(mates), np.inf)
    np.minimum.at(lowest, rows, v)
    keep = v <= above(lowest[rows], 2.0 * bound[rows])
    return rows[keep], cols[keep]


def _store_top(keys, rows, cols, identity, start, out) -> None:
    """Each row's best (key, identity, column): its top candidate and that candidate's best column."""
    order = np.lexsort((cols, identity[cols], keys, rows))
    first = order[np.r_[True, rows[order][1:] != rows[order][:-1]]]
    where = start + rows[first]
    out["top_key"][where] = keys[first]
    out["top_column"][where] = cols[first]
    out["top_identity"][where] = identity[cols[first]]


def _mate_ranks(block, bound, kappa, mates, identity, num_identities) -> tuple[np.ndarray, int]:
    """1 + identities (other than the mate) with a column better than κ, or tied at κ and numbered lower."""
    values = block.values
    reach = np.where(mates >= 0, above(kappa, bound), -np.inf)
    rows, cols = nonzero_2d(values <= reach[:, None])
    ident = identity[cols]
    other = ident != mates[rows]
    rows, cols, ident = rows[other], cols[other], ident[other]
    before = values[rows, cols] < below(kappa[rows], bound[rows])
    unsure = np.flatnonzero(~before)
    keys = block.exact(rows[unsure], cols[unsure])
    mine = kappa[rows[unsure]]
    before[unsure] = (keys < mine) | ((keys == mine) & (ident[unsure] < mates[rows[unsure]]))
    pairs = np.unique(rows[before] * num_identities + ident[before])
    return 1 + np.bincount(pairs // num_identities, minlength=len(mates)), len(unsure)


def score_lists(keys: np.ndarray, cols: np.ndarray, identity: np.ndarray, mate_identity: np.ndarray) -> ProbeScores:
    """Per-probe scores over candidate lists: ``keys`` / ``cols`` (P, k) exact keys and template
    columns (an index's top-k); identities outside a probe's list are not seen."""
    num_probes, k = cols.shape
    rows = np.repeat(np.arange(num_probes), k)
    cols, keys = cols.ravel(), np.asarray(keys, np.float32).ravel()
    ident = identity[cols]
    order = np.lexsort((cols, keys, ident, rows))  # each (probe, identity): its best column first
    first = order[np.r_[True, (rows[order][1:] != rows[order][:-1]) | (ident[order][1:] != ident[order][:-1])]]
    rows, cols, keys, ident = rows[first], cols[first], keys[first], ident[first]
    order = np.lexsort((ident, keys, rows))  # the candidate list: by score, ties by identity number
    rows, cols, keys, ident = rows[order], cols[order], keys[order], ident[order]
    rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left") + 1
    out = _empty_scores(num_probes)
    top = rank == 1
    out["top_key"][rows[top]], out["top_column"][rows[top]], out["top_identity"][rows[top]] = keys[top], cols[top], ident[top]
    mate = ident == mate_identity[rows]
    out["mate_key"][rows[mate]], out["mate_rank"][rows[mate]] = keys[mate], rank[mate]
    return ProbeScores(**out)
