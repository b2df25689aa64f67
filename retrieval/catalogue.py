"""The DuckDB catalogue: every run of a workspace, queryable with SQL.

``connect(workspace)`` returns a plain in-memory ``duckdb.DuckDBPyConnection`` with

* ``runs``       one row per run (from each ``run.json``): id, time, kind, command, data hash,
                 headline metrics (final stage: re-ranked when the run re-ranked), folder;
* ``metrics``, ``per_query``, ``rankings``, ``curves``, ``folds``, ``epochs``: views over the
  runs' Parquet tables, each row carrying its ``run_id``. The documented columns
  (``run_schema.TABLE_COLUMNS``) are always present (a workspace without any such table gives an
  empty view with those columns); extra columns that some runs write (``ap_before_rerank`` ...)
  are added, NULL for the other runs. ``per_query`` and ``rankings`` also carry ``run_kind``
  (evaluate / search) and ``run_protocol``: ``is_match``, ``is_junk`` and ``valid`` follow that
  run's protocol, so filter on them before comparing flags across runs;
* ``embeddings('file.parquet')``: a table macro reading an embeddings file. Parquet stores the
  ``embedding`` column as a list, so it comes back as ``FLOAT[]`` (``list_distance``,
  ``list_cosine_similarity`` work on it); ``CAST(embedding AS FLOAT[d])`` gives the fixed-size
  array for the ``array_*`` functions.

The views read the run files when queried; nothing is ever written into a run folder.
Runs written after ``connect`` are seen by the next ``connect``.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from retrieval.errors import RetrieveError
from retrieval.run_schema import (  # noqa: F401  (TABLE_COLUMNS, HEADLINE_METRICS: public here too)
    HEADLINE_METRICS,
    RUN_TABLES,
    RUNS_SCHEMA,
    TABLE_COLUMNS,
    VIEW_CONTEXT_COLUMNS,
    run_context,
)
from retrieval.runs import read_run_record, read_run_table
from retrieval.workspace import resolve_workspace

@dataclass(frozen=True)
class RunFolder:
    """A run folder found in a workspace, with its checked ``run.json``."""

    path: Path
    record: dict[str, Any]

    @property
    def run_id(self) -> str:
        # The folder name: what `ls` shows and what `compare`/`report` accept (run.json's run_id
        # is the same unless the folder was copied or renamed).
        return self.path.name


def discover_runs(workspace: Path | str | None = None) -> tuple[list[RunFolder], list[tuple[Path, str]]]:
    """The run folders directly inside the workspace, oldest first, and the skipped ones with why.

    Hidden folders (staging folders of runs being written) and folders without ``run.json``
    are ignored; a ``run.json`` that is unreadable or from a newer format is reported as skipped.
    """
    root = resolve_workspace(workspace)
    if not root.is_dir():
        return [], []
    found: list[RunFolder] = []
    skipped: list[tuple[Path, str]] = []
    for path in sorted(root.iterdir()):
        if not path.is_dir() or path.name.startswith(".") or not (path / "run.json").is_file():
            continue
        try:
            found.append(RunFolder(path.resolve(), read_run_record(path)))
        except RetrieveError as exc:
            skipped.append((path, str(exc)))
    found.sort(key=lambda run: (str(run.record.get("created", "")), run.run_id))
    return found, skipped


def resolve_run(run: Path | str, workspace: Path | str | None = None) -> RunFolder:
    """A run given as a folder path, or as a run id inside the workspace; checked."""
    path = Path(run)
    if not path.is_dir():
        candidate = resolve_workspace(workspace) / str(run)
        if candidate.is_dir():
            path = candidate
        else:
            raise RetrieveError(
                f"{run}: no such run folder, and no run with that id in workspace {resolve_workspace(workspace)}"
            )
    return RunFolder(path.resolve(), read_run_record(path))


def final_stage_rows(metrics: pa.Table | None) -> tuple[str | None, list[dict[str, Any]]]:
    """The rows of a ``metrics`` table at the run's final stage: re-ranked when present, else all."""
    if metrics is None or "metric" not in metrics.column_names or "value" not in metrics.column_names:
        return None, []
    rows = metrics.to_pylist()
    stages = {row.get("stage") for row in rows}
    if "rerank" in stages:
        return "rerank", [row for row in rows if row.get("stage") == "rerank"]
    return ("plain" if "plain" in stages else None), rows


def headline_metrics(run_dir: Path | str) -> tuple[str | None, dict[str, float | None]]:
    """The final-stage value of each headline metric (re-ranked when present, else plain)."""
    stage, rows = final_stage_rows(read_run_table(run_dir, "metrics"))
    by_name = {row["metric"]: row["value"] for row in rows}
    values: dict[str, float | None] = {}
    for column, metric in HEADLINE_METRICS.items():
        value = by_name.get(metric)
        values[column] = None if value is None else float(value)
    return stage, values


def runs_table(runs: list[RunFolder]) -> pa.Table:
    """One row per run: what ``retrieve runs`` lists and the ``runs`` view holds."""
    rows = []
    for run in runs:
        record = run.record
        inputs = record.get("inputs") or {}
        stage, metrics = headline_metrics(run.path)
        rows.append(
            {
                "run_id": run.run_id,
                "created": record.get("created"),
                "kind": record.get("kind"),
                "command": record.get("command"),
                "content_hash": inputs.get("content_hash") if isinstance(inputs, dict) else None,
                "embeddings": str(inputs.get("embeddings")) if isinstance(inputs, dict) and inputs.get("embeddings") else None,
                "headline_stage": stage,
                **metrics,
                "format_version": record.get("format_version"),
                "parameters": json.dumps(record.get("parameters") or {}, sort_keys=True, default=str),
                "run_dir": str(run.path),
            }
        )
    return pa.Table.from_pylist(rows, schema=RUNS_SCHEMA)


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _empty_select(name: str) -> str:
    columns = [("run_id", "VARCHAR"), *TABLE_COLUMNS[name]]
    casts = ", ".join(f'CAST(NULL AS {kind}) AS "{column}"' for column, kind in columns)
    return f"SELECT {casts} WHERE false"


def _sql_value(value: Any) -> str:
    return "NULL" if value is None else _sql_string(str(value))


def _table_view_sql(name: str, runs: list[RunFolder]) -> str:
    """A view over ``<name>.parquet`` of every run that has one, with the documented columns first.

    The run's context columns (``run_schema.VIEW_CONTEXT_COLUMNS``: kind, protocol) come from
    run.json, so rows whose flags follow different rules can be told apart in one query.
    """
    files = [(str(run.path / f"{name}.parquet"), run) for run in runs if (run.path / f"{name}.parquet").is_file()]
    empty = _empty_select(name)
    if not files:
        return f"CREATE VIEW {name} AS {empty}"
    context = VIEW_CONTEXT_COLUMNS.get(name, ())
    file_list = ", ".join(_sql_string(path) for path, _ in files)
    mapping = ", ".join(
        "(" + ", ".join([_sql_string(path), _sql_string(run.run_id)]
                        + [_sql_value(run_context(run.record)[c]) for c in context]) + ")"
        for path, run in files
    )
    names = ", ".join(["filename", "run_id", *context])
    selected = ", ".join(f"f.{column}" for column in ("run_id", *context))
    # The empty typed select fixes the documented columns' order and types; BY NAME adds extras.
    return (
        f"CREATE VIEW {name} AS {empty} UNION ALL BY NAME "
        f"SELECT {selected}, t.* EXCLUDE (filename) "
        f"FROM read_parquet([{file_list}], union_by_name = true, filename = true) AS t "
        f"JOIN (VALUES {mapping}) AS f({names}) USING (filename)"
    )


def connect(workspace: Path | str | None = None) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with the catalogue views over the workspace's runs.

    ``workspace``: a folder; default ``$RETRIEVE_WORKSPACE`` or ``./retrieve-runs``. A folder that
    does not exist gives empty views. Runs that cannot be read are skipped with a warning.
    """
    runs, skipped = discover_runs(workspace)
    for path, reason in skipped:
        warnings.warn(f"catalogue: skipped {path}: {reason}", stacklevel=2)
    connection = duckdb.connect(":memory:")
    runs_arrow = runs_table(runs)
    connection.register("_catalogue_runs_arrow", runs_arrow)
    connection.execute(
        "CREATE TABLE runs AS SELECT * REPLACE (TRY_CAST(created AS TIMESTAMPTZ) AS created) "
        "FROM _catalogue_runs_arrow"
    )
    connection.unregister("_catalogue_runs_arrow")
    for name in RUN_TABLES:
        connection.execute(_table_view_sql(name, runs))
    connection.execute("CREATE MACRO embeddings(path) AS TABLE SELECT * FROM read_parquet(path)")
    return connection
