"""The verify job: 1:1 verification metrics from an LFW pairs file or from query × gallery trials,
and the run folder (kind ``verify``).

Pairs mode finds each image of the pairs file in the embeddings (``data.pairs``) and reports the
exact ROC plus k-fold accuracy; trials mode scores every query × gallery pair, genuine or
impostor by the protocol's junk/match rule (``retrieval.labels``).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from retrieval.common.progress import ProgressCallback, no_progress
from retrieval.errors import OptionError
from retrieval.labels import DEFAULT_JUNK_PIDS, check_labels, labelled, ranking_labels
from retrieval.run_schema import folds_table, input_paths, roc_curve_table, run_record, verification_metrics_table

CURVE_POINTS = 2000  # the ROC stored in curves.parquet, downsampled evenly in point index
DISTANCES = ("sqeuclidean", "cosine")


@dataclass(frozen=True)
class VerifyOptions:
    pairs: Path | None = None  # an LFW pairs file, or None for query × gallery trials
    folds: int | None = None  # default: the pairs file's fold count, else 10
    distance: str = "sqeuclidean"
    threshold_grid: str = "exact"  # exact | lfw
    far: tuple[float, ...] = (1e-1, 1e-2, 1e-3)
    query_split: str = "query"
    gallery_split: str = "gallery"
    protocol: str = "market"
    junk_pids: tuple[int, ...] = DEFAULT_JUNK_PIDS
    device: str = "auto"

    @property
    def trials(self) -> str | None:
        return None if self.pairs is not None else "query-gallery"

    def check(self) -> None:
        if self.distance not in DISTANCES:
            raise OptionError(f"unknown distance {self.distance!r}; expected one of {', '.join(DISTANCES)}", "--distance")
        if not self.far or any(not 0 < v < 1 for v in self.far):
            raise OptionError(f"FAR targets must lie strictly between 0 and 1, got {list(self.far)}", "--far")
        if self.threshold_grid == "lfw" and self.distance != "sqeuclidean":
            raise OptionError("the lfw grid (0 … 3.99) is defined on squared Euclidean distance; use --distance "
                              "sqeuclidean or --threshold-grid exact", "--threshold-grid")
        if self.folds is not None and self.folds < 2:
            raise OptionError(f"k-fold accuracy needs at least 2 folds, got {self.folds}", "--folds")

    def parameters(self, folds: int | None) -> dict[str, Any]:
        return {
            "pairs": None if self.pairs is None else str(self.pairs), "trials": self.trials, "folds": folds,
            "distance": self.distance, "threshold_grid": self.threshold_grid, "far": list(self.far),
            "query_split": self.query_split, "gallery_split": self.gallery_split, "protocol": self.protocol,
            "junk_pids": list(self.junk_pids), "device": self.device,
        }


@dataclass(frozen=True)
class Verification:
    result: Any  # eval.verification result (pairs or trials)
    options: VerifyOptions
    folds: int | None
    inputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    cluster: dict | None = None  # where it ran, when on a Ray cluster (run.json "cluster")

    @property
    def curve(self):
        return self.result.roc.curve.downsampled(CURVE_POINTS)

    def parameters(self) -> dict[str, Any]:
        stored = len(self.curve.threshold)
        return {**self.options.parameters(self.folds),
                "curve_points": {"exact": len(self.result.roc.curve.threshold), "stored": stored}}

    def tables(self) -> dict:
        tables = {"metrics": verification_metrics_table(self.result), "curves": roc_curve_table(self.curve)}
        if self.result.kfold is not None:
            tables["folds"] = folds_table(self.result.kfold)
        return tables

    def command_line(self, embeddings: Path) -> str:
        """The command that reproduces this run (every option that matters, explicitly)."""
        o = self.options
        parts = ["retrieve", "verify", str(embeddings)]
        if o.pairs is not None:
            parts += ["--pairs", str(o.pairs), "--folds", str(self.folds), "--threshold-grid", o.threshold_grid]
        else:
            parts += ["--trials", "query-gallery", "--query-split", o.query_split, "--gallery-split", o.gallery_split,
                      "--protocol", o.protocol, "--junk-pids", ",".join(str(p) for p in o.junk_pids)]
        parts += ["--distance", o.distance, "--far", ",".join(repr(x) for x in o.far)]
        return shlex.join(parts)


def verify(embeddings: Path, options: VerifyOptions, progress: ProgressCallback | None = None,
           cluster=None) -> Verification:
    """Verification metrics; ``cluster`` (``retrieval.distributed.cluster.Cluster``, trials only):
    the trials counted over gallery shards on Ray, with the same result."""
    options.check()
    if options.pairs is not None:
        if cluster is not None:
            raise OptionError("--ray applies to query × gallery trials (--trials); a pairs file is scored here",
                              "--ray")
        return _verify_pairs(embeddings, options)
    if cluster is not None:
        return _verify_trials_on_cluster(embeddings, options, cluster, progress)
    return _verify_trials(embeddings, options, progress or no_progress)


def _verify_pairs(embeddings: Path, options: VerifyOptions) -> Verification:
    from retrieval.data.pairs import image_rows, parse_pairs_file, resolve_pairs
    from retrieval.data.store import read_embeddings
    from retrieval.eval.verification import evaluate_pairs, pair_distances

    started = time.perf_counter()
    pairs = parse_pairs_file(options.pairs)
    emb = read_embeddings(embeddings)
    first, second = resolve_pairs(pairs, image_rows(emb.ids, emb.path), str(embeddings), options.pairs)
    timings = {"read": time.perf_counter() - started}
    started = time.perf_counter()
    folds = options.folds or (pairs.folds if pairs.folds > 1 else 10)
    distances = pair_distances(emb.vectors[first], emb.vectors[second], options.distance)
    result = evaluate_pairs(distances, pairs.is_same, distance=options.distance, folds=folds,
                            threshold_grid=options.threshold_grid, fars=list(options.far))
    timings["metrics"] = time.perf_counter() - started
    inputs = {**input_paths(embeddings=embeddings), "content_hash": emb.content_hash(),
              **input_paths(pairs=options.pairs)}
    return Verification(result, options, folds, inputs, timings)


def _verify_trials(embeddings: Path, options: VerifyOptions, progress) -> Verification:
    from retrieval.data.store import read_embeddings
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.trials import query_gallery_verification

    started = time.perf_counter()
    emb = read_embeddings(embeddings, splits=[options.query_split, options.gallery_split])
    query = labelled(emb.by_split(options.query_split), name="queries")
    gallery = labelled(emb.by_split(options.gallery_split), name="gallery")
    timings = {"read": time.perf_counter() - started}
    check_labels([(f"{options.query_split} split", query), (f"{options.gallery_split} split", gallery)],
                 options.protocol)
    labels = ranking_labels(query.pid, gallery.pid, query.camid, gallery.camid, protocol=options.protocol,
                            junk_pids=options.junk_pids, query_ids=query.ids, gallery_ids=gallery.ids)
    started = time.perf_counter()
    source = EmbeddingDistances(query.vectors, gallery.vectors, metric=options.distance, device=options.device)
    result = query_gallery_verification(source, labels, fars=list(options.far), distance=options.distance,
                                        progress=progress)
    timings["metrics"] = time.perf_counter() - started
    inputs = {**input_paths(embeddings=embeddings), "content_hash": emb.content_hash()}
    return Verification(result, options, None, inputs, timings)


def _verify_trials_on_cluster(embeddings: Path, options: VerifyOptions, cluster, progress) -> Verification:
    from retrieval.distributed.shards import GalleryView
    from retrieval.distributed.verify import verify_on_cluster
    from retrieval.eval.distances import resolve_device
    from retrieval.jobs.inputs import streamed

    started = time.perf_counter()
    splits = (options.query_split, options.gallery_split)
    rows = streamed(embeddings, keep=options.query_split, hashed=splits, count=options.gallery_split)
    view = GalleryView.of(embeddings, options.gallery_split, min_parts=cluster.workers)
    if rows.counted == 0:
        raise view.empty_error()
    timings = {"read": time.perf_counter() - started}
    check_labels([(f"{options.query_split} split", rows.kept)], options.protocol)
    started = time.perf_counter()
    device = "cpu" if resolve_device(options.device) == "cpu" else options.device
    result = verify_on_cluster(rows.kept, view, rows.counted, distance=options.distance, protocol=options.protocol,
                               junk_pids=options.junk_pids, fars=list(options.far), device=device,
                               progress=progress)
    timings["metrics"] = time.perf_counter() - started
    inputs = {**input_paths(embeddings=embeddings), "content_hash": rows.content_hash}
    return Verification(result, options, None, inputs, timings,
                        cluster={**cluster.describe(), "shards": len(view.parts)})


def save(verification: Verification, run_dir: Path, *, command: str, overwrite: bool) -> Path:
    from retrieval.runs import write_run

    summary = {**verification.result.to_dict(), "run_dir": str(run_dir)}
    record = run_record("verify", command, verification.parameters(), verification.inputs, verification.timings, summary,
                        cluster=verification.cluster)
    return write_run(run_dir, record, verification.tables(), overwrite=overwrite)
