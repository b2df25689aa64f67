"""bench/forked_cli.py: commands forked from a warm server behave as `retrieve` processes do
(exit status, stdout, stderr, working folder, environment, SIGKILL), and the tour's lines split
as bash splits them."""

from __future__ import annotations

from pathlib import Path

import pytest
from forked_cli import Commands  # bench/ is on sys.path (tests/conftest.py)
from test_tour import commands_of


@pytest.fixture(scope="module")
def commands(tmp_path_factory):
    env = {"RETRIEVE_WORKSPACE": str(tmp_path_factory.mktemp("ws")), "PATH": "/usr/bin:/bin", "COLUMNS": "100"}
    return Commands(("retrieval.cli",), env=env)


def _sleeper(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "woke"


def test_exit_status_and_output_are_the_commands_own(commands, tmp_path):
    from retrieval import __version__

    done = commands.run(["--version"], cwd=tmp_path)
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, f"retrieve {__version__}", "")
    done = commands.run(["evaluate", "missing.parquet"], cwd=tmp_path)
    assert done.returncode == 1 and done.stderr.strip() == "retrieve: error: missing.parquet: no such file"
    done = commands.run(["evaluate", "--no-such-option"], cwd=tmp_path)
    assert done.returncode == 2 and "No such option" in done.stderr


def test_working_folder_and_environment_are_the_commands(commands, tmp_path):
    done = commands.run(["synth", "--preset", "small", "--seed", "1", "--out", "s.parquet"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "s.parquet").is_file()
    done = commands.run(["evaluate", "s.parquet", "--json"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    runs = list(Path(commands.env["RETRIEVE_WORKSPACE"]).glob("*/run.json"))  # the run goes to $RETRIEVE_WORKSPACE
    assert len(runs) == 1 and not (tmp_path / "retrieve-runs").exists()


def test_a_killed_command_ends_by_sigkill(commands, tmp_path):
    started = commands.start(["synth", "--preset", "market", "--out", "big.parquet"], cwd=tmp_path)
    assert started.wait(timeout=0.05) is None  # still running
    assert started.kill() == -9 and started.returncode == -9
    assert not (tmp_path / "big.parquet").exists()  # an atomic output: nothing half-written is visible


def test_a_function_runs_in_a_forked_child(commands):
    assert commands.call(_sleeper, 0.0) == "woke"


@pytest.mark.parametrize("line, expected", [
    ("retrieve info a.parquet      # a comment", [["info", "a.parquet"]]),
    ('retrieve sql "SELECT 1 AS x"', [["sql", "SELECT 1 AS x"]]),
    ("retrieve train --out m && retrieve embed m --out e.parquet", [["train", "--out", "m"], ["embed", "m", "--out", "e.parquet"]]),
])
def test_tour_lines_split_as_bash_splits_them(line, expected):
    assert commands_of(line) == expected


@pytest.mark.parametrize("line", ["retrieve runs | head", "python -c 1", "retrieve runs; retrieve sql x"])
def test_tour_lines_that_are_not_retrieve_commands_are_refused(line):
    with pytest.raises(AssertionError, match="more than `retrieve ...` commands"):
        commands_of(line)
