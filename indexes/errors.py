"""Errors about vector indexes: shown to the user as one line."""


class FaissIndexError(ValueError):
    """An index cannot be built, opened or searched as asked; the message says why."""

