"""`retrieve demo`: the whole path on the bundled sample data, one command."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from retrieval.cli.app import app
from retrieval.console import err_console
from retrieval.errors import RetrieveError
from retrieval.workspace import resolve_workspace


def _step(title: str, argv: list[str]) -> None:
    from retrieval.cli.app import run

    err_console().rule(f"[bold]{title}[/]  retrieve {' '.join(argv)}")
    code = run(argv)
    if code != 0:
        raise RetrieveError(f"demo step '{title}' failed (exit {code})")


@app.command("demo")
def demo_command(
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Workspace folder (default ./retrieve-runs or $RETRIEVE_WORKSPACE)."),
) -> None:
    """Run the whole path on the bundled sample: info, index, search, evaluate with re-ranking, report.

    The demo's own outputs in the workspace are replaced when it runs again (--overwrite).
    """
    from retrieval.common.atomic import write_bytes
    from retrieval.data import SAMPLE_EMBEDDINGS

    ws = resolve_workspace(workspace)
    sample_dir = ws / "sample"
    embeddings = sample_dir / "embeddings.parquet"
    write_bytes(embeddings, SAMPLE_EMBEDDINGS.read_bytes(), overwrite=True)
    index_dir = sample_dir / "index-flat"
    run_dir = ws / "demo-evaluate-rerank"
    report = ws / "demo-report.html"
    _step("1. describe the sample embeddings", ["info", str(embeddings)])
    _step("2. build an exact index of the gallery", ["build-index", str(embeddings), "--out", str(index_dir),
                                                      "--split", "gallery", "--kind", "flat", "--overwrite"])
    _step("3. search it with the queries", ["search", str(index_dir), str(embeddings), "--split", "query", "--k", "5",
                                             "--workspace", str(ws), "--out", str(sample_dir / "search.parquet"), "--overwrite"])
    _step("4. evaluate (Market protocol) with k-reciprocal re-ranking",
          ["evaluate", str(embeddings), "--rerank", "--out", str(run_dir), "--workspace", str(ws), "--overwrite"])
    _step("5. write the report", ["report", str(run_dir), "--out", str(report), "--overwrite"])
    err_console().print(f"\nreport: {report.resolve()}")
    typer.echo(str(report.resolve()))
