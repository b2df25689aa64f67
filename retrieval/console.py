"""Where output goes: tables to stdout, notes and progress to stderr, `--json` as one object on stdout."""

from __future__ import annotations

import json
import sys
import warnings
from contextlib import contextmanager
from typing import Any, Iterable, Iterator

from rich.console import Console


def stdout_console() -> Console:
    # Built per call so that tests capturing sys.stdout see the output.
    return Console(file=sys.stdout, soft_wrap=True)


def err_console() -> Console:
    return Console(file=sys.stderr, soft_wrap=True, highlight=False)


def print_json(obj: Any, indent: int | None = None) -> None:
    """Exactly one JSON object on stdout (NaN/inf become null; other values as text)."""
    from retrieval.run_schema import json_safe  # lazily: the CLI starts without numpy and pyarrow

    sys.stdout.write(json.dumps(json_safe(obj), indent=indent, allow_nan=False, default=str) + "\n")
    sys.stdout.flush()


def say(lines: Iterable[str], prefix: str = "note") -> None:
    """One ``prefix: line`` on stderr per line (notes, warnings), never markup."""
    console = err_console()
    for line in lines:
        console.print(f"{prefix}: {line}", markup=False)


@contextmanager
def warnings_on_stderr() -> Iterator[None]:
    """Python warnings raised inside the block, each distinct one once, as ``retrieve: warning: …`` lines."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            yield
        finally:
            for message in dict.fromkeys(str(w.message) for w in caught):
                sys.stderr.write(f"retrieve: warning: {message}\n")
