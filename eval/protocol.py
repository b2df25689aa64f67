"""Protocol rules: which gallery items are junk for a query, and which are its true matches.

protocols.md §1. Junk items are removed from a query's ranking (they neither help nor hurt):

* ``market`` (Market-1501 / DukeMTMC / MSMT17 / VeRi-776): same pid **and** same camid, and every
  item whose pid is in the junk set (default {-1}).
* ``no-camera``: only the junk pids.
* ``leave-one-out`` (query set = gallery set): the query's own item, keyed by id, and the junk pids.

A true match is a gallery item with the query's pid that is not junk. Distractors (pid 0) are
ordinary negatives and never anyone's match, not even another distractor's: a pid-0 query has no
valid match in any protocol (and pid-0 pairs are impostor trials in verification). Everything
here works on sparse (query row, gallery column) pairs, never on a dense queries × gallery mask.
"""

from __future__ import annotations

import copy
from typing import Iterable

import numpy as np

from retrieval.eval.errors import EvaluationError

PROTOCOLS = ("market", "no-camera", "leave-one-out")
DISTRACTOR_PID = 0  # unrelated images: negatives for everyone, nobody's match


def same_identity(pid_a: np.ndarray, pid_b: np.ndarray) -> np.ndarray:
    """Elementwise: the same person (equal pids that are not the distractor pid)."""
    return (pid_a == pid_b) & (pid_a != DISTRACTOR_PID)


class RankingLabels:
    """The junk and match rules of one protocol over a fixed query set and gallery.

    ``query_pid`` (Q,), ``gallery_pid`` (G,) int arrays; camids (Q,) / (G,) for ``market``;
    ids (Q,) / (G,) strings for ``leave-one-out``. Inputs are trusted to be validated upstream
    (``data/``); only the combinations the protocol needs are checked here.
    """

    def __init__(
        self,
        query_pid: np.ndarray,
        gallery_pid: np.ndarray,
        query_camid: np.ndarray | None = None,
        gallery_camid: np.ndarray | None = None,
        *,
        protocol: str = "market",
        junk_pids: Iterable[int] = (-1,),
        query_ids: np.ndarray | None = None,
        gallery_ids: np.ndarray | None = None,
    ) -> None:
        if protocol not in PROTOCOLS:
            raise EvaluationError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
        self.protocol = protocol
        self.query_pid = np.asarray(query_pid, dtype=np.int64)
        self.gallery_pid = np.asarray(gallery_pid, dtype=np.int64)
        self.junk_pids = tuple(sorted({int(p) for p in junk_pids}))
        self.num_queries = len(self.query_pid)
        self.num_gallery = len(self.gallery_pid)
        self.query_camid = self.gallery_camid = None
        if protocol == "market":
            if query_camid is None or gallery_camid is None:
                raise EvaluationError(
                    "the market protocol needs a camid for every query and gallery item; "
                    "use --protocol no-camera for data without cameras"
                )
            self.query_camid = np.asarray(query_camid, dtype=np.int64)
            self.gallery_camid = np.asarray(gallery_camid, dtype=np.int64)
            _check_length("query camid", self.query_camid, self.num_queries)
            _check_length("gallery camid", self.gallery_camid, self.num_gallery)
        self.gallery_is_junk_pid = np.isin(self.gallery_pid, self.junk_pids)
        self.query_self_column = np.full(self.num_queries, -1, dtype=np.int64)
        if protocol == "leave-one-out":
            if query_ids is None or gallery_ids is None:
                raise EvaluationError("the leave-one-out protocol needs query and gallery ids")
            self.query_self_column = _self_columns(query_ids, gallery_ids)
        self._group_gallery_by_pid()

    def gallery_subset(self, cols: np.ndarray) -> "RankingLabels":
        """The same rules over the gallery columns ``cols`` only (in that order)."""
        subset = copy.copy(self)
        subset.gallery_pid = self.gallery_pid[cols]
        if self.gallery_camid is not None:
            subset.gallery_camid = self.gallery_camid[cols]
        subset.num_gallery = len(cols)
        subset.gallery_is_junk_pid = self.gallery_is_junk_pid[cols]
        position = np.full(self.num_gallery + 1, -1, dtype=np.int64)  # slot -1 stays -1
        position[cols] = np.arange(len(cols))
        subset.query_self_column = position[self.query_self_column]
        subset._group_gallery_by_pid()
        return subset

    def _group_gallery_by_pid(self) -> None:
        # Gallery columns sorted by pid (stable): one contiguous slice per identity.
        self._pid_order = np.argsort(self.gallery_pid, kind="stable")
        pids, starts, counts = np.unique(self.gallery_pid[self._pid_order], return_index=True, return_counts=True)
        self._pids, self._pid_starts, self._pid_counts = pids, starts, counts

    def same_pid_pairs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All (query row, gallery column) pairs with equal pid, for the given query rows.

        Returned grouped by query row (in the order of ``rows``), columns ascending within a row.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if len(self._pids) == 0:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        where = np.minimum(np.searchsorted(self._pids, self.query_pid[rows]), len(self._pids) - 1)
        found = same_identity(self._pids[where], self.query_pid[rows])
        counts = np.where(found, self._pid_counts[where], 0)
        starts = np.where(found, self._pid_starts[where], 0)
        pair_rows = np.repeat(rows, counts)
        # position inside each identity's slice: 0..count-1, built without a Python loop
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        pair_cols = self._pid_order[np.repeat(starts, counts) + offsets]
        return pair_rows, pair_cols

    def is_junk(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Junk flag of each (query row, gallery column) pair."""
        junk = self.gallery_is_junk_pid[cols].copy()
        if self.protocol == "market":
            junk |= same_identity(self.gallery_pid[cols], self.query_pid[rows]) & (
                self.gallery_camid[cols] == self.query_camid[rows]
            )
        elif self.protocol == "leave-one-out":
            junk |= cols == self.query_self_column[rows]
        return junk

    def row_flags(self, query_row: int, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(kept, match) flags of gallery columns ``cols`` for one query: the per-row fast path."""
        same_pid = same_identity(self.gallery_pid[cols], self.query_pid[query_row])
        junk = self.gallery_is_junk_pid[cols]
        if self.protocol == "market":
            junk = junk | (same_pid & (self.gallery_camid[cols] == self.query_camid[query_row]))
        elif self.protocol == "leave-one-out":
            junk = junk | (cols == self.query_self_column[query_row])
        return ~junk, same_pid & ~junk

    def is_match(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """True-match flag of each pair: same pid and not junk."""
        return same_identity(self.gallery_pid[cols], self.query_pid[rows]) & ~self.is_junk(rows, cols)

    def match_pairs(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The true-match pairs of the given query rows, grouped by row, columns ascending."""
        pair_rows, pair_cols = self.same_pid_pairs(rows)
        keep = ~self.is_junk(pair_rows, pair_cols)
        return pair_rows[keep], pair_cols[keep]

    def num_matches(self) -> np.ndarray:
        """Number of true matches in the whole gallery for every query (R of the protocol)."""
        pair_rows, _ = self.match_pairs(np.arange(self.num_queries))
        return np.bincount(pair_rows, minlength=self.num_queries).astype(np.int64)


def _check_length(name: str, values: np.ndarray, expected: int) -> None:
    if len(values) != expected:
        raise EvaluationError(f"{name} has {len(values)} entries, expected {expected}")


def _self_columns(query_ids: np.ndarray, gallery_ids: np.ndarray) -> np.ndarray:
    """For each query, the gallery column holding the same id (-1 when absent)."""
    column_of = {str(item): col for col, item in enumerate(gallery_ids)}
    return np.fromiter((column_of.get(str(item), -1) for item in query_ids), dtype=np.int64, count=len(query_ids))
