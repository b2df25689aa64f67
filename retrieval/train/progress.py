"""The trainer's progress bars: one line per epoch with the running mean loss (rich, on a terminal).

The trainer calls ``progress(stage, done, total, loss=value)``; ``no_progress`` ignores it.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


def no_progress(stage: str, done: int, total: int, **fields) -> None:
    return None


@contextmanager
def epoch_bars(quiet: bool = False) -> Iterator:
    """Yield a callback drawing one bar per stage with its loss; a no-op off a terminal or when quiet."""
    from retrieval.progress import progress_enabled

    if not progress_enabled(quiet):
        yield no_progress
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    tasks: dict[str, int] = {}
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("{task.fields[loss]}"), TimeElapsedColumn(), console=Console(stderr=True)) as bar:

        def update(stage: str, done: int, total: int, loss: float | None = None, **fields) -> None:
            text = "" if loss is None else f"loss {loss:.4f}"
            if stage not in tasks:
                tasks[stage] = bar.add_task(stage, total=total, loss=text)
            bar.update(tasks[stage], completed=done, total=total, loss=text)

        yield update
