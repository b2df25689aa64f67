"""One import root: nothing of ours takes a generic top-level name, and the layers import one way."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RETRIEVE = Path(sys.executable).with_name("retrieve")


@pytest.fixture()
def hostile_folder(tmp_path: Path) -> Path:
    """A research project's folder: its own `data` package and `eval` / `indexes` modules."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "__init__.py").write_text("raise ImportError('the user project data package was imported')\n")
    (tmp_path / "eval.py").write_text("raise ImportError('the user eval.py was imported')\n")
    (tmp_path / "indexes.py").write_text("raise ImportError('the user indexes.py was imported')\n")
    return tmp_path


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_notebook_api_imports_beside_a_user_data_package(hostile_folder: Path) -> None:
    code = (
        "from retrieval import Gallery, evaluate, connect\n"
        "import retrieval.data.store, retrieval.eval.evaluate, retrieval.indexes.store\n"
        "print(Gallery.__name__, evaluate.__name__, connect.__name__)\n"
    )
    done = _run([sys.executable, "-c", code], hostile_folder)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["Gallery", "evaluate", "connect"]


def test_cli_help_runs_beside_a_user_data_package(hostile_folder: Path) -> None:
    done = _run([str(RETRIEVE), "--help"], hostile_folder)
    assert done.returncode == 0, done.stderr
    assert "evaluate" in done.stdout


def _imported_modules(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


# Dependencies point one way (architecture): data and indexes import no other layer, eval only these two.
ALLOWED = {
    "data": ("retrieval.data",),
    "indexes": ("retrieval.indexes",),
    "eval": ("retrieval.eval", "retrieval.indexes", "retrieval.data"),
}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_one_way(layer: str) -> None:
    wrong = []
    for path in sorted((ROOT / layer).rglob("*.py")):
        for module in _imported_modules(path):
            top = module.split(".")[0]
            if top in ("data", "eval", "indexes"):
                wrong.append(f"{path.relative_to(ROOT)} imports top-level {module}")
            elif top == "retrieval" and not module.startswith(ALLOWED[layer]):
                wrong.append(f"{path.relative_to(ROOT)} imports {module}")
    assert wrong == []
