"""1:N enrolment and templates (protocols.md §6).

* Gallery items with a junk pid (default −1) are not enrolled. Every other pid > 0 is one
  identity; each gallery item with pid 0 (an unknown person) is an identity of its own that is
  never anyone's mate.
* Identities are numbered by their first gallery row, so "ties by the identity's first gallery
  row" is "ties by identity number" everywhere.
* Templates: ``item`` — one column per enrolled item, an identity scoring as its best item;
  ``mean`` — one column per identity, the L2-normalised sum of its L2-normalised items (the
  common IJB practice; the sum is correctly rounded to float32 before normalising, see
  ``indexes.group_sums``, so it does not depend on the gallery's row order).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import numpy as np

from retrieval.eval.errors import EvaluationError
from retrieval.indexes.group_sums import exact_group_sums
from retrieval.eval.protocol import DISTRACTOR_PID
from retrieval.indexes.distance import normalise
from retrieval.common.text import few
from retrieval.indexes.errors import FaissIndexError

TEMPLATES = ("item", "mean")


def check_pids(pid: np.ndarray, junk_pids: tuple[int, ...], what: str) -> np.ndarray:
    """int64 pids; a negative pid outside the junk set is an error naming the rows."""
    pid = np.asarray(pid, dtype=np.int64)
    bad = np.flatnonzero((pid < 0) & ~np.isin(pid, junk_pids))
    if len(bad):
        raise EvaluationError(
            f"{what} pid {int(pid[bad[0]])} (rows {few(bad)}) is negative but not a junk pid "
            f"({', '.join(map(str, junk_pids))}): pids are > 0 (a person), 0 (unknown) or junk"
        )
    return pid


@dataclass(frozen=True)
class Enrolment:
    """The enrolled identities of a gallery, numbered by first gallery row."""

    rows: np.ndarray  # (E,) enrolled gallery rows, ascending
    identity_of_row: np.ndarray  # (E,) identity number of each enrolled row
    identity_pid: np.ndarray  # (I,) pid of each identity (0: an unknown person's item)
    identity_first_row: np.ndarray  # (I,) its first gallery row (ascending)
    num_gallery: int
    junk_pids: tuple[int, ...]

    @property
    def num_identities(self) -> int:
        return len(self.identity_pid)

    def mate_identity(self, probe_pid: np.ndarray) -> np.ndarray:
        """(P,) identity number of each probe's mate; −1 when non-mated (pid 0, not enrolled, junk)."""
        probe_pid = np.asarray(probe_pid, dtype=np.int64)
        numbers = np.flatnonzero(self.identity_pid > 0)
        numbers = numbers[np.argsort(self.identity_pid[numbers])]
        pids = self.identity_pid[numbers]
        if len(pids) == 0:
            return np.full(len(probe_pid), -1, np.int64)
        where = np.minimum(np.searchsorted(pids, probe_pid), len(pids) - 1)
        found = (pids[where] == probe_pid) & (probe_pid > 0)
        return np.where(found, numbers[where], -1).astype(np.int64)


def enrol(gallery_pid: np.ndarray, junk_pids: Iterable[int] = (-1,)) -> Enrolment:
    junk = tuple(sorted({int(p) for p in junk_pids}))
    gallery_pid = check_pids(gallery_pid, junk, "gallery")
    rows = np.flatnonzero(~np.isin(gallery_pid, junk))
    pid = gallery_pid[rows]
    person = pid != DISTRACTOR_PID
    pids, first = np.unique(pid[person], return_index=True)  # np.unique: first occurrence in row order
    first_row = np.concatenate([rows[person][first], rows[~person]])
    identity_pid = np.concatenate([pids, np.zeros(int((~person).sum()), np.int64)])
    order = np.argsort(first_row, kind="stable")
    number_of = np.empty(len(order), np.int64)
    number_of[order] = np.arange(len(order))
    identity_of_row = np.empty(len(rows), np.int64)
    identity_of_row[person] = number_of[np.searchsorted(pids, pid[person])]
    identity_of_row[~person] = number_of[len(pids) + np.arange(int((~person).sum()))]
    return Enrolment(rows, identity_of_row, identity_pid[order], first_row[order], len(gallery_pid), junk)


@dataclass(frozen=True)
class Templates:
    """What the probes are scored against: one column per item or per identity."""

    name: str  # "item" | "mean"
    vectors: np.ndarray  # (T, d) float32
    identity: np.ndarray  # (T,) identity number of each column (ascending for "mean")
    gallery_row: np.ndarray  # (T,) the gallery row a column stands for (mean: the identity's first row)


def build_templates(gallery: np.ndarray, enrolment: Enrolment, template: str = "item") -> Templates:
    if template not in TEMPLATES:
        raise EvaluationError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATES)}")
    if len(gallery) != enrolment.num_gallery:
        raise EvaluationError(f"gallery has {len(gallery)} vectors for {enrolment.num_gallery} pids")
    if template == "item":
        all_rows = len(enrolment.rows) == enrolment.num_gallery
        vectors = gallery if all_rows else gallery[enrolment.rows]
        return Templates("item", np.ascontiguousarray(vectors, np.float32), enrolment.identity_of_row, enrolment.rows)
    items = _normalised(np.asarray(gallery, np.float32)[enrolment.rows], enrolment.rows, "gallery")
    sums = exact_group_sums(items, enrolment.identity_of_row, enrolment.num_identities)
    vectors = _normalised(sums, enrolment.identity_first_row, "mean template of the identity at gallery")
    return Templates("mean", vectors, np.arange(enrolment.num_identities), enrolment.identity_first_row)


def _normalised(x: np.ndarray, rows: np.ndarray, what: str) -> np.ndarray:
    zero = np.flatnonzero(~np.any(x != 0, axis=1))
    if len(zero):
        raise EvaluationError(f"{what} rows {few(rows[zero])}: zero vectors cannot be L2-normalised")
    try:
        return normalise(x, what)
    except FaissIndexError as error:
        raise EvaluationError(str(error)) from None
