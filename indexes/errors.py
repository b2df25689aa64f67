"""Errors about vector indexes: shown to the user as one line."""


class FaissIndexError(ValueError):
    """An index cannot be built, opened or searched as asked; the message says why."""


def few(rows, limit: int = 5) -> str:
    """The first few entries of a list of rows for a one-line error: "3, 7, 9, … (12 in all)"."""
    rows = list(rows)
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    return shown + (f", … ({len(rows)} in all)" if len(rows) > limit else "")
