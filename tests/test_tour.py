"""The README's tour runs as written: every command of its block, in order, in an empty folder.

The commands are the README's own lines. To keep the test within a minute, a few arguments are
rewritten on the way (``SMALLER``): the Market-shaped preset becomes the ``small`` preset (same
layout: queries, gallery, cameras, junk, distractors; 2,300 rows of 128-D instead of 19,281 of
2,048-D) and training runs one epoch on one thread instead of its full schedule (a later option
wins, so the README's own options stay in the line). Nothing else is changed; a line that the
rewrites no longer find fails the test, so the README and this list cannot drift apart silently.

Each command is a process of its own, forked from one interpreter that imported the engine once
(``bench/forked_cli.py``: the interpreter start of 22 commands was a third of this test's CPU).
The lines are split as bash splits them (``shlex``; an ``&&`` chain stops at its first failure).
The installed ``retrieve`` script itself is run by ``tests/test_namespace.py``.

The ``--ray local:2`` line runs with ``RAY_ADDRESS`` naming another cluster, as on a machine where
``ray start`` left one (or a notebook's shell exported it): ``local:N`` must start an instance of its
own there (Ray's ``address="local"``); joining would refuse ``num_cpus``, and with ``None`` or
``"auto"`` Ray would go to that address. Its run folder equals the one-process run's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from pathlib import Path

import pytest
from forked_cli import CLUSTERING, PRELOAD, TRAINING, Commands  # bench/ is on sys.path (tests/conftest.py)
from _ray_cases import assert_same_run_folders

README = Path(__file__).resolve().parents[1] / "README.md"
ANOTHER_CLUSTER = "127.0.0.1:1"  # RAY_ADDRESS during the tour: nothing listens there

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


def commands_of(line: str) -> list[list[str]]:
    """A tour line's commands, split as bash splits them: words, a trailing comment dropped, ``&&`` chains."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)  # `&&`, `;`, `|` are tokens of their own
    lexer.whitespace_split, lexer.commenters = True, "#"
    words = list(lexer)
    chain: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            chain.append([])
        else:
            chain[-1].append(word)
    assert all(c and c[0] == "retrieve" for c in chain) and not any(set(w) <= set("();<>|&") and w != "&&" for w in words), (
        f"the tour line is more than `retrieve ...` commands joined by &&: {line}")
    return [c[1:] for c in chain]


def test_the_tour_block_is_found_and_every_command_is_rewritable():
    lines = tour_lines(README.read_text())
    assert len(lines) >= 10 and all(line.startswith("retrieve ") for line in lines)
    # verification on the lfw preset is part of the tour: synth writes the pairs file verify reads
    synth = next(i for i, line in enumerate(lines) if "synth --preset lfw" in line)
    verify = next(i for i, line in enumerate(lines) if line.startswith("retrieve verify "))
    assert synth < verify and "--pairs lfw.pairs.txt" in lines[verify]
    small = smaller(lines)
    assert not any("--preset market" in line for line in small)


@pytest.mark.slow(seconds=30)
def test_every_tour_command_runs_in_order(tmp_path):
    work = tmp_path / "tour"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "RETRIEVE_WORKSPACE"}
    env["COLUMNS"] = "120"
    env["RAY_worker_niceness"] = "0"  # the --ray line's workers, at the priority of the suite's processes beside them
    env["RAY_ADDRESS"] = ANOTHER_CLUSTER  # `--ray local:2` must not go there
    commands = Commands(PRELOAD + TRAINING + CLUSTERING, env=env)
    for number, line in enumerate(smaller(tour_lines(README.read_text())), start=1):
        for argv in commands_of(line):
            done = commands.run(argv, cwd=work, timeout=600)
            assert done.returncode == 0, (
                f"tour line {number} exited {done.returncode}: {line}\n--- stderr ---\n{done.stderr[-3000:]}"
                f"\n--- stdout ---\n{done.stdout[-2000:]}"
            )
    assert (work / "report.html").is_file() and (work / "lfw.pairs.txt").is_file()
    assert (work / "digits.parquet").is_file() and (work / "retrieve-runs" / "reranked" / "run.json").is_file()
    runs = work / "retrieve-runs"
    on_ray = json.loads((runs / "on-ray" / "run.json").read_text())["cluster"]
    assert on_ray["started_here"] and on_ray["nodes"] == 1 and on_ray["cpus"] == 2, on_ray
    assert on_ray["address"] != ANOTHER_CLUSTER
    assert_same_run_folders(runs / "plain", runs / "on-ray")
