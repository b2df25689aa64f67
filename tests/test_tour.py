"""The README's tour runs as written: every command of its block, in order, in an empty folder.

The commands are the README's own lines. To keep the test within a minute or two, a few
arguments are rewritten on the way (``SMALLER``): the Market-shaped preset becomes the ``small``
preset (same layout: queries, gallery, cameras, junk, distractors; 2,300 rows of 128-D instead of
19,281 of 2,048-D) and training runs one epoch on one thread instead of its full schedule (a later
option wins, so the README's own options stay in the line). Nothing else is
changed; a line that the rewrites no longer find fails the test, so the README and this list
cannot drift apart silently.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"

# (pattern, replacement, what it is for): applied to every tour line, each must match at least once.
SMALLER: list[tuple[str, str, str]] = [
    (r"--preset market\b", "--preset small", "the small preset has the Market layout at 1/8 the rows"),
    (r"(retrieve train [^&]*?)\s*(&&|$)", r"\1 --epochs 1 --threads 1 \2",
     "one epoch of the README's recipe, on one thread (the fastest for 8×8 images)"),
]


def tour_lines(readme: str) -> list[str]:
    """The commands of the first ```bash block after the '## The tour' heading (continuations joined)."""
    section = readme.split("\n## The tour\n", 1)
    assert len(section) == 2, "README.md has no '## The tour' section"
    block = re.search(r"```bash\n(.*?)```", section[1], flags=re.S)
    assert block is not None, "the tour section has no ```bash block"
    lines: list[str] = []
    pending = ""
    for raw in block.group(1).splitlines():
        if raw.rstrip().endswith("\\"):
            pending += raw.rstrip()[:-1] + " "
            continue
        line = (pending + raw).strip()
        pending = ""
        if line and not line.startswith("#"):
            lines.append(line)
    return lines


def smaller(lines: list[str]) -> list[str]:
    out = list(lines)
    for pattern, replacement, why in SMALLER:
        hits = 0
        for i, line in enumerate(out):
            out[i], n = re.subn(pattern, replacement, line)
            hits += n
        assert hits, f"the tour no longer contains {pattern!r} ({why}): update SMALLER in {__file__}"
    return out


def retrieve_on_path(folder: Path) -> dict[str, str]:
    """An environment whose PATH finds this interpreter's `retrieve` (the installed console script)."""
    scripts = Path(sys.executable).parent
    if not (scripts / "retrieve").exists():  # not installed as a script: a shim that runs the same entry point
        folder.mkdir()
        shim = folder / "retrieve"
        shim.write_text(f"#!/bin/sh\nexec {shlex.quote(sys.executable)} -c "
                        "'import sys; from retrieval.cli import main; sys.argv[0] = \"retrieve\"; main()' \"$@\"\n")
        shim.chmod(0o755)
        scripts = folder
    env = {k: v for k, v in os.environ.items() if k != "RETRIEVE_WORKSPACE"}
    env["PATH"] = f"{scripts}{os.pathsep}{env.get('PATH', '')}"
    env["COLUMNS"] = "120"
    return env


def test_the_tour_block_is_found_and_every_command_is_rewritable():
    lines = tour_lines(README.read_text())
    assert len(lines) >= 10 and all(line.startswith("retrieve ") for line in lines)
    # verification on the lfw preset is part of the tour: synth writes the pairs file verify reads
    synth = next(i for i, line in enumerate(lines) if "synth --preset lfw" in line)
    verify = next(i for i, line in enumerate(lines) if line.startswith("retrieve verify "))
    assert synth < verify and "--pairs lfw.pairs.txt" in lines[verify]
    small = smaller(lines)
    assert not any("--preset market" in line for line in small)


@pytest.mark.slow
def test_every_tour_command_runs_in_order(tmp_path):
    if shutil.which("bash") is None:
        pytest.fail("the tour is bash; bash is not on PATH")
    work = tmp_path / "tour"
    work.mkdir()
    env = retrieve_on_path(tmp_path / "bin")
    for number, line in enumerate(smaller(tour_lines(README.read_text())), start=1):
        done = subprocess.run(["bash", "-c", line], cwd=work, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, (
            f"tour line {number} exited {done.returncode}: {line}\n--- stderr ---\n{done.stderr[-3000:]}"
            f"\n--- stdout ---\n{done.stdout[-2000:]}"
        )
    assert (work / "report.html").is_file() and (work / "lfw.pairs.txt").is_file()
    assert (work / "digits.parquet").is_file() and (work / "retrieve-runs" / "reranked" / "run.json").is_file()
