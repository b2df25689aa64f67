"""Errors the evaluator raises for inputs it cannot score: shown to the user as one line."""


class EvaluationError(ValueError):
    """The inputs cannot be evaluated as asked (no valid query, shapes that disagree, ...)."""
