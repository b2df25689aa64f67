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


# Dependencies point one way (architecture): common imports nothing of ours; data and indexes import
# only common; eval imports these; the user's surface (retrieval/) may import every layer.
ALLOWED = {
    "common": ("retrieval.common",),
    "data": ("retrieval.common", "retrieval.data"),
    "indexes": ("retrieval.common", "retrieval.indexes"),
    "eval": ("retrieval.common", "retrieval.eval", "retrieval.indexes", "retrieval.data"),
}
LAYER_FOLDERS = ("common", "data", "eval", "indexes")


def _wrong_imports(folder: Path, allowed: tuple[str, ...], root: Path = ROOT) -> list[str]:
    wrong = []
    for path in sorted(folder.rglob("*.py")):
        for module in _imported_modules(path):
            top = module.split(".")[0]
            if top in LAYER_FOLDERS:
                wrong.append(f"{path.relative_to(root)} imports top-level {module}")
            elif top == "retrieval" and module != "retrieval" and not module.startswith(allowed):
                wrong.append(f"{path.relative_to(root)} imports {module}")
            elif module == "retrieval" and allowed != ("retrieval",):
                wrong.append(f"{path.relative_to(root)} imports the package root")
    return wrong


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_one_way(layer: str) -> None:
    assert _wrong_imports(ROOT / layer, ALLOWED[layer]) == []


def test_every_layer_may_import_common() -> None:
    """retrieval.common is the bottom: each layer's allowance names it, and it is installed."""
    assert all("retrieval.common" in allowed for allowed in ALLOWED.values())
    import retrieval.common.atomic as atomic

    assert Path(atomic.__file__).resolve().parent == ROOT / "common"


def test_common_imports_only_itself_and_the_standard_library() -> None:
    third_party = {"numpy", "pyarrow", "faiss", "torch", "duckdb", "typer", "rich", "scipy", "sklearn"}
    found = [f"{path.name}: {module}" for path in sorted((ROOT / "common").rglob("*.py"))
             for module in _imported_modules(path) if module.split(".")[0] in third_party]
    assert found == []
    assert _wrong_imports(ROOT / "common", ("retrieval.common",)) == []


def test_the_layer_check_sees_a_wrong_import(tmp_path: Path) -> None:
    (tmp_path / "bad.py").write_text("from retrieval.eval.protocol import RankingLabels\nimport data.store\n")
    assert len(_wrong_imports(tmp_path, ("retrieval.common",), root=tmp_path)) == 2
