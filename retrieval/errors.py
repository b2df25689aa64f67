"""The error classes that mean "the user gave us something wrong" (exit 1, one line)."""

from retrieval.common.errors import OutputError
from retrieval.data.errors import DataError
from retrieval.eval.errors import EvaluationError
from retrieval.indexes.errors import FaissIndexError


class RetrieveError(Exception):
    """A user-facing failure of the surface layer (runs, workspace, reports, catalogue)."""


class OptionError(RetrieveError):
    """A bad option value: a usage error (exit 2) in the CLI, a ``RetrieveError`` in Python.

    ``option`` is the command-line flag (``--k1``), ``argument`` the Python keyword (``k1``).
    """

    def __init__(self, message: str, option: str, argument: str | None = None) -> None:
        super().__init__(message)
        self.option = option
        self.argument = argument or option.lstrip("-").replace("-", "_")


USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    EvaluationError,
    FaissIndexError,
    RetrieveError,
    OutputError,
    FileNotFoundError,
    IsADirectoryError,
    PermissionError,
)
