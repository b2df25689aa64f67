"""``Gallery``: the notebook object for searching, evaluating and looking at a gallery.

    g = Gallery.from_parquet("embeddings.parquet")        # the "gallery" split
    g.search(["q0000001", "q0000002"], k=5)               # query ids (other rows of the file) or vectors
    result = g.evaluate("query", rerank=True)             # the file's "query" split (re-ranking off by default)
    result.per_query; result.plot_cmc()
    g.show("q0000001", k=10)                              # the query and its ranked gallery images

Searching uses the index when the gallery comes from one (``Gallery.from_index``), else an exact
search (``indexes.knn.exact_knn_between``). Distances follow the metric: euclidean (default),
sqeuclidean, or cosine as 1 - cos; an index answers in its own metric (l2 -> euclidean,
cosine -> 1 - cos, ip -> -inner product).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from retrieval.api import EvaluationResult, as_frame, evaluation_options
from retrieval.eval.distances import EVAL_METRICS
from retrieval.indexes.distance import metric_from_name
from retrieval.errors import RetrieveError
from retrieval.labels import LabelledVectors, default_protocol, labelled, labels_between, pair_status

GALLERY_COMMAND = "retrieval.Gallery.evaluate (Python)"


class Gallery:
    """A searchable, evaluable gallery of labelled embeddings (optionally behind a faiss index)."""

    def __init__(self, gallery: LabelledVectors | None, *, metric: str = "euclidean", index: Any = None,
                 pool: Any = None, source: str = "", ids=None, pid=None, camid=None, paths=None,
                 split: str | None = None) -> None:
        self._gallery = gallery
        self.metric = metric
        self.index = index
        self._pool = pool  # every row of the source file: where query ids are looked up
        self.source = source
        self.split = split  # the split of the source file this gallery holds (None: every row)
        self.ids = np.asarray(ids if ids is not None else gallery.ids, dtype=object)
        self.pid = pid if pid is not None or gallery is None else gallery.pid
        self.camid = camid if camid is not None or gallery is None else gallery.camid
        self.paths = paths if paths is not None or gallery is None else gallery.path
        self._row_of = {str(item): row for row, item in enumerate(self.ids)}

    # ------------------------------------------------------------------------------ opening
    @classmethod
    def from_parquet(cls, path: Path | str, split: str | None = "gallery", metric: str = "euclidean") -> "Gallery":
        """The rows of one split of an embeddings file (``split=None``: every row)."""
        from retrieval.data.store import read_embeddings

        pool = read_embeddings(path)
        gallery = pool.by_split(split) if split is not None else pool
        return cls(labelled(gallery, name="gallery"), metric=metric, pool=pool, source=str(path), split=split)

    @classmethod
    def from_index(cls, index_dir: Path | str, embeddings: Path | str | None = None, device: str = "auto") -> "Gallery":
        """A gallery behind a built index; vectors, paths and queries come from its source embeddings file.

        ``embeddings`` defaults to the file recorded in the index manifest. Without a readable
        source the gallery can still be searched (with vectors) and evaluated in top-k mode.
        """
        from retrieval.data.store import read_embeddings
        from retrieval.indexes.store import load_index

        handle = load_index(index_dir, device=device)
        metric = metric_from_name(handle.metric).value  # l2 -> euclidean: one vocabulary
        rows = handle.rows
        ids = np.asarray(rows["id"].to_numpy(zero_copy_only=False), dtype=object)
        source = embeddings or handle.manifest.get("source")
        if source and Path(source).is_file():
            pool = read_embeddings(source)
            row_of = {item: row for row, item in enumerate(pool.ids.tolist())}
            missing = [item for item in ids.tolist() if item not in row_of]
            if missing:
                raise RetrieveError(f"{source}: {len(missing)} ids of index {index_dir} are not in it (first: {missing[:3]})")
            gallery = pool.select(np.array([row_of[item] for item in ids.tolist()], dtype=np.int64))
            handle.check_content_hash(gallery.content_hash())
            return cls(labelled(gallery, name="gallery"), metric=metric, index=handle, pool=pool, source=str(source),
                       split=handle.manifest.get("split"))
        from retrieval.jobs.evaluate import complete_int_column

        return cls(None, metric=metric, index=handle, source=str(index_dir), ids=ids,
                   pid=complete_int_column(rows, "pid"), camid=complete_int_column(rows, "camid"),
                   split=handle.manifest.get("split"))

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        where = f"index {self.index.path}" if self.index is not None else "exact search"
        return f"Gallery({len(self)} items, metric {self.metric}, {where}, from {self.source})"

    # ------------------------------------------------------------------------------ queries
    def _lookup(self, query_ids: Sequence[str]) -> LabelledVectors:
        if self._pool is None:
            raise RetrieveError("query ids need the source embeddings file; pass vectors, or open the gallery from Parquet")
        row_of = {item: row for row, item in enumerate(self._pool.ids.tolist())}
        missing = [str(q) for q in query_ids if str(q) not in row_of]
        if missing:
            raise RetrieveError(f"{self.source}: no item with id {', '.join(map(repr, missing[:5]))}")
        return labelled(self._pool.select(np.array([row_of[str(q)] for q in query_ids], dtype=np.int64)))

    def queries(self, queries: Any) -> LabelledVectors:
        """Resolve queries: a split name of the source file, an embeddings file, id(s), Embeddings, or vectors."""
        if isinstance(queries, LabelledVectors):
            return queries
        if isinstance(queries, (str, Path)):
            text = str(queries)
            pool_splits = set(self._pool.split.tolist()) if self._pool is not None and self._pool.split is not None else set()
            if text in pool_splits:
                return labelled(self._pool.by_split(text))
            if Path(text).suffix == ".parquet" and Path(text).is_file():
                from retrieval.data.store import read_embeddings

                emb = read_embeddings(text)
                return labelled(emb.by_split("query") if emb.split is not None and "query" in set(emb.split.tolist()) else emb)
            if self._pool is not None and text not in set(self._pool.ids.tolist()):
                raise RetrieveError(
                    f"{text!r} is not a split of {self.source} (splits: {', '.join(sorted(pool_splits)) or 'none'}), "
                    "an embeddings file, or an item id"
                )
            return self._lookup([text])
        if hasattr(queries, "vectors") and hasattr(queries, "ids"):
            return labelled(queries)
        if isinstance(queries, (list, tuple)) and queries and all(isinstance(q, str) for q in queries):
            return self._lookup(list(queries))
        array = np.asarray(queries)
        if array.dtype.kind in "OUS":
            return self._lookup([str(q) for q in array.tolist()])
        return labelled(array, name="queries")

    # ------------------------------------------------------------------------------- search
    def _nearest(self, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if not 1 <= k <= len(self):
            raise RetrieveError(f"k must be between 1 and the gallery size ({len(self)}), got {k}")
        if self.index is not None:
            distances, rows = self.index.search(np.ascontiguousarray(vectors, dtype=np.float32), k)
            return distances, rows
        from retrieval.indexes.knn import exact_knn_between

        if self.metric not in EVAL_METRICS:
            raise RetrieveError(f"unknown metric {self.metric!r}; expected one of {', '.join(EVAL_METRICS)}")
        distances, rows = exact_knn_between(vectors, self._gallery.vectors, k, metric=self.metric)
        return distances, rows

    def search_table(self, queries: Any, k: int = 10) -> pa.Table:
        """The k nearest gallery items of each query as an Arrow table (query_id, rank, gallery_id, distance, ...)."""
        resolved = self.queries(queries)
        distances, rows = self._nearest(resolved.vectors, k)
        n = len(resolved.ids)
        flat_rows = rows.reshape(-1)
        columns = {
            "query_id": pa.array(np.repeat(resolved.ids.astype(str), k).tolist(), pa.string()),
            "rank": pa.array(np.tile(np.arange(1, k + 1), n), pa.int64()),
            "gallery_id": pa.array(self.ids[flat_rows].astype(str).tolist(), pa.string()),
            "distance": pa.array(distances.reshape(-1).astype(np.float64)),
        }
        if self.pid is not None:
            columns["pid"] = pa.array(np.asarray(self.pid)[flat_rows], pa.int64())
        if self.camid is not None:
            columns["camid"] = pa.array(np.asarray(self.camid)[flat_rows], pa.int64())
        if self.paths is not None:
            columns["path"] = pa.array([None if p is None else str(p) for p in np.asarray(self.paths, dtype=object)[flat_rows]], pa.string())
        return pa.table(columns)

    def search(self, queries: Any, k: int = 10):
        """The k nearest gallery items of each query: a pandas DataFrame (an Arrow table without pandas).

        ``queries``: query id(s) from the source file, a (d,) or (n, d) array, or Embeddings.
        """
        return as_frame(self.search_table(queries, k))

    # ----------------------------------------------------------------------------- evaluate
    def evaluate(self, queries: Any = "query", rerank: bool = False, **options) -> EvaluationResult:
        """Evaluate queries against this gallery through the evaluate job (``retrieval.evaluate`` options:
        protocol, ap_variant, junk_pids, k1, k2, lambda_, max_rank, device ...). Re-ranking is off
        unless ``rerank=True`` (as everywhere). A gallery behind an index without vectors is
        evaluated in top-k mode (``k`` option, default 100; AP labelled mAP@k) and cannot be re-ranked.
        """
        from retrieval.jobs.evaluate import evaluate as run_evaluation

        resolved = self.queries(queries)
        if self._gallery is None:
            return self._evaluate_topk(resolved, rerank=rerank, **options)
        options.setdefault("metric", self.metric if self.metric in EVAL_METRICS else "euclidean")
        self._check_identities(resolved)
        evaluation = run_evaluation(resolved, self._gallery, evaluation_options(resolved, self._gallery, rerank=rerank,
                                                                                **options),
                                    splits=self._splits(queries), inputs=self._inputs())
        return EvaluationResult(evaluation, command=GALLERY_COMMAND)

    def _check_identities(self, queries: LabelledVectors) -> None:
        if queries.pid is None or self.pid is None:
            raise RetrieveError("evaluation needs identities (pid) for the queries and the gallery")

    def _splits(self, queries: Any) -> dict[str, str | None]:
        """The splits taken, as a run records them: the query split when named, the gallery's split."""
        pool_splits = set() if self._pool is None or self._pool.split is None else set(self._pool.split.tolist())
        query_split = queries if isinstance(queries, str) and queries in pool_splits else None
        return {"query_split": query_split, "gallery_split": self.split}

    def _inputs(self) -> dict[str, Any]:
        """run.json inputs: the source file (absolute and as given) and its content hash."""
        from retrieval.run_schema import input_paths

        file = self.source if self._pool is not None else None
        content_hash = self._pool.content_hash() if self._pool is not None else None
        index = None if self.index is None else self.index.path
        return {**input_paths(embeddings=file), "content_hash": content_hash, **input_paths(gallery=None),
                **input_paths(index=index)}

    def _evaluate_topk(self, queries: LabelledVectors, k: int = 100, rerank: bool = False, **options) -> EvaluationResult:
        from retrieval.jobs.evaluate import IndexOptions
        from retrieval.jobs.evaluate import evaluate as run_evaluation

        if rerank:
            raise RetrieveError("re-ranking needs the gallery vectors: open the index with its embeddings file, or rerank=False")
        self._check_identities(queries)
        options.setdefault("metric", None)
        index = IndexOptions(path=Path(self.index.path), k=min(k, len(self)))
        evaluation = run_evaluation(queries, None, evaluation_options(queries, self._labels(), index=index, **options),
                                    index_handle=self.index, splits=self._splits(queries), inputs=self._inputs())
        return EvaluationResult(evaluation, command=GALLERY_COMMAND)

    def _labels(self) -> LabelledVectors:
        """The gallery's ids and labels (vectors when this gallery has them)."""
        if self._gallery is not None:
            return self._gallery
        return LabelledVectors(np.empty((len(self), 0), np.float32), self.ids, self.pid, self.camid,
                               source=self.source, camid_missing=0 if self.camid is not None else len(self))

    # --------------------------------------------------------------------------------- show
    def ranked_strip(self, query_id: Any, k: int = 10, junk_pids: Sequence[int] = (-1,), protocol: str | None = None):
        """The query and its k nearest gallery items with their status and image paths (a ``plots.Strip``).

        The status follows the protocol's junk/match rule (``retrieval.labels``): ``protocol``
        defaults as in ``evaluate`` (market with cameras, leave-one-out when the query is a gallery
        item, else no-camera); "unlabelled" when identities are unknown.
        """
        from retrieval.plots import RankedItem, Strip

        query = self.queries([query_id] if isinstance(query_id, str) else query_id)
        if len(query.ids) != 1:
            raise RetrieveError(f"show draws one query at a time, got {len(query.ids)}")
        distances, rows = self._nearest(query.vectors, k)
        statuses = self._statuses(query, rows[0], junk_pids, protocol)
        paths = None if self.paths is None else np.asarray(self.paths, dtype=object)
        items = [
            RankedItem(item_id=str(self.ids[row]), distance=float(distance), status=status,
                       image=None if paths is None or paths[row] is None else str(paths[row]))
            for distance, row, status in zip(distances[0], rows[0], statuses)
        ]
        query_image = None if query.path is None or query.path[0] is None else str(query.path[0])
        caption = "" if query.pid is None else f"pid {int(query.pid[0])}" + (
            "" if query.camid is None else f", cam {int(query.camid[0])}")
        return Strip(query_id=str(query.ids[0]), items=items, query_image=query_image, caption=caption)

    def _statuses(self, query: LabelledVectors, rows: np.ndarray, junk_pids: Sequence[int],
                  protocol: str | None) -> list[str]:
        gallery = self._labels()
        if query.pid is None or gallery.pid is None:
            return ["unlabelled"] * len(rows)
        labels = labels_between(query, gallery, protocol or default_protocol(query, gallery), junk_pids)
        return pair_status(labels, np.zeros(len(rows), np.int64), rows)

    def show(self, query_id: Any, k: int = 10, junk_pids: Sequence[int] = (-1,), protocol: str | None = None):
        """Draw the query and its k nearest gallery items, framed match / non-match / junk (a Figure).

        Junk and match follow the protocol (``ranked_strip``): under market a junk identity and the
        query's identity on its own camera are junk; under leave-one-out the query itself is junk.
        Images come from the ``path`` column; without images each tile shows the id and distance.
        """
        from retrieval.plots import ranked_strips_figure

        strip = self.ranked_strip(query_id, k, junk_pids, protocol)
        return ranked_strips_figure([strip], title=f"{strip.query_id}: top {k} ({self.metric})")
