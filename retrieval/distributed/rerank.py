"""k-reciprocal re-ranking on Ray: the exact neighbourhood graph from shard tasks, then exact ranks.

The items are the queries followed by the gallery (as in ``eval.rerank``), held as shards in the
object store: the queries (put by the driver) and one shard per gallery part (read by a task).

1. ``knn_task`` (one per item shard): the shard's rows against every graph item, streamed shard
   by shard: each shard's exact top k1 + 1 and exact row maximum (``indexes.knn.exact_knn_between``),
   merged by (exact key, item). Exact keys make the lists those of one process.
2. The sparse steps run on the driver (``eval.rerank.graph_from_neighbours``: O(N·k) memory); the
   few pair distances they need beyond the lists come from ``pair_keys_task``.
3. Ranking: the two rounds of ``distributed.ranking`` with re-ranked distances, each gallery part
   given its rows of the graph.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from retrieval.common.progress import ProgressCallback
from retrieval.distributed.cluster import import_ray
from retrieval.distributed.shards import GalleryView, load_part
from retrieval.distributed.tasks import fault_point, gather, put, remote
from retrieval.errors import OptionError
from retrieval.labels import LabelledVectors


@dataclass(frozen=True)
class ItemShard:
    """One shard of the graph's items: vectors prepared for the metric and which are in the graph."""

    vectors: np.ndarray
    in_graph: np.ndarray

    @property
    def members(self) -> np.ndarray:
        return self.vectors[self.in_graph]


@dataclass(frozen=True)
class SharedGraph:
    """The graph's query rows, sent to every gallery shard of the ranking rounds."""

    query_rows: sp.csr_matrix
    query_row_max: np.ndarray


def item_shard(labelled: LabelledVectors, metric: str, exclude_pids: tuple[int, ...] | None) -> ItemShard:
    from retrieval.indexes.distance import normalise

    vectors = np.ascontiguousarray(labelled.vectors, dtype=np.float32)
    if metric == "cosine" and len(vectors):
        vectors = normalise(vectors)
    in_graph = np.ones(len(vectors), bool) if exclude_pids is None else ~np.isin(labelled.pid, exclude_pids)
    return ItemShard(vectors, in_graph)


def load_items_task(part, split, metric: str, exclude_pids):
    """A gallery part as an item shard (a Ray task with two results: which of its items are in the
    graph, small, for the driver; then the shard, left in the object store)."""
    fault_point("load")
    shard = item_shard(load_part(part, split), metric, exclude_pids)
    return shard.in_graph, shard


def knn_task(rows: ItemShard, start: int, stop: int, bases: list, member_offsets: list[int], k: int):
    """Exact k nearest graph items and exact row maximum of rows ``start .. stop`` of one item shard.

    ``bases``: every item shard's object reference (a list, so Ray passes them unresolved and the
    task holds one shard at a time); ``member_offsets``: each shard's first graph item."""
    from retrieval.indexes.knn import exact_knn_between

    fault_point("neighbours")
    ray = import_ray()
    block = rows.vectors[start:stop]
    n = len(block)
    best_keys = np.full((n, 0), np.inf, np.float32)
    best_items = np.zeros((n, 0), np.int64)
    row_max = np.full(n, -np.inf)
    for base_ref, offset in zip(bases, member_offsets):
        base = ray.get(base_ref).members
        if len(base) == 0 or n == 0:
            continue
        keys, items, maxima = exact_knn_between(block, base, min(k, len(base)), metric="sqeuclidean",
                                                with_row_max=True)
        best_keys, best_items = _first_k(np.hstack([best_keys, keys]), np.hstack([best_items, items + offset]), k)
        np.maximum(row_max, maxima, out=row_max)
        del base
    return best_keys, best_items, row_max


def _first_k(keys: np.ndarray, items: np.ndarray, k: int):
    order = np.lexsort((items, keys), axis=1)[:, :k]
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(items, order, axis=1)


def pair_keys_task(rows: ItemShard, bases: list, member_offsets: list[int], local_rows: np.ndarray,
                   cols: np.ndarray) -> np.ndarray:
    """Exact squared distances of graph pairs (a member of this shard, any member) as float64."""
    from retrieval.indexes.distance import Metric, exact_pair_keys

    fault_point("pairs")
    ray = import_ray()
    mine = rows.members
    out = np.empty(len(cols), np.float64)
    shard_of = np.searchsorted(member_offsets, cols, side="right") - 1
    for s in np.unique(shard_of):
        which = np.flatnonzero(shard_of == s)
        base = ray.get(bases[s]).members
        out[which] = exact_pair_keys(mine, local_rows[which], base, cols[which] - member_offsets[s],
                                     Metric.SQEUCLIDEAN).astype(np.float64)
    return out


@dataclass
class ItemNeighbours:
    """Exact k-NN lists of every item (the queries, if any, then the gallery) among the graph items."""

    keys: np.ndarray  # (N, k) float32 exact squared distances, ascending, ties by item
    items: np.ndarray  # (N, k) int64 graph-item indices (into the items in the graph, in item order)
    row_max: np.ndarray  # (N,) float64 exact largest squared distance to the graph items
    in_graph: np.ndarray  # (N,) bool
    items_per_shard: np.ndarray  # rows of each item shard (queries first, when given)
    shards: list  # object references of the item shards (for more pair distances: ``pair_keys``)
    member_offsets: list[int]  # first graph item of each shard

    def pair_keys(self, progress: ProgressCallback | None = None) -> "_PairKeys":
        return _PairKeys(self.shards, self.member_offsets, progress)


def neighbours_on_cluster(queries: LabelledVectors | None, view: GalleryView, k: int, *, metric: str = "euclidean",
                          exclude_pids: tuple[int, ...] | None = None,
                          progress: ProgressCallback | None = None) -> ItemNeighbours:
    """The exact k nearest graph items of every item, on the cluster (step 2 of re-ranking).

    The items are ``queries`` (None: none) then the gallery of ``view``; with ``exclude_pids`` the
    items of those identities are in no one's list (their own lists and maxima still computed).
    Also the hook for jobs that need a k-NN graph of a sharded gallery (e.g. clustering).
    """
    load = remote(load_items_task, num_returns=2)
    loaded = [load.remote(part, view.split, metric, exclude_pids) for part in view.parts]
    masks = gather([mask for mask, _ in loaded], progress, "neighbours: reading shards")
    shards = [shard for _, shard in loaded]
    if queries is not None:
        own = item_shard(queries, metric, exclude_pids)
        shards = [put(own)] + shards
        masks = [own.in_graph] + list(masks)
    items = np.array([len(m) for m in masks])
    members = np.array([int(m.sum()) for m in masks])
    if k > int(members.sum()):
        raise OptionError(f"k1 must be smaller than the {int(members.sum())} items of the re-ranking graph, "
                          f"got {k - 1}", "--k1")
    member_offsets = [int(x) for x in np.concatenate([[0], np.cumsum(members)[:-1]])]
    knn = remote(knn_task)
    lists = gather([knn.remote(shards[s], a, b, shards, member_offsets, k) for s, a, b in row_blocks(items)],
                   progress, "neighbours: row blocks")
    in_graph = np.concatenate(masks) if masks else np.zeros(0, bool)
    return ItemNeighbours(np.concatenate([l[0] for l in lists]), np.concatenate([l[1] for l in lists]),
                          np.concatenate([l[2] for l in lists]), in_graph, items, shards, member_offsets)


def row_blocks(items_per_shard: np.ndarray, per_cpu: int = 2) -> list[tuple[int, int, int]]:
    """(shard, start, stop) row blocks of about equal size in item order: ``per_cpu`` per CPU of the
    cluster at least, so that no task waits for one large shard."""
    cpus = max(1, int(import_ray().cluster_resources().get("CPU", 1)))
    target = max(1, -(-int(items_per_shard.sum()) // (per_cpu * cpus)))
    blocks = []
    for shard, count in enumerate(items_per_shard.tolist()):
        pieces = max(1, -(-count // target))
        edges = np.linspace(0, count, pieces + 1).round().astype(int)
        blocks += [(shard, int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    return blocks


@dataclass
class GraphOnCluster:
    """The graph and what the ranking rounds need of it."""

    shared: SharedGraph
    gallery_rows: list[sp.csr_matrix]  # per gallery part, its items' rows of V


def build_graph(queries: LabelledVectors, view: GalleryView, *, k1: int, k2: int, power: int, metric: str,
                exclude_pids: tuple[int, ...] | None, progress: ProgressCallback | None = None) -> GraphOnCluster:
    """Steps 1–6 of re-ranking over the cluster (see the module docstring)."""
    from retrieval.eval.rerank import graph_from_neighbours

    found = neighbours_on_cluster(queries, view, k1 + 1, metric=metric, exclude_pids=exclude_pids, progress=progress)
    members = np.flatnonzero(found.in_graph)
    n_items = int(found.items_per_shard.sum())
    graph = graph_from_neighbours(
        found.items[members], found.keys[members], found.row_max[members], members, n_items, k1, k2, power=power,
        pair_keys=found.pair_keys(progress), row_max_left_out=np.maximum(found.row_max[~found.in_graph], 0.0),
        progress=progress,
    )
    num_queries = len(queries)
    offsets = np.concatenate([[num_queries], num_queries + np.cumsum(found.items_per_shard[1:])])
    rows = [graph.v[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    return GraphOnCluster(SharedGraph(graph.v[:num_queries], graph.row_max[:num_queries]), rows)


class _PairKeys:
    """``pair_keys(rows, cols)`` for ``graph_from_neighbours``: one task per shard of the rows."""

    def __init__(self, shards: list, member_offsets: list[int], progress: ProgressCallback | None):
        self.shards, self.offsets, self.progress = shards, member_offsets, progress

    def __call__(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), np.float64)
        shard_of = np.searchsorted(self.offsets, rows, side="right") - 1
        task = remote(pair_keys_task)
        groups = [(s, np.flatnonzero(shard_of == s)) for s in range(len(self.shards))]
        groups = [(s, which) for s, which in groups if len(which)]
        refs = [task.remote(self.shards[s], self.shards, self.offsets, rows[which] - self.offsets[s], cols[which])
                for s, which in groups]
        for (_, which), keys in zip(groups, gather(refs, self.progress, "re-ranking: pair distances, shards")):
            out[which] = keys
        return out
