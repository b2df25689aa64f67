"""Progress bars: rich on a terminal (stderr), silent in pipes and under --json.

``eval/`` and ``indexes/`` never print; they accept a ``progress`` callback
``(stage: str, done: int, total: int) -> None`` (``retrieval.common.progress.ProgressCallback``).
``stage_progress()`` gives one.
"""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from retrieval.common.progress import ProgressCallback, no_progress


def progress_enabled(quiet: bool = False) -> bool:
    """A bar is drawn only when stderr is a terminal and the caller is not quiet (e.g. --json)."""
    return not quiet and sys.stderr.isatty()


@contextmanager
def stage_progress(quiet: bool = False) -> Iterator[ProgressCallback]:
    """Yield a callback that shows one bar per stage name; a no-op when not on a terminal."""
    if not progress_enabled(quiet):
        yield no_progress
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:

        def update(stage: str, done: int, total: int) -> None:
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total)
            bar.update(tasks[stage], completed=done, total=total)

        yield update
