"""`retrieve identify`: 1:N identification (closed-set CMC, open-set TPIR@FPIR and the DET curve).

Parses the options and prints; ``retrieval.jobs.identify`` reads the inputs, identifies every
probe (``eval.identification``) and writes the run folder.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from retrieval.cli.app import app
from retrieval.cli.choices import DeviceName, SimilarityMetric
from retrieval.cli.options import OVERWRITE_HELP, parse_fars, parse_int_list
from retrieval.console import err_console, print_json, say, stdout_console
from retrieval.progress import stage_progress


class TemplateName(str, Enum):
    item = "item"
    mean = "mean"


@app.command("identify")
def identify_command(
    embeddings: Path = typer.Argument(..., help="Embeddings Parquet file holding the probes (and usually the gallery)."),
    gallery_split: Optional[str] = typer.Option(None, "--gallery-split", help="Split enrolled as the gallery (default: gallery; with --gallery: every row of that file)."),
    probe_split: Optional[str] = typer.Option(None, "--probe-split", help="Split of the probes (default: query)."),
    gallery: Optional[Path] = typer.Option(None, "--gallery", help="Take the gallery from another embeddings file."),
    template: TemplateName = typer.Option(TemplateName.item, "--template", help="item: an identity scores as its best image; mean: one L2-normalised mean template per identity."),
    metric: SimilarityMetric = typer.Option(SimilarityMetric.cosine, "--metric", help="cosine (similarity, accept s > t) or euclidean (distance, accept d < t)."),
    fpir: str = typer.Option("1e-3,1e-2,1e-1", "--fpir", help="Comma-separated FPIR targets for TPIR@FPIR."),
    ranks: str = typer.Option("1,5,10,20", "--ranks", help="Closed-set CMC ranks shown (the curve to 50 is stored)."),
    index: Optional[Path] = typer.Option(None, "--index", help="Score an index's top-k candidate lists instead of the whole gallery (item template)."),
    k: int = typer.Option(100, "--k", min=1, help="With --index: candidate list length."),
    device: DeviceName = typer.Option(DeviceName.auto, "--device", help="Where distances are computed: auto uses a CUDA GPU when torch sees one."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (fractions)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to write (default: a new folder in the workspace)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Workspace folder (default $RETRIEVE_WORKSPACE or ./retrieve-runs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """1:N identification: closed-set CMC over mated probes, open-set TPIR@FPIR and the whole DET curve (protocols §6)."""
    from retrieval.jobs.identify import IdentifyOptions, identify_files, save
    from retrieval.runs import check_run_target
    from retrieval.workspace import new_run_dir

    fpirs = _parse_fpirs(fpir)
    rank_list = tuple(sorted(set(parse_int_list(ranks, "--ranks", "1,5,10,20"))))
    if not rank_list or rank_list[0] < 1:
        raise typer.BadParameter(f"ranks must be integers ≥ 1, got {ranks!r}", param_hint="--ranks")
    options = IdentifyOptions(template=template.value, metric=metric.value, fpir=fpirs, ranks=rank_list,
                              probe_split=probe_split, gallery_split=gallery_split, index=index, k=k,
                              device=device.value)
    options.check()
    run_dir = check_run_target(out if out is not None else new_run_dir(workspace, "identify"), overwrite=overwrite)
    with stage_progress(quiet=json_output) as progress:
        identification = identify_files(embeddings, gallery, options, progress)
    save(identification, run_dir, command=identification.command_line(embeddings, gallery), overwrite=overwrite)
    summary = {**identification.summary(), "run_dir": str(run_dir)}
    if json_output:
        print_json(summary)
        return
    _print_summary(summary)


def _parse_fpirs(text: str) -> tuple[float, ...]:
    return parse_fars(text, "FPIR", "--fpir")


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{100 * value:.2f}"


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    unit = "similarity >" if summary["metric"] == "cosine" else "distance <"
    title = (f"1:N identification: {summary['num_probes']} probes ({summary['num_mated']} mated, "
             f"{summary['num_nonmated']} non-mated) against {summary['num_identities']} identities, "
             f"template {summary['template']}, metric {summary['metric']}, candidates {summary['candidates']}")
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value %", justify="right")
    table.add_column("detail")
    for rank, value in (summary["cmc"] or {}).items():
        table.add_row(f"rank-{rank} (closed set)", _percent(value), "mated probes whose mate is within the first "
                      f"{rank} candidates")
    for label, point in (summary["tpir_at_fpir"] or {}).items():
        reach = "" if point["reachable"] else " (unreachable: too few non-mated probes)"
        table.add_row(f"TPIR@FPIR={label}", _percent(point["tpir"]),
                      f"achieved FPIR {point['fpir']:.3g}, accept {unit} {point['threshold']:.6g}{reach}")
    stdout_console().print(table)
    say(summary["notes"])
    say(summary["warnings"], prefix="warning")
    err_console().print(f"run folder: {summary['run_dir']}")
