"""Test files that need torch import it when their tests run, not when pytest collects them.

Every pytest worker collects every file: torch and the trainer's modules imported at collection cost
each worker about 3 s of CPU, also a worker that never runs one of these tests. ``requires_torch``
skips without torch (found without importing it); ``imported_when_run`` is a module-scoped autouse
fixture that sets the file's names just before its first test runs.
"""

from __future__ import annotations

import importlib
from importlib.util import find_spec

import pytest

requires_torch = pytest.mark.skipif(find_spec("torch") is None, reason="needs torch (the `train` extra)")


def imported_when_run(namespace: dict, **names: str):
    """A fixture setting ``namespace[name]`` to what ``"module"`` or ``"module:attribute"`` names."""

    @pytest.fixture(scope="module", autouse=True)
    def imports() -> None:
        for name, target in names.items():
            module, _, attribute = target.partition(":")
            value = importlib.import_module(module)
            namespace[name] = getattr(value, attribute) if attribute else value

    return imports
