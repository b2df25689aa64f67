"""The identify job: 1:N identification (protocols §6) of a probe set against an enrolled gallery,
exhaustive or over an index's top-k candidate lists, and its run folder (kind ``identify``).

Inputs (``jobs.inputs`` rules): probes = the ``query`` split; gallery = the ``gallery`` split of the
same file, or every row of ``--gallery FILE`` (its ``--gallery-split`` when given).
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from retrieval.common.progress import ProgressCallback, no_progress
from retrieval.data.errors import DataError
from retrieval.errors import OptionError
from retrieval.labels import DEFAULT_JUNK_PIDS, LabelledVectors, check_dimensions, labelled
from retrieval.run_schema import identification_tables, input_paths, run_record

TEMPLATES = ("item", "mean")
METRICS = ("cosine", "euclidean")
DEFAULT_FPIRS = (1e-3, 1e-2, 1e-1)
DEFAULT_RANKS = (1, 5, 10, 20)


@dataclass(frozen=True)
class IdentifyOptions:
    template: str = "item"
    metric: str = "cosine"
    fpir: tuple[float, ...] = DEFAULT_FPIRS
    ranks: tuple[int, ...] = DEFAULT_RANKS
    probe_split: str | None = None  # default: query
    gallery_split: str | None = None  # default: gallery (with --gallery FILE: every row of it)
    index: Path | None = None
    k: int = 100  # with --index: candidate list length
    nprobe: int | None = None
    junk_pids: tuple[int, ...] = DEFAULT_JUNK_PIDS
    device: str = "auto"

    def check(self) -> None:
        if self.template not in TEMPLATES:
            raise OptionError(f"unknown template {self.template!r}; expected one of {', '.join(TEMPLATES)}", "--template")
        if self.metric not in METRICS:
            raise OptionError(f"unknown metric {self.metric!r}; expected one of {', '.join(METRICS)}", "--metric")
        if not self.fpir or any(not 0 < f < 1 for f in self.fpir):
            raise OptionError(f"FPIR targets must lie strictly between 0 and 1, got {list(self.fpir)}", "--fpir")
        if not self.ranks or min(self.ranks) < 1:
            raise OptionError(f"ranks must be integers ≥ 1, got {list(self.ranks)}", "--ranks")
        if self.k < 1:
            raise OptionError(f"k must be at least 1, got {self.k}", "--k")
        if self.index is not None and self.template != "item":
            raise OptionError("an index lists gallery items, so --index needs --template item", "--template")

    def parameters(self, splits: dict[str, str | None], compute_device: str) -> dict[str, Any]:
        return {
            **splits, "template": self.template, "metric": self.metric, "fpir": list(self.fpir),
            "ranks": list(self.ranks), "protocol": "identification", "junk_pids": list(self.junk_pids),
            "index": None if self.index is None else str(Path(self.index).absolute()),
            "k": None if self.index is None else self.k, "nprobe": self.nprobe, "device": self.device,
            "compute_device": compute_device,
        }


@dataclass(frozen=True)
class Identification:
    result: Any  # eval.identification.IdentificationResult
    options: IdentifyOptions
    splits: dict
    compute_device: str
    inputs: dict = field(default_factory=dict)
    timings: dict = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    def summary(self) -> dict[str, Any]:
        """The ``--json`` object (``run_dir`` is added when saved)."""
        out = self.result.to_dict()
        out["notes"] = list(self.notes) + out["notes"]
        return out

    def parameters(self) -> dict[str, Any]:
        return self.options.parameters(self.splits, self.compute_device)

    def tables(self):
        return identification_tables(self.result)

    def command_line(self, embeddings: Path, gallery_file: Path | None) -> str:
        o = self.options
        parts = ["retrieve", "identify", str(embeddings), "--probe-split", str(self.splits["probe_split"])]
        if gallery_file is not None:
            parts += ["--gallery", str(gallery_file)]
        if self.splits["gallery_split"] is not None:
            parts += ["--gallery-split", str(self.splits["gallery_split"])]
        parts += ["--template", o.template, "--metric", o.metric, "--fpir", ",".join(repr(f) for f in o.fpir),
                  "--ranks", ",".join(map(str, o.ranks))]
        if o.index is not None:
            parts += ["--index", str(o.index), "--k", str(o.k)]
        return shlex.join(parts)


def read_sets(embeddings: Path, gallery_file: Path | None, options: IdentifyOptions):
    """(probes, gallery, splits taken, inputs) by the rules of the module docstring."""
    from retrieval.data.store import read_embeddings

    emb = read_embeddings(embeddings)
    probe_split = options.probe_split or "query"
    probes = emb.by_split(probe_split)
    if gallery_file is not None:
        other = read_embeddings(gallery_file)
        gallery_split = options.gallery_split
        gallery = other.by_split(gallery_split) if gallery_split else other
    else:
        gallery_split = options.gallery_split or "gallery"
        gallery = emb.by_split(gallery_split)
    inputs = {**input_paths(embeddings=embeddings), "content_hash": emb.content_hash(),
              **input_paths(gallery=gallery_file), **input_paths(index=options.index)}
    splits = {"probe_split": probe_split, "gallery_split": gallery_split}
    return labelled(probes, name="probes"), labelled(gallery, name="gallery"), splits, inputs


def identify(probes: LabelledVectors, gallery: LabelledVectors, options: IdentifyOptions, *,
             splits: dict | None = None, inputs: dict | None = None,
             progress: ProgressCallback | None = None) -> Identification:
    """Identify every probe against the gallery as ``options`` say (``eval.identification``)."""
    from retrieval.eval.distances import resolve_device
    from retrieval.eval.identification import identify as run_identification

    options.check()
    check_dimensions(probes, gallery)
    if gallery.pid is None:
        raise DataError(f"{gallery.source or 'gallery'}: no 'pid' column in the gallery; 1:N identification "
                        "enrols the gallery's identities")
    compute_device = resolve_device(options.device)
    notes: list[str] = []
    timings: dict[str, float] = {}
    candidate_rows = None
    if options.index is not None:
        from retrieval.jobs.candidates import index_lists

        clock = time.perf_counter()
        lists = index_lists(options.index, gallery.ids, gallery.vectors, probes.vectors, options.k, options.metric,
                            options.nprobe, options.device)
        candidate_rows = lists.rows
        timings["index_search"] = time.perf_counter() - clock
        notes.append(f"candidates: the index's top-{options.k} gallery items per probe ({lists.source['factory']}); "
                     "identities outside a probe's list are not seen")
    clock = time.perf_counter()
    result = run_identification(
        probes.vectors, gallery.vectors, probes.pid, gallery.pid, template=options.template, metric=options.metric,
        fpirs=options.fpir, ranks=options.ranks, junk_pids=options.junk_pids, probe_ids=probes.ids,
        gallery_ids=gallery.ids, candidate_rows=candidate_rows, device=compute_device, progress=progress or no_progress,
    )
    timings["identify"] = time.perf_counter() - clock
    return Identification(result, options, dict(splits or {"probe_split": None, "gallery_split": None}),
                          compute_device, dict(inputs or {}), timings, tuple(notes))


def identify_files(embeddings: Path, gallery_file: Path | None, options: IdentifyOptions,
                   progress: ProgressCallback | None = None) -> Identification:
    options.check()
    clock = time.perf_counter()
    probes, gallery, splits, inputs = read_sets(embeddings, gallery_file, options)
    seconds = time.perf_counter() - clock
    identification = identify(probes, gallery, options, splits=splits, inputs=inputs, progress=progress)
    return replace(identification, timings={"load": seconds, **identification.timings})


def save(identification: Identification, run_dir: Path, *, command: str, overwrite: bool) -> Path:
    from retrieval.runs import write_run

    summary = {**identification.summary(), "run_dir": str(run_dir)}
    record = run_record("identify", command, identification.parameters(), identification.inputs,
                        identification.timings, summary)
    return write_run(run_dir, record, identification.tables(), overwrite=overwrite)
