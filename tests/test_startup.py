"""Start-up: `retrieve --help` and `--version` load the command line, not the engine."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("numpy", "pyarrow", "faiss", "duckdb", "torch", "scipy", "sklearn", "matplotlib")


def test_the_command_line_imports_no_heavy_library():
    code = (
        "import sys\n"
        "from retrieval.cli import app\n"
        f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == []
