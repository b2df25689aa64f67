"""The error classes that mean "the user gave us something wrong" (exit 1, one line)."""

from retrieval.data.errors import DataError
from retrieval.eval.errors import EvaluationError
from retrieval.indexes.errors import FaissIndexError


class RetrieveError(Exception):
    """A user-facing failure of the surface layer (runs, workspace, reports, catalogue)."""


USER_ERRORS: tuple[type[BaseException], ...] = (
    DataError,
    EvaluationError,
    FaissIndexError,
    RetrieveError,
    FileNotFoundError,
    IsADirectoryError,
    PermissionError,
)
