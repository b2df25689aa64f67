"""The search job: query an index, label the answers by a protocol, write the results and a run.

The results carry ``is_match`` / ``is_junk`` flags decided by ``retrieval.labels`` (the same
``RankingLabels`` rule as evaluation) under a named protocol, recorded in the run's parameters:
by default ``market`` when queries and gallery rows all have cameras, ``leave-one-out`` when the
queries are gallery items, else ``no-camera``. Without identities on both sides the flags are null.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from retrieval.common.atomic import check_output
from retrieval.common.progress import ProgressCallback, no_progress
from retrieval.errors import OptionError
from retrieval.jobs.evaluate import complete_int_column
from retrieval.jobs.inputs import QuerySet, query_set
from retrieval.labels import DEFAULT_JUNK_PIDS, LabelledVectors, check_labels, default_protocol, ranking_labels
from retrieval.run_schema import SEARCH_RANKINGS_SCHEMA, SEARCH_RESULTS_SCHEMA, input_paths, run_record


@dataclass(frozen=True)
class SearchOptions:
    k: int = 10
    nprobe: int | None = None
    ef_search: int | None = None
    split: str | None = None  # default: query when the file has splits, else every row
    device: str = "auto"
    protocol: str | None = None  # None: chosen by the data (see the module docstring)
    junk_pids: tuple[int, ...] = DEFAULT_JUNK_PIDS

    def check(self) -> None:
        for value, option in ((self.k, "--k"), (self.nprobe, "--nprobe"), (self.ef_search, "--ef-search")):
            if value is not None and value < 1:
                raise OptionError(f"must be at least 1, got {value}", option)


@dataclass(frozen=True)
class Search:
    handle: Any  # indexes.handle.IndexHandle
    queries: LabelledVectors
    split: str | None
    found: Any  # indexes.search.SearchResult
    rankings: pa.Table  # SEARCH_RANKINGS_SCHEMA
    protocol: str | None  # the protocol of the flags; None when they are unknown
    options: SearchOptions
    inputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    cluster: dict | None = None  # where it ran, when on a Ray cluster (run.json "cluster")

    @property
    def results(self) -> pa.Table:
        """What ``--out`` writes: the answers without the flags."""
        return self.rankings.select(SEARCH_RESULTS_SCHEMA.names)

    def summary(self, run_dir: Path, out: Path | None) -> dict[str, Any]:
        m = self.handle.manifest
        return {
            "kind": "search",
            "index": {"path": str(self.handle.path), "factory": m["factory"], "metric": m["metric"], "dim": m["dim"],
                      "count": m["count"], "content_hash": m.get("content_hash")},
            "num_queries": len(self.queries),
            "k": self.options.k,
            "params": self.found.params,
            "protocol": self.protocol,
            "queries_per_second": len(self.queries) / max(self.timings["search"], 1e-9),
            "out": None if out is None else str(out),
            "run_dir": str(run_dir),
            "notes": list(self.found.notes),
        }

    def parameters(self) -> dict[str, Any]:
        params = self.found.params
        return {"k": self.options.k, "nprobe": params["nprobe"], "ef_search": params["ef_search"], "split": self.split,
                "device": self.options.device, "backend": params["backend"], "protocol": self.protocol,
                "junk_pids": list(self.options.junk_pids)}


def search(index_dir: Path, queries_file: Path | QuerySet, options: SearchOptions, out: Path | None = None,
           overwrite: bool = False, progress: ProgressCallback | None = None, cluster=None) -> Search:
    """Search the index with queries (an embeddings file, or a ``jobs.inputs.QuerySet``: .npy / .npz,
    one vector); ``out`` (checked first) is not written here.

    ``cluster``: a sharded index's shards are searched by actors there (``retrieval.distributed.index``).
    """
    from retrieval.distributed.index import open_index

    options.check()
    if out is not None:
        check_output(out, overwrite=overwrite)
    progress = progress or no_progress
    started = time.perf_counter()
    handle = open_index(index_dir, device=options.device, cluster=cluster, progress=progress)
    given = queries_file if isinstance(queries_file, QuerySet) else query_set(queries_file, split=options.split)
    queries, split = given.queries, given.split
    timings = {"load": time.perf_counter() - started}
    started = time.perf_counter()
    found = search_with_progress(handle, queries.vectors, options, progress)
    timings["search"] = time.perf_counter() - started
    rankings, protocol = rankings_table(handle, queries, found.distances, found.rows, options)
    inputs = {**given.inputs, "gallery_content_hash": handle.manifest.get("content_hash"), **input_paths(index=index_dir)}
    described = None if cluster is None else {**cluster.describe(), "shards": len(handle.manifest.get("shards") or [1])}
    return Search(handle, queries, split, found, rankings, protocol, options, inputs, timings, described)


SEARCH_BATCH_ROWS = 512  # queries per call: a progress step, and still a full BLAS / faiss batch


def search_with_progress(handle, vectors: np.ndarray, options: SearchOptions, progress: ProgressCallback,
                         batch_rows: int = SEARCH_BATCH_ROWS):
    """``handle.search_detailed`` over batches of queries, reporting each batch (the same result:
    every query is searched on its own, whatever batch it is in)."""
    from retrieval.indexes.search import SearchResult

    n = len(vectors)
    progress("searching the index", 0, n)
    parts = []
    for start in range(0, max(n, 1), batch_rows):
        parts.append(handle.search_detailed(vectors[start:start + batch_rows], options.k,
                                            nprobe=options.nprobe, ef_search=options.ef_search))
        progress("searching the index", min(start + batch_rows, n), n)
    if len(parts) == 1:
        return parts[0]
    return SearchResult(np.concatenate([p.distances for p in parts]), np.concatenate([p.rows for p in parts]),
                        parts[0].params, merge_counted_notes(note for part in parts for note in part.notes))


def merge_counted_notes(notes) -> tuple[str, ...]:
    """One note per wording: "12 queries …" and "7 queries …" of two batches become "19 queries …"."""
    counts: dict[str, int | None] = {}
    for note in notes:
        head, _, tail = note.partition(" ")
        if head.isdigit():
            counts[tail] = (counts.get(tail) or 0) + int(head)
        else:
            counts.setdefault(note, None)
    return tuple(text if count is None else f"{count} {text}" for text, count in counts.items())


def gallery_of_index(handle) -> LabelledVectors:
    """The index's rows as labelled (vector-less) gallery items: ids, pid and camid when complete."""
    rows = handle.rows
    return LabelledVectors(
        vectors=np.empty((handle.count, 0), np.float32), ids=handle.row_ids(np.arange(handle.count)),
        pid=complete_int_column(rows, "pid"), camid=complete_int_column(rows, "camid"), source=str(handle.path),
        camid_missing=0 if complete_int_column(rows, "camid") is not None else handle.count,
    )


def rankings_table(handle, queries: LabelledVectors, distances: np.ndarray, rows: np.ndarray,
                   options: SearchOptions) -> tuple[pa.Table, str | None]:
    """The answers with gallery labels and the protocol's flags (null when identities are unknown)."""
    n, k = rows.shape
    flat = rows.ravel()
    gallery_rows = handle.rows
    table = {
        "query_id": pa.array(np.repeat(np.asarray(queries.ids, dtype=object), k).astype(str), pa.string()),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)),
        "gallery_id": pa.array(handle.row_ids(flat).astype(str), pa.string()),
        "distance": pa.array(distances.ravel().astype(np.float32)),
        "gallery_pid": gallery_rows.column("pid").take(pa.array(flat)).cast(pa.int64()),
        "gallery_camid": gallery_rows.column("camid").take(pa.array(flat)).cast(pa.int64()),
    }
    match, junk, protocol = _flags(handle, queries, rows, options)
    table["is_match"] = pa.array(match, pa.bool_()) if match is not None else pa.nulls(n * k, pa.bool_())
    table["is_junk"] = pa.array(junk, pa.bool_()) if junk is not None else pa.nulls(n * k, pa.bool_())
    return pa.table(table, schema=SEARCH_RANKINGS_SCHEMA), protocol


def _flags(handle, queries: LabelledVectors, rows: np.ndarray, options: SearchOptions):
    gallery = gallery_of_index(handle)
    if queries.pid is None or gallery.pid is None:
        if options.protocol is not None:
            raise OptionError(f"--protocol {options.protocol}: the queries or the index's rows carry no pid", "--protocol")
        return None, None, None
    protocol = options.protocol or default_protocol(queries, gallery)
    check_labels([("queries", queries), ("index rows", gallery)], protocol)
    labels = ranking_labels(queries.pid, gallery.pid, queries.camid, gallery.camid, protocol=protocol,
                            junk_pids=options.junk_pids, query_ids=queries.ids, gallery_ids=gallery.ids)
    query_rows = np.repeat(np.arange(rows.shape[0]), rows.shape[1])
    cols = rows.ravel()
    return labels.is_match(query_rows, cols), labels.is_junk(query_rows, cols), protocol


def faiss_version() -> str:
    import faiss

    return faiss.__version__


def save(outcome: Search, run_dir: Path, out: Path | None, *, command: str, overwrite: bool) -> dict[str, Any]:
    """Write ``--out`` (exclusive unless ``overwrite``) and the run folder; returns the ``--json`` object."""
    from retrieval.data.writer import write_parquet_atomically
    from retrieval.runs import write_run

    if out is not None:
        write_parquet_atomically(outcome.results, out, overwrite=overwrite)
    summary = outcome.summary(run_dir, out)
    record = run_record("search", command, outcome.parameters(), outcome.inputs, outcome.timings, summary,
                        cluster=outcome.cluster)
    record["versions"]["faiss"] = faiss_version()
    write_run(run_dir, record, {"rankings": outcome.rankings}, overwrite=False)
    return summary
