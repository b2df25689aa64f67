"""The progress callback every layer accepts: ``(stage, done, total) -> None``; layers never print."""

from __future__ import annotations

from typing import Callable

ProgressCallback = Callable[[str, int, int], None]


def no_progress(stage: str, done: int, total: int) -> None:
    """The callback used when the caller passes none."""
    return None
