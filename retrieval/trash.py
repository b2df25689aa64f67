"""Removing runs without losing them: ``retrieve rm RUN`` moves the folder into the workspace's
``.trash/`` (hidden, so the catalogue does not see it); ``retrieve restore RUN_ID`` moves it back.

Moves are renames within the workspace (``common.atomic.move_folder``: under the locks a writer
replacing the same run holds, never onto an existing folder).
"""

from __future__ import annotations

from pathlib import Path

from retrieval.common.atomic import move_folder
from retrieval.errors import RetrieveError

TRASH = ".trash"


def trash_folder(workspace: Path | str) -> Path:
    return Path(workspace) / TRASH


def trashed_runs(workspace: Path | str) -> list[str]:
    folder = trash_folder(workspace)
    if not folder.is_dir():
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / "run.json").is_file())


def move_to_trash(run_dir: Path) -> Path:
    """Move a run folder into ``.trash/`` of the folder that holds it; returns where it is now."""
    run_dir = Path(run_dir)
    target = trash_folder(run_dir.parent) / run_dir.name
    if target.exists():
        raise RetrieveError(f"{target}: the trash already holds a run with this id; restore or delete that one first")
    return move_folder(run_dir, target)


def restore(workspace: Path | str, run_id: str) -> Path:
    """Move a run back from the trash into the workspace; returns its folder."""
    source = trash_folder(workspace) / run_id
    if not (source / "run.json").is_file():
        held = trashed_runs(workspace)
        listing = f"it holds {', '.join(held)}" if held else "it is empty"
        raise RetrieveError(f"{run_id}: not in the trash of workspace {workspace} ({listing})")
    target = Path(workspace) / run_id
    if target.exists():
        raise RetrieveError(f"{target}: a run with this id is in the workspace; move it away first")
    return move_folder(source, target)
