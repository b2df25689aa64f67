"""The workspace: the folder that holds every run folder (`./retrieve-runs` by default)."""

from __future__ import annotations

import os
import secrets
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_WORKSPACE = "retrieve-runs"
WORKSPACE_ENV = "RETRIEVE_WORKSPACE"


def resolve_workspace(option: Path | str | None = None) -> Path:
    """The workspace folder: the --workspace option, else $RETRIEVE_WORKSPACE, else ./retrieve-runs."""
    if option:
        return Path(option)
    env = os.environ.get(WORKSPACE_ENV)
    return Path(env) if env else Path(DEFAULT_WORKSPACE)


def new_run_id(kind: str) -> str:
    """A sortable, unique run id: UTC time, the command kind and a short random suffix."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{stamp}-{kind}-{secrets.token_hex(3)}"


def new_run_dir(workspace: Path | str | None, kind: str) -> Path:
    """A path for a new run folder inside the workspace (not created yet)."""
    return resolve_workspace(workspace) / new_run_id(kind)
