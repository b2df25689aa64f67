"""Where output goes: tables to stdout, notes and progress to stderr, `--json` as one object on stdout."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from retrieval.runs import json_safe


def stdout_console() -> Console:
    # Built per call so that tests capturing sys.stdout see the output.
    return Console(file=sys.stdout, soft_wrap=True)


def err_console() -> Console:
    return Console(file=sys.stderr, soft_wrap=True, highlight=False)


def print_json(obj: Any) -> None:
    """Exactly one JSON object on stdout (NaN/inf become null)."""
    sys.stdout.write(json.dumps(json_safe(obj), allow_nan=False) + "\n")
    sys.stdout.flush()
