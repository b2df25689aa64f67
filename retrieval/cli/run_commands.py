"""Commands on one stored run: show, export, tag, rm, restore. Thin: parse, call the library, print."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

import typer

from retrieval.cli.app import app
from retrieval.cli.catalogue_commands import WORKSPACE_HELP, _text_table
from retrieval.cli.options import OVERWRITE_HELP
from retrieval.console import err_console, print_json, say, warnings_on_stderr
from retrieval.errors import RetrieveError

# ----------------------------------------------------------------------------------------- show


def _file_safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "query"


@app.command("show")
def show_command(
    run_ref: str = typer.Argument(..., metavar="RUN", help="A run folder, or a run id in the workspace."),
    query_id: Optional[str] = typer.Argument(None, metavar="QUERY_ID", help="The query whose ranked list to show (not with --worst)."),
    top: int = typer.Option(10, "--top", min=1, help="Gallery items per query (at most what the run stored: evaluate --keep-top, 10 by default)."),
    worst: Optional[int] = typer.Option(None, "--worst", min=1, help="Show the N valid queries with the lowest AP instead, as one sheet."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="PNG to write [default: ./show-<run id>-<query id>.png]."),
    text: bool = typer.Option(False, "--text", help="Print the ranked list(s) as a table instead of drawing them."),
    json_out: bool = typer.Option(False, "--json", help="Print the ranked list(s) as one JSON object instead of drawing them."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WORKSPACE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Draw a query and its top gallery items from a run folder: green match, red non-match, junk greyed, distance under each."""
    from retrieval.catalogue import resolve_run
    from retrieval.common.atomic import write_bytes
    from retrieval.plots import figure_png, ranked_strips_figure
    from retrieval.show import image_paths, ranked_lists, run_strips, text_rows, worst_query_ids

    if (query_id is None) == (worst is None):
        raise typer.BadParameter("give a QUERY_ID or --worst N (one of them)", param_hint="QUERY_ID / --worst")
    if text and json_out:
        raise typer.BadParameter("choose one of --text and --json", param_hint="--text/--json")
    run = resolve_run(run_ref, workspace)
    query_ids = worst_query_ids(run, worst) if worst is not None else [query_id]
    lists = ranked_lists(run, query_ids, top)
    stored = min(len(r.rows) for r in lists)
    if stored < top:
        say([f"the run stores {stored} items of this list (evaluate --keep-top sets how many); showing those"])
    if text or json_out:
        with warnings_on_stderr():
            images = image_paths(run)
        if json_out:
            print_json({"run": run.run_id, "queries": [{"query_id": r.query_id, "per_query": r.per_query,
                                                        "items": text_rows(r, images)} for r in lists]}, indent=2)
            return
        for ranked in lists:
            _print_list(ranked, text_rows(ranked, images))
        return
    target = out if out is not None else Path(f"show-{_file_safe(run.run_id)}-"
                                              f"{_file_safe(query_id) if worst is None else f'worst{worst}'}.png")
    if target.resolve() == run.path or run.path in target.resolve().parents:
        raise RetrieveError(f"{target}: inside run folder {run.path}; run folders are never written to, choose another --out")
    with warnings_on_stderr():
        strips = run_strips(run, query_ids, top, lists=lists)
    title = f"{run.run_id}: " + (f"{query_id}, top {top}" if worst is None else f"the {len(strips)} worst queries by AP, top {top}")
    write_bytes(target, figure_png(ranked_strips_figure(strips, title)), overwrite=overwrite)
    typer.echo(str(target))


def _print_list(ranked, rows: list[dict]) -> None:
    info = ranked.per_query or {}
    head = f"query {ranked.query_id}"
    if info.get("ap") is not None:
        head += f" · AP {100 * info['ap']:.2f}% · first match #{info.get('first_match_rank')}"
    typer.echo(head)
    table = [["" if r["rank"] is None else r["rank"], r["gallery_id"],
              "" if r["distance"] is None else f"{r['distance']:.4f}", r["status"], r["path"] or ""] for r in rows]
    typer.echo(_text_table(["rank", "gallery_id", "distance", "status", "path"], table))
    typer.echo("")


# --------------------------------------------------------------------------------------- export


@app.command("export")
def export_command(
    run_ref: str = typer.Argument(..., metavar="RUN", help="An evaluate run: a run folder, or a run id in the workspace."),
    distances: bool = typer.Option(False, "--distances", help="Export the query × gallery distance matrix (exact) with the id orders."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Folder to write (distances.npy, ids.json) [default: ./<run id>-distances]."),
    stage: Optional[str] = typer.Option(None, "--stage", help="plain, expansion or rerank [default: the run's final stage]."),
    max_entries: Optional[int] = typer.Option(None, "--max-entries", min=1, help="Refuse matrices above this many distances [default: 67,108,864 (256 MiB float32)]."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WORKSPACE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Export what a run computed: --distances writes the exact query × gallery matrix (.npy) and its id orders."""
    from retrieval.jobs.export import export_distances

    if not distances:
        raise typer.BadParameter("say what to export: --distances", param_hint="--distances")
    result = export_distances(run_ref, out, stage=stage, workspace=workspace, max_entries=max_entries,
                              overwrite=overwrite)
    if json_out:
        print_json(result.summary())
        return
    rows, cols = result.shape
    what = "re-ranked" if result.stage == "rerank" else result.metric
    typer.echo(f"{rows} × {cols} {what} distances ({result.stage} stage) -> {result.path}/distances.npy, "
               f"ids in {result.path}/ids.json")


# ------------------------------------------------------------------------------------ tag, rm


@app.command("tag")
def tag_command(
    run_ref: str = typer.Argument(..., metavar="RUN", help="A run folder, or a run id in the workspace."),
    names: List[str] = typer.Argument(..., metavar="NAME...", help="Tags to add (letters, digits, . _ : + -)."),
    remove: bool = typer.Option(False, "--remove", help="Remove these tags instead of adding them."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WORKSPACE_HELP),
) -> None:
    """Tag a run (kept in the workspace's tags.json; `retrieve runs --tag NAME` lists the runs with a tag)."""
    from retrieval.catalogue import resolve_run
    from retrieval.tags import set_tags

    run = resolve_run(run_ref, workspace)
    tags = set_tags(run.path.parent, run.run_id, remove=names) if remove else set_tags(run.path.parent, run.run_id, add=names)
    typer.echo(f"{run.run_id}: {', '.join(tags) if tags else '(no tags)'}")


@app.command("rm")
def rm_command(
    run_refs: List[str] = typer.Argument(..., metavar="RUN...", help="Run folders, or run ids in the workspace."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WORKSPACE_HELP),
) -> None:
    """Move runs into the workspace's .trash folder (`retrieve restore RUN_ID` brings one back)."""
    from retrieval.catalogue import resolve_run
    from retrieval.trash import move_to_trash

    runs = [resolve_run(ref, workspace) for ref in run_refs]  # every name checked before anything moves
    for run in runs:
        place = move_to_trash(run.path)
        err_console().print(f"moved {run.run_id} to {place} (retrieve restore {run.run_id} to bring it back)",
                            markup=False)


@app.command("restore")
def restore_command(
    run_id: str = typer.Argument(..., help="The id of a run in the workspace's trash."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WORKSPACE_HELP),
) -> None:
    """Move a run back from the workspace's .trash folder."""
    from retrieval.trash import restore
    from retrieval.workspace import resolve_workspace

    place = restore(resolve_workspace(workspace), run_id)
    typer.echo(str(place))
