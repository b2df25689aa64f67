"""The export job: a run's query × gallery distance matrix, recomputed exactly from its inputs.

A run folder keeps rankings, not distances; ``retrieve export RUN --distances`` reads the run's
embeddings again (checked against the content hash the run recorded), applies what the run
applied (multi-query pooling, expansion, re-ranking: its parameters) and writes the exact matrix
of the chosen stage (default: the run's final one) with the id orders (``retrieval.export``).
Refused above a size, before any work (``eval.export.check_export_size``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from retrieval.errors import OptionError, RetrieveError
from retrieval.jobs.evaluate import (
    EvaluateOptions,
    RerankOptions,
    embedding_source,
    rerank_source,
)
from retrieval.jobs.expand import expanded_sets, expansion_option, pooled_queries

EXPORT_STAGES = ("plain", "expansion", "rerank")


@dataclass(frozen=True)
class Export:
    path: Path
    stage: str
    shape: tuple[int, int]
    metric: str

    def summary(self) -> dict[str, Any]:
        return {"out": str(self.path), "stage": self.stage, "shape": list(self.shape), "metric": self.metric}


def options_of_run(parameters: dict[str, Any]) -> EvaluateOptions:
    """The evaluate options a run recorded (the subset that decides its distances)."""
    return EvaluateOptions(
        metric=parameters.get("metric"), protocol=parameters.get("protocol", "market"),
        device=parameters.get("device", "auto"),
        rerank=RerankOptions(parameters["k1"], parameters["k2"], parameters["lambda"],
                             parameters.get("rerank_distance", "squared"),
                             bool(parameters.get("rerank_exclude_junk"))) if parameters.get("rerank") else None,
        junk_pids=tuple(parameters.get("junk_pids") or ()),
        expand=expansion_option(parameters.get("expand"), parameters.get("qe_k", 5), parameters.get("qe_alpha", 3.0),
                                parameters.get("dba_k", 5)),
        multi_query=parameters.get("multi_query"),
        local_weight=parameters.get("local_weight"),
    )


def export_distances(run: str | Path, out: Path | None = None, *, stage: str | None = None,
                     workspace: Path | None = None, max_entries: int | None = None, overwrite: bool = False) -> Export:
    """Write the exact distance matrix of one stage of an evaluate run; returns where and what."""
    from retrieval.catalogue import resolve_run
    from retrieval.eval.export import DEFAULT_MAX_ENTRIES, check_export_size, distance_matrix
    from retrieval.export import write_distance_matrix
    from retrieval.jobs.inputs import evaluation_sets
    from retrieval.run_schema import resolve_input

    folder = resolve_run(run, workspace)
    record = folder.record
    if record.get("kind") != "evaluate":
        raise RetrieveError(f"{folder.path}: a {record.get('kind')} run; distances are exported from evaluate runs")
    parameters, inputs = record.get("parameters") or {}, record.get("inputs") or {}
    if parameters.get("index"):
        raise RetrieveError(f"{folder.path}: the run scored an index's top-k lists, which hold no full matrix; "
                            "evaluate the embeddings without --index to export distances")
    options = options_of_run(parameters)
    stage = _stage(stage, options)
    embeddings = resolve_input(inputs, "embeddings", folder.path)
    if embeddings is None:
        raise RetrieveError(f"{folder.path}: its embeddings file {inputs.get('embeddings_as_given')} is not found")
    gallery_file = resolve_input(inputs, "gallery", folder.path) if inputs.get("gallery") else None
    if inputs.get("gallery") and gallery_file is None:
        raise RetrieveError(f"{folder.path}: its gallery file {inputs.get('gallery_as_given')} is not found")
    sets = evaluation_sets(embeddings, gallery_file, parameters.get("query_split"), parameters.get("gallery_split"),
                           options.protocol, need_gallery=True)
    if inputs.get("content_hash") and sets.inputs["content_hash"] != inputs["content_hash"]:
        raise RetrieveError(f"{embeddings}: the file changed since run {folder.run_id} (content hash "
                            f"{sets.inputs['content_hash'][:12]}…, the run read {inputs['content_hash'][:12]}…)")
    queries, gallery = sets.queries, sets.gallery
    check_export_size(len(queries), len(gallery), max_entries or DEFAULT_MAX_ENTRIES)
    source = _stage_source(queries, gallery, options, stage)
    matrix = distance_matrix(source, queries.ids, gallery.ids, max_entries=max_entries or DEFAULT_MAX_ENTRIES)
    target = out if out is not None else Path(f"{folder.run_id}-distances")
    if folder.path == target.resolve() or folder.path in target.resolve().parents:
        raise RetrieveError(f"{target}: inside run folder {folder.path}; run folders are never written to, choose another --out")
    record_part = {"run_id": folder.run_id, "stage": stage, "embeddings": str(embeddings),
                   "content_hash": sets.inputs["content_hash"], "values": _values(stage, matrix.metric)}
    write_distance_matrix(matrix, target, record_part, overwrite=overwrite)
    return Export(target, stage, tuple(matrix.distances.shape), matrix.metric)


def _stage(stage: str | None, options: EvaluateOptions) -> str:
    ran = ["plain"] + (["expansion"] if options.expand else []) + (["rerank"] if options.rerank else [])
    if stage is None:
        return ran[-1]
    if stage not in ran:
        raise OptionError(f"stage {stage!r} did not run in this run (its stages: {', '.join(ran)})", "--stage")
    return stage


def _stage_source(queries, gallery, options: EvaluateOptions, stage: str):
    from retrieval.eval.distances import resolve_device

    device = resolve_device(options.device)
    if options.multi_query is not None:
        queries, _ = pooled_queries(queries, options.multi_query)
    if stage != "plain" and options.expand is not None:
        queries, gallery = expanded_sets(queries, gallery, options.expand, device)
    if stage == "rerank":
        return rerank_source(queries, gallery, options, device, None)
    return embedding_source(queries, gallery, options, device)


def _values(stage: str, metric: str) -> str:
    if stage == "rerank":
        return "k-reciprocal re-ranked distance (1 - lambda) * Jaccard + lambda * normalised original"
    return f"{metric} distance, exact (the float32 nearest to the exact value)"
