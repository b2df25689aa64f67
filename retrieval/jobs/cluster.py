"""The cluster job: N:N clustering (protocols §7) of one embeddings file, at a threshold or over a
sweep, scored when the items carry pids, and its run folder (kind ``cluster``).

Rows: the ``--split`` asked, else every row. k-NN lists (rank-order, components): the engine's
exact k-NN (``--kind flat``), its IVF lists (``--kind ivf``), or a built index (``--index DIR``,
built from exactly these rows for the same metric).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from retrieval.common.progress import ProgressCallback, no_progress
from retrieval.errors import OptionError
from retrieval.labels import DEFAULT_JUNK_PIDS, LabelledVectors, labelled
from retrieval.run_schema import clustering_tables, input_paths, run_record

METHODS = ("rank-order", "components", "agglomerative", "dbscan")
METRICS = ("cosine", "euclidean")
KINDS = ("flat", "ivf")
LIST_METHODS = ("rank-order", "components")
DEFAULT_K = 20


@dataclass(frozen=True)
class ClusterOptions:
    method: str = "rank-order"
    k: int = DEFAULT_K
    threshold: float | None = None
    sweep: tuple[float, ...] | str | None = None  # "auto" or thresholds; neither given: "auto"
    metric: str = "cosine"
    index: Path | None = None
    kind: str = "flat"
    split: str | None = None
    junk_pids: tuple[int, ...] = DEFAULT_JUNK_PIDS
    device: str = "auto"

    @property
    def thresholds(self) -> tuple[float, ...] | str:
        if self.threshold is not None:
            return (self.threshold,)
        return self.sweep if self.sweep is not None else "auto"

    def check(self) -> None:
        from retrieval.eval.clustering import ThresholdError, check_threshold

        if self.method not in METHODS:
            raise OptionError(f"unknown method {self.method!r}; expected one of {', '.join(METHODS)}", "--method")
        if self.metric not in METRICS:
            raise OptionError(f"unknown metric {self.metric!r}; expected one of {', '.join(METRICS)}", "--metric")
        if self.kind not in KINDS:
            raise OptionError(f"unknown kind {self.kind!r}; expected one of {', '.join(KINDS)}", "--kind")
        if self.k < 1:
            raise OptionError(f"k must be at least 1, got {self.k}", "--k")
        if self.threshold is not None and self.sweep is not None:
            raise OptionError("give --threshold or --sweep, not both", "--threshold")
        if self.index is not None and self.method not in LIST_METHODS:
            raise OptionError(f"{self.method} works on the whole distance matrix, not on an index's lists; "
                              "drop --index or use --method rank-order or components", "--index")
        option = "--threshold" if self.threshold is not None else "--sweep"
        for t in ([] if self.thresholds == "auto" else self.thresholds):
            try:
                check_threshold(self.method, self.metric, self.k, t)
            except ThresholdError as error:
                raise OptionError(str(error), option) from None

    def parameters(self, split: str | None, neighbours: dict) -> dict[str, Any]:
        lists = self.method in LIST_METHODS
        return {
            "split": split, "method": self.method, "metric": self.metric, "k": self.k if lists else None,
            "threshold": self.threshold, "sweep": list(self.sweep) if isinstance(self.sweep, tuple) else self.sweep,
            "index": None if self.index is None else str(Path(self.index).absolute()),
            "kind": None if self.index is not None or not lists else self.kind, "neighbours": neighbours,
            "protocol": "clustering", "junk_pids": list(self.junk_pids), "device": self.device,
        }


@dataclass(frozen=True)
class ClusterRun:
    sweep: Any  # eval.cluster_sweep.Sweep
    items: LabelledVectors
    options: ClusterOptions
    split: str | None
    neighbours: dict
    inputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """The ``--json`` object (``run_dir`` is added when saved)."""
        from retrieval.eval.cluster_metrics import ClusterMetrics, size_statistics
        from retrieval.eval.cluster_sweep import GIVEN

        chosen = self.sweep.chosen_point
        shown = chosen or self.sweep.points[0]
        scores = {name: None for name in ClusterMetrics.__dataclass_fields__}
        if chosen is not None and chosen.scores is not None:
            scores.update(chosen.scores.to_dict())
        out: dict[str, Any] = {
            "protocol": "clustering", "method": self.options.method, "metric": self.options.metric,
            "k": self.options.k if self.options.method in LIST_METHODS else None, "neighbours": self.neighbours,
            "num_items": len(self.items), "threshold": None if chosen is None else chosen.threshold,
            "chosen_by": self.sweep.chosen_by, **scores,
            "sizes": size_statistics(shown.labels),
        }
        if self.sweep.chosen_by != GIVEN:
            out["sweep"] = [{"threshold": p.threshold, "chosen": i == self.sweep.chosen, **p.statistics()}
                            for i, p in enumerate(self.sweep.points)]
        out["notes"] = list(self.notes)
        return out

    def parameters(self) -> dict[str, Any]:
        return self.options.parameters(self.split, self.neighbours)

    def tables(self):
        return clustering_tables(self.sweep.points, self.sweep.chosen, self.items.ids, self.items.pid,
                                 self.options.method, self.options.metric)

    def command_line(self, embeddings: Path) -> str:
        o = self.options
        parts = ["retrieve", "cluster", str(embeddings)]
        if self.split is not None:
            parts += ["--split", self.split]
        parts += ["--method", o.method, "--metric", o.metric]
        if o.method in LIST_METHODS:
            parts += ["--k", str(o.k)] + (["--index", str(o.index)] if o.index is not None else ["--kind", o.kind])
        if o.threshold is not None:
            parts += ["--threshold", repr(o.threshold)]
        else:
            sweep = o.sweep if o.sweep is not None else "auto"
            parts += ["--sweep", sweep if isinstance(sweep, str) else ",".join(repr(t) for t in sweep)]
        return shlex.join(parts)


def cluster(items: LabelledVectors, options: ClusterOptions, *, split: str | None = None, inputs: dict | None = None,
            progress: ProgressCallback | None = None) -> ClusterRun:
    """Cluster the items as ``options`` say (``eval.clustering``), score and choose (``eval.cluster_sweep``)."""
    from retrieval.eval.cluster_sweep import run_sweep
    from retrieval.eval.clustering import Clusterer
    from retrieval.eval.distances import resolve_device

    options.check()
    progress = progress or no_progress
    notes: list[str] = []
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    lists = None
    if options.index is not None:
        lists = _index_neighbours(items, options)
    clusterer = Clusterer(items.vectors, options.method, k=options.k, metric=options.metric, kind=options.kind,
                          lists=lists, ids=items.ids, device=resolve_device(options.device), progress=progress)
    timings["neighbours"] = time.perf_counter() - clock
    if items.pid is None:
        notes.append("the items carry no pid: the §7 scores are skipped (cluster sizes and per-cluster quality only)")
    clock = time.perf_counter()
    sweep = run_sweep(clusterer, items.vectors, options.thresholds, items.pid, options.junk_pids)
    timings["cluster_and_score"] = time.perf_counter() - clock
    if sweep.chosen is None and len(sweep.points) > 1:
        notes.append("several thresholds and no labels: no threshold is chosen (each is in the sweep)")
    return ClusterRun(sweep, items, options, split, dict(clusterer.source), dict(inputs or {}), timings, tuple(notes))


def _index_neighbours(items: LabelledVectors, options: ClusterOptions):
    from retrieval.eval.clustering import NeighbourLists, self_first
    from retrieval.jobs.candidates import index_lists

    found = index_lists(options.index, items.ids, items.vectors, items.vectors, options.k + 1, options.metric,
                        device=options.device)
    distances, rows = self_first(found.distances, found.rows)
    return NeighbourLists(rows, distances, options.metric, {**found.source, "k": options.k})


def cluster_file(embeddings: Path, options: ClusterOptions, progress: ProgressCallback | None = None) -> ClusterRun:
    from retrieval.data.store import read_embeddings

    options.check()
    clock = time.perf_counter()
    emb = read_embeddings(embeddings, splits=options.split)
    items = labelled(emb, name="items")
    inputs = {**input_paths(embeddings=embeddings), "content_hash": emb.content_hash(), **input_paths(index=options.index)}
    seconds = time.perf_counter() - clock
    run = cluster(items, options, split=options.split, inputs=inputs, progress=progress)
    return replace(run, timings={"load": seconds, **run.timings})


def save(run: ClusterRun, run_dir: Path, *, command: str, overwrite: bool) -> Path:
    from retrieval.runs import write_run

    summary = {**run.summary(), "run_dir": str(run_dir)}
    record = run_record("cluster", command, run.parameters(), run.inputs, run.timings, summary)
    return write_run(run_dir, record, run.tables(), overwrite=overwrite)
