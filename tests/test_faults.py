"""Faults (issue 11 §4): runs killed with SIGKILL at random moments lose nothing and leave nothing
half-written. Runs bench/faults.py with a few attempts (docs/runs.md gives a longer campaign's figures)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CAMPAIGN = Path(__file__).resolve().parents[1] / "bench" / "faults.py"


@pytest.mark.slow(seconds=20)
def test_killed_runs_lose_nothing_and_leave_nothing_half_written(tmp_path):
    pytest.importorskip("torch", reason="the campaign kills training runs too (the `train` extra)")
    done = subprocess.run([sys.executable, str(CAMPAIGN), "--attempts", "6", "--seed", "1", "--json",
                           "--folder", str(tmp_path)], capture_output=True, text=True, timeout=1200)
    assert done.stdout, done.stderr[-3000:]
    figures = json.loads(done.stdout)
    assert figures["kills"] >= 1, "nothing was killed: the campaign tested nothing"
    assert figures["runs_lost"] == [] and figures["visible_incomplete"] == [], figures
    assert figures["visible_temporaries"] == [] and figures["tracebacks"] == 0, figures
    assert figures["index_folders_unclear"] == [] and figures["failed_cleanly"] == [], figures
    assert figures["train_resumes_that_went_back"] == [], figures
    assert figures["train_resume_exit"] == 0 and figures["train_epochs_done"] == 3, figures
    assert done.returncode == 0 and figures["ok"]
