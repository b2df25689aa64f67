"""Run folders: written atomically, read back with a format-version check.

A run folder holds ``run.json`` and Parquet tables (``metrics``, ``per_query``,
``rankings``, ``curves``; a run writes those that apply). The whole folder is
written under a temporary name beside its destination and renamed into place, so
a crash never leaves a half-written run.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.errors import RetrieveError

RUN_FORMAT_VERSION = 1
# folds: verify runs (k-fold accuracy); epochs: train runs (per-epoch losses and mining statistics).
RUN_TABLES = ("metrics", "per_query", "rankings", "curves", "folds", "epochs")


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by None and numpy scalars by Python ones so that json.dumps is strict."""
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def library_versions() -> dict[str, str]:
    """The versions a run record keeps: retrieve, Python, numpy, pyarrow."""
    import platform

    import numpy as np

    from retrieval import __version__

    return {"retrieve": __version__, "python": platform.python_version(), "numpy": np.__version__,
            "pyarrow": pa.__version__}


def write_run(run_dir: Path | str, record: Mapping[str, Any], tables: Mapping[str, pa.Table]) -> Path:
    """Write ``run.json`` (``record`` plus format version, run id, time) and the tables, atomically.

    An existing run folder at ``run_dir`` is replaced only after the new one is complete.
    """
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise RetrieveError(f"{run_dir}: exists and is not a folder; choose another --out")
    if run_dir.is_dir() and any(run_dir.iterdir()) and not (run_dir / "run.json").exists():
        raise RetrieveError(f"{run_dir}: folder exists, is not empty and is not a run; choose another --out")
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    full = {
        "format_version": RUN_FORMAT_VERSION,
        "run_id": run_dir.name,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **dict(record),
    }
    staging = Path(tempfile.mkdtemp(prefix=f".{run_dir.name}.", suffix=".tmp", dir=run_dir.parent))
    try:
        for name, table in tables.items():
            pq.write_table(table, staging / f"{name}.parquet")
        (staging / "run.json").write_text(json.dumps(json_safe(full), indent=2, allow_nan=False) + "\n")
        _replace_dir(staging, run_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return run_dir


def _replace_dir(staging: Path, target: Path) -> None:
    if not target.exists():
        os.rename(staging, target)
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.rename(target, old)
    os.rename(staging, target)
    shutil.rmtree(old, ignore_errors=True)


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
