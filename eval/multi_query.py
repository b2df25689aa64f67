"""Multi-query evaluation (Market-1501's ``gt_query`` style): query features pooled over the query
images of the same identity and camera.

Groups are the query images sharing (pid, camid) (pid alone when the data has no cameras). A
query with pid ≤ 0 (junk −1, distractor 0: different people under one label) is a group of its
own. Pooling, named ``multi-query: mean`` or ``multi-query: max``:

* ``mean``: the mean of the group's vectors, accumulated in float64 in the order of the members'
  ids (so any row order of the query set gives the same bits), divided by the group size and
  rounded once to float32;
* ``max``: the elementwise maximum (exact).

Vectors are pooled as given (no normalisation: the metric decides, cosine normalises after).
``per="query"`` (Market-1501's official multi-query numbers) keeps every query with its own
id, pid and camera and gives it its group's pooled vector; ``per="group"`` gives one query per
group, named by its first member id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from retrieval.eval.errors import EvaluationError

MULTI_QUERY_MODES = ("mean", "max")
MULTI_QUERY_PER = ("query", "group")


@dataclass(frozen=True)
class PooledQueries:
    """A query set after pooling: vectors, labels and ids of the resulting queries, and their groups."""

    vectors: np.ndarray  # (n, d) float32
    pid: np.ndarray  # (n,) int64
    camid: np.ndarray | None  # (n,) int64, or None without cameras
    ids: np.ndarray  # (n,) object: query ids
    group: np.ndarray  # (n,) int64: the group of each resulting query
    group_sizes: np.ndarray  # (groups,) int64
    mode: str
    per: str

    @property
    def name(self) -> str:
        return f"multi-query: {self.mode}"

    def to_dict(self) -> dict[str, Any]:
        """What the run record says about the pooling."""
        return {
            "multi_query": self.mode,
            "per": self.per,
            "groups": int(len(self.group_sizes)),
            "queries": int(len(self.ids)),
            "largest_group": int(self.group_sizes.max(initial=0)),
            "grouped_by": "pid, camid" if self.camid is not None else "pid",
            "pooling": "mean in float64 in member-id order" if self.mode == "mean" else "elementwise max",
        }


def pool_queries(vectors: np.ndarray, pid: np.ndarray, camid: np.ndarray | None = None,
                 ids: np.ndarray | None = None, *, mode: str = "mean", per: str = "query") -> PooledQueries:
    """Pool the query set's vectors over (pid, camid) groups; see the module notes for the rules."""
    if mode not in MULTI_QUERY_MODES:
        raise EvaluationError(f"unknown multi-query pooling {mode!r}; expected one of {', '.join(MULTI_QUERY_MODES)}")
    if per not in MULTI_QUERY_PER:
        raise EvaluationError(f"unknown multi-query output {per!r}; expected one of {', '.join(MULTI_QUERY_PER)}")
    vectors = np.asarray(vectors)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise EvaluationError(f"query vectors must be a non-empty 2-D array, got shape {vectors.shape}")
    n = len(vectors)
    pid = _labels(pid, n, "pid")
    camid = None if camid is None else _labels(camid, n, "camid")
    ids = np.array([f"q{i}" for i in range(n)], dtype=object) if ids is None else np.asarray(ids, dtype=object)
    if len(ids) != n:
        raise EvaluationError(f"{len(ids)} query ids given for {n} queries")
    unique, counts = np.unique(ids.astype(str), return_counts=True)
    repeated = np.flatnonzero(counts > 1)
    if len(repeated):
        first = repeated[0]
        raise EvaluationError(f"query ids must be unique: {str(unique[first])!r} appears {int(counts[first])} times")
    members = query_groups(pid, camid, ids)
    pooled = np.stack([_pool(vectors, rows, mode) for rows in members])
    sizes = np.array([len(rows) for rows in members], dtype=np.int64)
    if per == "group":
        first = np.array([rows[0] for rows in members], dtype=np.int64)
        return PooledQueries(pooled, pid[first], None if camid is None else camid[first], ids[first],
                             np.arange(len(members), dtype=np.int64), sizes, mode, per)
    group = np.empty(n, dtype=np.int64)
    for g, rows in enumerate(members):
        group[rows] = g
    return PooledQueries(pooled[group], pid, camid, ids, group, sizes, mode, per)


def query_groups(pid: np.ndarray, camid: np.ndarray | None, ids: np.ndarray) -> list[np.ndarray]:
    """Rows of each group, members in id order; groups ordered by their first member's id.

    The order depends on the ids alone, never on the rows' positions.
    """
    by_id = sorted(range(len(ids)), key=lambda r: str(ids[r]))
    groups: dict[Any, list[int]] = {}
    for row in by_id:
        label = int(pid[row])
        key = ("single", row) if label <= 0 else (label, None if camid is None else int(camid[row]))
        groups.setdefault(key, []).append(row)
    return [np.array(rows, dtype=np.int64) for rows in groups.values()]


def _pool(vectors: np.ndarray, rows: np.ndarray, mode: str) -> np.ndarray:
    if mode == "max":
        return vectors[rows].max(axis=0).astype(np.float32)
    total = np.zeros(vectors.shape[1], dtype=np.float64)
    for row in rows:  # a fixed order: elementwise float64 additions, no pairwise reduction
        total += vectors[row].astype(np.float64)
    return (total / len(rows)).astype(np.float32)


def _labels(values, n: int, name: str) -> np.ndarray:
    values = np.asarray(values)
    if len(values) != n:
        raise EvaluationError(f"query {name} has {len(values)} entries for {n} queries")
    return values.astype(np.int64)
