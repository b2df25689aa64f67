"""Run folders on disk: written atomically, read back with a format-version check.

A run folder holds ``run.json`` and Parquet tables (``retrieval.run_schema``: ``metrics``,
``per_query``, ``rankings``, ``curves``, ``folds``, ``epochs``; a run writes those that apply).
The folder is filled under a temporary name beside its destination and renamed into place under
the destination's lock (``retrieval.common.atomic``), so a crash never leaves a half-written run
and concurrent writers of one folder replace it one at a time.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.common.atomic import check_output, staging_folder
from retrieval.common.errors import OutputExistsError
from retrieval.errors import RetrieveError
from retrieval.run_schema import (  # noqa: F401  (json_safe, library_versions, RUN_TABLES: public here too)
    RUN_FORMAT_VERSION,
    RUN_TABLES,
    json_safe,
    library_versions,
)


def _not_a_run(path: Path) -> str | None:
    return None if (path / "run.json").exists() else "is not a run folder (no run.json), so it is not replaced"


def check_run_target(run_dir: Path | str, *, overwrite: bool) -> Path:
    """Fail before any work when ``run_dir`` cannot take the run: a file, a folder that is not a
    run, or an existing run without ``overwrite`` (its kind is named).

    The rules are ``check_output``'s with ``_not_a_run``: an existing folder is checked under its
    lock, so a writer replacing the same run at that moment is never seen half-way.
    """
    run_dir = Path(run_dir)
    try:
        return check_output(run_dir, overwrite=overwrite, folder=True, replaceable=_not_a_run)
    except OutputExistsError:
        kind = _kind_of(run_dir)
        raise RetrieveError(f"{run_dir}: already holds a run{f' (kind {kind})' if kind else ''}; "
                            "choose another --out or pass --overwrite to replace it") from None


def _kind_of(run_dir: Path) -> str | None:
    try:
        return json.loads((run_dir / "run.json").read_text()).get("kind")
    except (OSError, ValueError, AttributeError):
        return None


def write_run(run_dir: Path | str, record: Mapping[str, Any], tables: Mapping[str, pa.Table], *,
              overwrite: bool = True) -> Path:
    """Write ``run.json`` (``record`` plus format version, run id, time) and the tables, atomically.

    An existing run at ``run_dir`` is replaced (only after the new one is complete) when
    ``overwrite`` (the default: the trainer rewrites its run after every epoch); the commands and
    ``EvaluationResult.save`` pass ``overwrite=False`` unless asked. A folder that is not a run is
    never replaced.
    """
    run_dir = check_run_target(run_dir, overwrite=overwrite)
    full = {
        "format_version": RUN_FORMAT_VERSION,
        "run_id": run_dir.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **dict(record),
    }
    with staging_folder(run_dir, overwrite=overwrite, replaceable=_not_a_run) as staging:
        for name, table in tables.items():
            pq.write_table(table, staging / f"{name}.parquet")
        (staging / "run.json").write_text(json.dumps(json_safe(full), indent=2, allow_nan=False) + "\n")
    return run_dir


def read_run_record(run_dir: Path | str) -> dict[str, Any]:
    """Read and check ``run.json``: a folder that is not a run, or a newer format, is a clear error."""
    run_dir = Path(run_dir)
    path = run_dir / "run.json"
    if not run_dir.is_dir():
        raise RetrieveError(f"{run_dir}: no such run folder")
    if not path.is_file():
        raise RetrieveError(f"{run_dir}: not a run folder (no run.json)")
    try:
        record = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RetrieveError(f"{path}: not valid JSON ({exc})") from None
    version = record.get("format_version")
    if not isinstance(version, int):
        raise RetrieveError(f"{path}: no format_version; not a run written by retrieve")
    if version > RUN_FORMAT_VERSION:
        raise RetrieveError(
            f"{path}: run format version {version} is newer than this retrieve understands "
            f"({RUN_FORMAT_VERSION}); upgrade retrieve"
        )
    return record


def read_run_table(run_dir: Path | str, name: str) -> pa.Table | None:
    """One of the run's Parquet tables, or None when the run did not write it."""
    path = Path(run_dir) / f"{name}.parquet"
    return pq.read_table(path) if path.is_file() else None
