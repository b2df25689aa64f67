"""`retrieve verify`: 1:1 verification metrics from an LFW-format pairs file or query × gallery trials.

Parses the options and prints; ``retrieval.jobs.verify`` reads the inputs (pairs files:
``retrieval.data.pairs``), computes the metrics and writes the run folder.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from retrieval.cli.app import app
from retrieval.cli.choices import DeviceName, ProtocolName
from retrieval.cli.options import OVERWRITE_HELP, RAY_HELP, parse_fars, parse_junk_pids
from retrieval.console import err_console, print_json, stdout_console
from retrieval.progress import stage_progress


class DistanceName(str, Enum):
    sqeuclidean = "sqeuclidean"
    cosine = "cosine"


class ThresholdGrid(str, Enum):
    exact = "exact"
    lfw = "lfw"


class TrialsKind(str, Enum):
    query_gallery = "query-gallery"


# ----------------------------------------------------------------------------- the command


@app.command("verify")
def verify_command(
    embeddings: Path = typer.Argument(..., help="The embeddings Parquet file."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="LFW-format pairs file (header '<folds>\\t<pairs per fold>')."),
    trials: Optional[TrialsKind] = typer.Option(None, "--trials", help="query-gallery: every query × gallery pair is a trial."),
    folds: Optional[int] = typer.Option(None, "--folds", help="k for k-fold accuracy (default: the pairs file's fold count, else 10)."),
    distance: DistanceName = typer.Option(DistanceName.sqeuclidean, "--distance", help="Distance (smaller = closer)."),
    threshold_grid: Optional[ThresholdGrid] = typer.Option(
        None, "--threshold-grid", help="exact (every split of the training distances, default) or lfw (0, 0.01, …, 3.99; same if d < t)."
    ),
    far: str = typer.Option("1e-1,1e-2,1e-3", "--far", help="Comma-separated FAR targets for TAR@FAR."),
    query_split: str = typer.Option("query", "--query-split", help="With --trials: split of the queries."),
    gallery_split: str = typer.Option("gallery", "--gallery-split", help="With --trials: split of the gallery."),
    protocol: ProtocolName = typer.Option(ProtocolName.market, "--protocol", help="With --trials: junk rules (as retrieve evaluate)."),
    junk_pids: str = typer.Option("-1", "--junk-pids", help="With --trials: comma-separated junk identities."),
    device: DeviceName = typer.Option(DeviceName.auto, "--device", help="With --trials: where distances are computed."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (fractions)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to write (default: a new folder in the workspace)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Workspace folder (default $RETRIEVE_WORKSPACE or ./retrieve-runs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    ray: Optional[str] = typer.Option(None, "--ray", help="With --trials: " + RAY_HELP),
) -> None:
    """Verification metrics: exact ROC (TAR vs FAR), AUC, EER, TAR@FAR and LFW-style k-fold accuracy."""
    from retrieval.distributed.cluster import cluster_for
    from retrieval.jobs.verify import VerifyOptions, save, verify
    from retrieval.runs import check_run_target
    from retrieval.workspace import new_run_dir

    fars = parse_fars(far)
    if (pairs is None) == (trials is None):
        raise typer.BadParameter("give exactly one of --pairs FILE and --trials query-gallery", param_hint="--pairs/--trials")
    if trials is not None and (folds is not None or threshold_grid is not None):
        raise typer.BadParameter("k-fold accuracy is for pairs files; drop --folds/--threshold-grid with --trials", param_hint="--folds")
    options = VerifyOptions(
        pairs=pairs, folds=folds, distance=distance.value, threshold_grid=(threshold_grid or ThresholdGrid.exact).value,
        far=fars, query_split=query_split, gallery_split=gallery_split, protocol=protocol.value,
        junk_pids=parse_junk_pids(junk_pids), device=device.value,
    )
    options.check()
    run_dir = check_run_target(out if out is not None else new_run_dir(workspace, "verify"), overwrite=overwrite)
    with cluster_for(ray) as cluster, stage_progress(quiet=json_output) as progress:
        verification = verify(embeddings, options, progress, cluster=cluster)
    save(verification, run_dir, command=verification.command_line(embeddings), overwrite=overwrite)
    summary = {**verification.result.to_dict(), "run_dir": str(run_dir)}
    if json_output:
        print_json(summary)
        return
    _print_summary(summary, curve_note=verification.parameters()["curve_points"])


# ----------------------------------------------------------------------------- printing


def _percent(value: float | None) -> str:
    return "—" if value is None or value != value else f"{100 * value:.2f}"


def _print_summary(summary: dict[str, Any], curve_note: dict[str, int]) -> None:
    from rich.table import Table

    if summary["mode"] == "pairs":
        title = (f"Verification: {summary['num_pairs']} pairs ({summary['num_same']} same, {summary['num_different']} different), "
                 f"distance {summary['distance']}, {summary['folds']}-fold, threshold grid {summary['threshold_grid']}")
    else:
        title = (f"Verification: {summary['num_pairs']} query × gallery trials ({summary['num_same']} genuine, "
                 f"{summary['num_different']} impostor), protocol {summary['protocol']}, distance {summary['distance']}")
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value %", justify="right")
    table.add_column("detail")
    if summary["accuracy_mean"] is not None:
        table.add_row("accuracy (k-fold)", f"{_percent(summary['accuracy_mean'])} ± {_percent(summary['accuracy_std'])}",
                      "mean ± population std over folds")
    table.add_row("ROC AUC", _percent(summary["roc_auc"]), "trapezoid over the exact curve")
    table.add_row("EER", _percent(summary["eer"]), "where FAR = 1 − TAR, interpolated on the curve")
    for label, point in summary["tar_at_far"].items():
        threshold = "none accepted" if point["threshold"] is None else f"{point['threshold']:.6g}"
        table.add_row(f"TAR@FAR={label}", _percent(point["tar"]), f"achieved FAR {point['far']:.3g}, threshold d ≤ {threshold}")
    for label, point in (summary["val_at_far"] or {}).items():
        table.add_row(f"VAL@FAR={label} (k-fold)", f"{_percent(point['val_mean'])} ± {_percent(point['val_std'])}",
                      f"mean held-out FAR {point['far_mean']:.3g}")
    stdout_console().print(table)
    err = err_console()
    for warning in summary["warnings"]:
        err.print(f"warning: {warning}")
    err.print(f"run folder: {summary['run_dir']} (ROC: {curve_note['stored']} of {curve_note['exact']} curve points stored)")
