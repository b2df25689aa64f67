"""Short listings for one-line error messages."""

from __future__ import annotations

from typing import Iterable

SHOW_FIRST = 5


def few(values: Iterable, limit: int = SHOW_FIRST) -> str:
    """``"3, 8, 12, … (40 in all)"``: the first ``limit`` values and, when there are more, the count."""
    values = list(values)
    shown = ", ".join(str(v.item() if hasattr(v, "item") else v) for v in values[:limit])
    return shown + (f", … ({len(values)} in all)" if len(values) > limit else "")
