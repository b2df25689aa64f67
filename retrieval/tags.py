"""Run tags: names a user gives runs (``retrieve tag RUN NAME``), kept beside the runs, never inside them.

A run folder is written once and never modified, so a run's tags live in ``tags.json`` of the
folder that holds it (its workspace): ``{"<run id>": ["baseline", "paper"], ...}``. The file is
rewritten atomically under its lock (``retrieval.common.atomic``), so two ``tag`` commands never
lose each other's change. Tags follow a run into the trash and back (keyed by its id).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Iterable

from retrieval.common.atomic import output_lock, write_json
from retrieval.errors import OptionError, RetrieveError

TAGS_FILE = "tags.json"
TAG_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,63}$")


def tags_path(workspace: Path | str) -> Path:
    return Path(workspace) / TAGS_FILE


def check_tag(name: str) -> str:
    if not TAG_NAME.match(name or ""):
        raise OptionError(f"tag {name!r}: use 1 to 64 letters, digits or . _ : + - (starting with a letter or digit)",
                          "NAME", "name")
    return name


def read_tags(workspace: Path | str) -> dict[str, list[str]]:
    """Every run's tags in a workspace ({} when it has none)."""
    path = tags_path(workspace)
    if not path.is_file():
        return {}
    try:
        tags = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RetrieveError(f"{path}: not a readable tags file ({exc}); fix or remove it") from None
    if not isinstance(tags, dict) or not all(isinstance(v, list) for v in tags.values()):
        raise RetrieveError(f"{path}: not a tags file (expected {{run id: [tags]}}); fix or remove it")
    return {str(k): [str(t) for t in v] for k, v in tags.items()}


def set_tags(workspace: Path | str, run_id: str, add: Iterable[str] = (), remove: Iterable[str] = ()) -> list[str]:
    """Add and remove tags of one run; returns its tags after the change (sorted)."""
    add, remove = [check_tag(t) for t in add], [check_tag(t) for t in remove]
    path = tags_path(workspace)
    with output_lock(path):
        tags = read_tags(workspace)
        mine = (set(tags.get(run_id, [])) | set(add)) - set(remove)
        if mine:
            tags[run_id] = sorted(mine)
        else:
            tags.pop(run_id, None)
        write_json(path, dict(sorted(tags.items())), overwrite=True)
    return sorted(mine)
