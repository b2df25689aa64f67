"""CMC curves (protocols.md §1): multi-gallery-shot (default) and CUHK03 single-gallery-shot."""

from __future__ import annotations

import numpy as np

from retrieval.eval.distances import DistanceBlock, above, below
from retrieval.eval.protocol import RankingLabels
from retrieval.indexes.arrays import nonzero_2d

CMC_MODES = ("multi-gallery-shot", "single-gallery-shot")


def first_match_ranks(query: np.ndarray, rank: np.ndarray, num_queries: int) -> np.ndarray:
    """Kept rank of each query's first true match; 0 where no match was ranked."""
    first = np.zeros(num_queries, np.int64)
    if len(query):
        starts = np.flatnonzero(np.r_[True, query[1:] != query[:-1]])
        first[query[starts]] = rank[starts]
    return first


def query_cmc_hits(first_rank: np.ndarray, max_rank: int) -> np.ndarray:
    """(Q, max_rank) 0/1 rows: 1 at column k−1 when the first match is within rank k."""
    ranks = np.arange(1, max_rank + 1)
    return ((first_rank[:, None] > 0) & (first_rank[:, None] <= ranks[None, :])).astype(np.float64)


def cmc_curve(per_query_hits: np.ndarray) -> np.ndarray:
    """CMC: mean over (valid) queries of the per-query hit curves; cmc[k−1] = rank-k."""
    return per_query_hits.mean(axis=0) if len(per_query_hits) else np.zeros(per_query_hits.shape[1])


def single_gallery_shot_hits(
    block: DistanceBlock,
    labels: RankingLabels,
    *,
    max_rank: int,
    repeats: int = 10,
    seed: int = 0,
) -> np.ndarray:
    """CUHK03 single-gallery-shot: per query, ``repeats`` times sample one kept gallery item per
    identity, rank only those, and average the hit curves. (b, max_rank); NaN rows for queries
    without a true match. Each query draws from its own generator seeded by (seed, query row), so
    results do not depend on block sizes. Identities are gallery pids (junk pids excluded);
    ties are broken by gallery column as everywhere else, on exact values (see ``eval.ranking``).
    """
    num_rows = block.values.shape[0]
    first_row = block.start
    pids = labels.gallery_pid
    order = np.argsort(pids, kind="stable")
    group_pids, starts, counts = np.unique(pids[order], return_index=True, return_counts=True)
    real = ~np.isin(group_pids, labels.junk_pids)
    group_pids, starts, counts = group_pids[real], starts[real], counts[real]
    ranks_axis = np.arange(1, max_rank + 1)
    hits = np.full((num_rows, max_rank), np.nan)
    match_rows, match_cols = labels.match_pairs(np.arange(first_row, first_row + num_rows))
    for local in range(num_rows):
        query_row = first_row + local
        matches = match_cols[match_rows == query_row]
        if len(matches) == 0:
            continue
        rng = np.random.default_rng([seed, query_row])
        others = group_pids != labels.query_pid[query_row]
        chosen_match = matches[rng.integers(0, len(matches), size=repeats)]
        picks = starts[others][None, :] + (rng.random((repeats, int(others.sum()))) * counts[others]).astype(np.int64)
        chosen_other = order[picks]
        rank = 1 + _count_before(block, local, chosen_match, chosen_other)
        hits[local] = (rank[:, None] <= ranks_axis[None, :]).mean(axis=0)
    return hits


def _count_before(block: DistanceBlock, local: int, chosen_match: np.ndarray, chosen_other: np.ndarray) -> np.ndarray:
    """Per repeat: the sampled others before the sampled match in exact (value, column) order."""
    row = block.values[local]
    window = 2.0 * float(block.bound[local])
    d_match = row[chosen_match][:, None].astype(np.float64)
    d_other = row[chosen_other]
    before = d_other < below(d_match, window)
    unsure = ~before & (d_other <= above(d_match, window))
    if unsure.any():
        reps, which = nonzero_2d(unsure)
        cols = np.concatenate([chosen_other[reps, which], chosen_match])
        exact = block.exact_row(local, cols)
        other_value, match_value = exact[: len(reps)], exact[len(reps):][reps]
        other_col, match_col = chosen_other[reps, which], chosen_match[reps]
        before[reps, which] = (other_value < match_value) | ((other_value == match_value) & (other_col < match_col))
    return before.sum(axis=1)
