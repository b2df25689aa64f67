"""Errors of the output rules: a user-facing one-line failure (exit 1 in the CLI)."""


class OutputError(Exception):
    """An output cannot be written as asked: it exists, another process holds it, or it is not ours to replace."""


class OutputExistsError(OutputError):
    """The output exists and replacing it was not asked for (``--overwrite`` / ``overwrite=True``)."""


class OutputLockedError(OutputError):
    """Another process is writing or updating the same output right now."""
