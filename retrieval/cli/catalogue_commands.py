"""Commands over stored runs: runs, sql, compare, report. Thin: parse, call the library, print."""

from __future__ import annotations

import csv
import sys
from pathlib import Path
from typing import Any, Optional

import typer

from retrieval.cli.app import app
from retrieval.cli.options import OVERWRITE_HELP
from retrieval.console import print_json, warnings_on_stderr
from retrieval.errors import RetrieveError

WORKSPACE_HELP = "Workspace folder holding the runs (default: $RETRIEVE_WORKSPACE or ./retrieve-runs)."


def _text_table(columns: list[str], rows: list[list[Any]]) -> str:
    """A plain aligned text table (pipes and terminals alike)."""
    cells = [[_cell(value) for value in row] for row in rows]
    widths = [max([len(column)] + [len(row[i]) for row in cells]) for i, column in enumerate(columns)]
    lines = ["  ".join(column.ljust(width) for column, width in zip(columns, widths)).rstrip()]
    lines.append("  ".join("-" * width for width in widths))
    lines += ["  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return f"{value:.6g}"
    return " ".join(str(value).splitlines())


def _percent(value: Optional[float]) -> str:
    return "" if value is None else f"{100.0 * value:.2f}"


# ----------------------------------------------------------------------------------------- runs


@app.command("runs")
def runs_command(
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WORKSPACE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object {workspace, runs: [...]} (metrics as fractions)."),
) -> None:
    """List the runs of the workspace: id, time, command, data hash, headline metrics (in %)."""
    from retrieval.catalogue import discover_runs, runs_table
    from retrieval.workspace import resolve_workspace

    root = resolve_workspace(workspace)
    runs, skipped = discover_runs(root)
    for path, reason in skipped:
        typer.echo(f"retrieve: warning: skipped {path}: {reason}", err=True)
    table = runs_table(runs).to_pylist()
    if as_json:
        print_json({"workspace": str(root), "runs": table, "skipped": [str(path) for path, _ in skipped]}, indent=2)
        return
    if not table:
        why = "" if root.is_dir() else " (the folder does not exist)"
        typer.echo(f"No runs in workspace {root}{why}.", err=True)
        return
    columns = ["run_id", "created", "kind", "data hash", "mAP%", "rank-1%", "acc%", "AUC%", "command"]
    rows = [
        [
            run["run_id"],
            run["created"],
            run["kind"],
            (run["content_hash"] or "")[:12],
            _percent(run["mAP"] if run["mAP"] is not None else run["mAP_at_k"]),
            _percent(run["rank1"]),
            _percent(run["accuracy_mean"]),
            _percent(run["roc_auc"]),
            run["command"],
        ]
        for run in table
    ]
    typer.echo(_text_table(columns, rows))


# ------------------------------------------------------------------------------------------ sql


def _execute(connection, statement: str):
    import duckdb

    try:
        cursor = connection.execute(statement)
        if cursor.description is None:
            return [], []
        columns = [column[0] for column in cursor.description]
        return columns, cursor.fetchall()
    except duckdb.Error as exc:
        raise RetrieveError(f"SQL: {exc}") from None


def _print_result(columns: list[str], rows: list[tuple], output: str) -> None:
    if not columns:
        return
    if output == "json":
        print_json({"columns": columns, "rows": [dict(zip(columns, row)) for row in rows]}, indent=2)
    elif output == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([["" if v is None else v for v in row] for row in rows])
        sys.stdout.flush()
    else:
        typer.echo(_text_table(columns, [list(row) for row in rows]))
        typer.echo(f"({len(rows)} row{'s' if len(rows) != 1 else ''})", err=True)


def _statements(stream) -> Any:
    """Statements from an interactive stream: lines gathered until one ends with ';' (or a dot command)."""
    interactive = stream.isatty()
    if interactive:
        try:
            import readline  # noqa: F401  line editing and history for input()
        except ImportError:
            pass
    buffer: list[str] = []
    while True:
        if interactive:
            try:
                line = input("retrieve> " if not buffer else "     ...> ") + "\n"
            except EOFError:
                break
        else:
            line = stream.readline()
        if not line:
            break
        text = line.strip()
        if not buffer and text in (".quit", ".exit", "\\q"):
            return
        if not buffer and text == "":
            continue
        if not buffer and text == ".tables":
            yield "SHOW TABLES"
            continue
        buffer.append(line.rstrip("\n"))
        if text.endswith(";"):
            yield "\n".join(buffer)
            buffer = []
    if buffer and "\n".join(buffer).strip():
        yield "\n".join(buffer)


@app.command("sql")
def sql_command(
    query: Optional[str] = typer.Argument(None, help="One SQL statement; without it, an interactive prompt."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WORKSPACE_HELP),
    as_csv: bool = typer.Option(False, "--csv", help="Print the result as CSV."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object {columns, rows}."),
) -> None:
    """Query all runs with DuckDB SQL: views runs, metrics, per_query, rankings, curves; embeddings('f.parquet').

    Without a query: read statements (ending with ';') from the prompt or stdin until EOF or .quit.
    """
    from retrieval.catalogue import connect

    if as_csv and as_json:
        raise typer.BadParameter("choose one of --csv and --json", param_hint="--csv/--json")
    output = "json" if as_json else ("csv" if as_csv else "table")
    with warnings_on_stderr():
        connection = connect(workspace)
    try:
        if query is not None:
            _print_result(*_execute(connection, query), output)
            return
        failed = _interactive(connection, output)
    finally:
        connection.close()
    if failed and not sys.stdin.isatty():
        raise typer.Exit(1)


def _interactive(connection, output: str) -> bool:
    """Run statements from stdin; an error is printed and the prompt goes on. True if any failed."""
    if sys.stdin.isatty():
        typer.echo("retrieve sql: views runs, metrics, per_query, rankings, curves; end statements with ';', .quit to leave.", err=True)
    failed = False
    for statement in _statements(sys.stdin):
        try:
            _print_result(*_execute(connection, statement), output)
        except RetrieveError as exc:
            failed = True
            typer.echo(f"retrieve: error: {' '.join(str(exc).splitlines())}", err=True)
    return failed


# -------------------------------------------------------------------------------------- compare


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise typer.BadParameter(f"must be between 0 and 1 (exclusive), got {confidence}", param_hint="--confidence")


@app.command("compare")
def compare_command(
    run_a: str = typer.Argument(..., help="Run A: a run folder, or a run id in the workspace."),
    run_b: str = typer.Argument(..., help="Run B: a run folder, or a run id in the workspace."),
    confidence: float = typer.Option(0.95, "--confidence", help="Confidence level of the bootstrap intervals."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap resampling."),
    resamples: int = typer.Option(1000, "--resamples", min=1, help="Bootstrap resamples."),
    largest: int = typer.Option(10, "--largest", min=0, help="How many of the largest per-query changes to list."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WORKSPACE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (fractions; delta = B - A)."),
) -> None:
    """Metric deltas B - A with paired bootstrap intervals over queries matched by query_id."""
    from retrieval.compare import compare_runs

    _check_confidence(confidence)
    result = compare_runs(
        run_a, run_b, workspace=workspace, confidence=confidence, n_resamples=resamples, seed=seed, largest=largest
    )
    if as_json:
        print_json(result, indent=2)
        return
    typer.echo(_compare_text(result))


def _compare_text(result: dict) -> str:
    level = int(round(100 * result["confidence"]))
    lines = [f"A = {result['run_a']}", f"B = {result['run_b']}", ""]
    if result["per_query_metrics"]:
        lines.append(
            f"Per-query metrics over {result['matched_queries']} queries valid in both runs "
            f"(delta = B - A in points, paired bootstrap {level}% CI, seed {result['seed']}):"
        )
        rows = [
            [m["metric"], _percent(m["a"]), _percent(m["b"]), f"{100 * m['delta']:+.2f}",
             f"[{100 * m['low']:+.2f}, {100 * m['high']:+.2f}]"]
            for m in result["per_query_metrics"]
        ]
        lines += [_text_table(["metric", "A %", "B %", "delta", f"{level}% CI"], rows), ""]
        counts = result["counts"]
        lines.append(
            f"Queries by AP: {counts['improved']} improved, {counts['worsened']} worsened, {counts['unchanged']} unchanged."
        )
    stored = [m for m in result["metrics"] if m["metric"] not in {p["metric"] for p in result["per_query_metrics"]}]
    if stored:
        lines += ["", "Other stored metrics (no per-query values, no interval):"]
        lines.append(
            _text_table(
                ["metric", "A", "B", "delta"],
                [[m["metric"], _cell(m["a"]), _cell(m["b"]), "" if m["delta"] is None else f"{m['delta']:+.6g}"] for m in stored],
            )
        )
    for title, key in (("Largest AP drops", "largest_drops"), ("Largest AP gains", "largest_gains")):
        if result.get(key):
            lines += ["", f"{title}:"]
            lines.append(
                _text_table(
                    ["query_id", "pid", "AP A", "AP B", "delta", "first match A", "first match B"],
                    [[c["query_id"], c["pid"], f"{c['ap_a']:.4f}", f"{c['ap_b']:.4f}", f"{c['delta']:+.4f}",
                      c["first_match_rank_a"], c["first_match_rank_b"]] for c in result[key]],
                )
            )
    for note in result["warnings"]:
        lines += ["", f"note: {note}"]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- report


@app.command("report")
def report_command(
    run_a: str = typer.Argument(..., help="The run (folder or run id)."),
    run_b: Optional[str] = typer.Argument(None, help="A second run to overlay (folder or run id)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="The HTML file to write (default ./report-<run id>.html)."),
    png: Optional[Path] = typer.Option(None, "--png", help="Also write each figure as a PNG file into this folder."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", "-w", help=WORKSPACE_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """One self-contained HTML report (figures embedded): parameters, metrics, CMC, ROC, AP histogram, worst queries."""
    from retrieval.catalogue import resolve_run
    from retrieval.report import default_report_name, write_report

    runs = [resolve_run(run_a, workspace)] + ([resolve_run(run_b, workspace)] if run_b else [])
    target = out if out is not None else Path(default_report_name([run.path for run in runs]))
    with warnings_on_stderr():
        path = write_report([run.path for run in runs], target, png_dir=png, overwrite=overwrite)
    typer.echo(str(path))
