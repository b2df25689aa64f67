"""`retrieve cluster`: N:N clustering (rank-order, k-NN components, agglomerative, DBSCAN), scored by
protocols §7 when the items carry pids.

Parses the options and prints; ``retrieval.jobs.cluster`` reads the rows, clusters them
(``eval.clustering``, ``eval.cluster_sweep``) and writes the run folder.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any, Optional

import typer

from retrieval.cli.app import app
from retrieval.cli.choices import DeviceName, SimilarityMetric
from retrieval.cli.options import OVERWRITE_HELP
from retrieval.console import err_console, print_json, say, stdout_console
from retrieval.progress import stage_progress


class MethodName(str, Enum):
    rank_order = "rank-order"
    components = "components"
    agglomerative = "agglomerative"
    dbscan = "dbscan"


class ListKind(str, Enum):
    flat = "flat"
    ivf = "ivf"


@app.command("cluster")
def cluster_command(
    embeddings: Path = typer.Argument(..., help="The embeddings Parquet file."),
    split: Optional[str] = typer.Option(None, "--split", help="Split to cluster (default: every row)."),
    method: MethodName = typer.Option(MethodName.rank_order, "--method", help="rank-order (Otto et al., k-NN lists), components (thresholded k-NN graph), agglomerative or dbscan (scikit-learn; small sets)."),
    k: int = typer.Option(20, "--k", help="Neighbours per item in the k-NN lists (rank-order: about the images per person)."),
    threshold: Optional[float] = typer.Option(None, "--threshold", help="Merge below this value (rank-order distance, or a distance in the metric's units)."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="Comma-separated thresholds, or auto (at least 8 over the method's range; the default)."),
    metric: SimilarityMetric = typer.Option(SimilarityMetric.cosine, "--metric", help="Distance: cosine (1 − cos) or euclidean."),
    index: Optional[Path] = typer.Option(None, "--index", help="Take the k-NN lists from an index built from these rows."),
    kind: Optional[ListKind] = typer.Option(None, "--kind", help="k-NN lists: flat (exact, default) or ivf (the engine's IVF: approximate reach, exact order)."),
    device: DeviceName = typer.Option(DeviceName.auto, "--device", help="Where the exact k-NN is computed."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to write (default: a new folder in the workspace)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Workspace folder (default $RETRIEVE_WORKSPACE or ./retrieve-runs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Cluster embeddings by identity; pairwise / BCubed F, NMI, ARI, V-measure when pids exist (protocols §7)."""
    from retrieval.jobs.cluster import ClusterOptions, cluster_file, save
    from retrieval.runs import check_run_target
    from retrieval.workspace import new_run_dir

    if index is not None and kind is not None:
        raise typer.BadParameter("give --index DIR or --kind, not both", param_hint="--index/--kind")
    options = ClusterOptions(method=method.value, k=k, threshold=threshold, sweep=_parse_sweep(sweep),
                             metric=metric.value, index=index, kind=(kind or ListKind.flat).value, split=split,
                             device=device.value)
    options.check()
    run_dir = check_run_target(out if out is not None else new_run_dir(workspace, "cluster"), overwrite=overwrite)
    with stage_progress(quiet=json_output) as progress:
        run = cluster_file(embeddings, options, progress)
    save(run, run_dir, command=run.command_line(embeddings), overwrite=overwrite)
    summary = {**run.summary(), "run_dir": str(run_dir)}
    if json_output:
        print_json(summary)
        return
    _print_summary(summary)


def _parse_sweep(text: str | None) -> tuple[float, ...] | str | None:
    if text is None or text.strip() == "auto":
        return None if text is None else "auto"
    try:
        values = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise typer.BadParameter(f"expected auto or comma-separated numbers such as 0.5,1,1.5, got {text!r}",
                                 param_hint="--sweep") from None
    if not values:
        raise typer.BadParameter("no threshold given", param_hint="--sweep")
    return values


def _fmt(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _print_summary(summary: dict[str, Any]) -> None:
    from rich.table import Table

    title = (f"Clustering: {summary['num_items']} items, {summary['method']}, metric {summary['metric']}"
             + (f", k {summary['k']}" if summary["k"] else ""))
    columns = ["threshold", "clusters", "singletons", "pairwise F", "BCubed F", "NMI"]
    table = Table(title=title, title_justify="left")
    for column in ["", *columns]:
        table.add_column(column, justify="right")
    points = summary.get("sweep") or [{"threshold": summary["threshold"], "chosen": True,
                                        **summary["sizes"], **{k: summary[k] for k in ("pairwise_f", "bcubed_f", "nmi")}}]
    for point in points:
        table.add_row("chosen" if point.get("chosen") else "", _fmt(point["threshold"]), _fmt(point["num_clusters"]),
                      _fmt(point["singleton_fraction"]), _fmt(point.get("pairwise_f")), _fmt(point.get("bcubed_f")),
                      _fmt(point.get("nmi")))
    stdout_console().print(table)
    if summary["chosen_by"]:
        err_console().print(f"chosen: {summary['chosen_by']}")
    say(summary["notes"])
    err_console().print(f"run folder: {summary['run_dir']} (clusters.parquet, cluster_quality.parquet, sweep.parquet)")
