"""Faults (issue 11 §4): runs killed with SIGKILL at random moments lose nothing and leave nothing
half-written. Runs bench/faults.py's campaign with a few attempts (docs/runs.md gives a longer
campaign's figures). The campaign runs in this process: its commands are forked from the same fork
server as the tour's (``bench/forked_cli.py``; one per process), so the engine, torch and
scikit-learn are imported once for both."""

from __future__ import annotations

import pytest
from _torch import requires_torch
from faults import TRAIN_EPOCHS, campaign  # bench/ is on sys.path (tests/conftest.py)
from forked_cli import CLUSTERING, PRELOAD, TRAINING


@requires_torch  # the campaign kills training runs too; torch is imported by the fork server, not here
@pytest.mark.slow(seconds=20)
def test_killed_runs_lose_nothing_and_leave_nothing_half_written(tmp_path):
    figures = campaign(tmp_path, attempts=6, seed=1, preload=PRELOAD + TRAINING + CLUSTERING)
    assert figures["kills"] >= 1, "nothing was killed: the campaign tested nothing"
    assert figures["runs_lost"] == [] and figures["visible_incomplete"] == [], figures
    assert figures["visible_temporaries"] == [] and figures["tracebacks"] == 0, figures
    assert figures["index_folders_unclear"] == [] and figures["failed_cleanly"] == [], figures
    assert figures["train_resumes_that_went_back"] == [], figures
    assert figures["train_resume_exit"] == 0 and figures["train_epochs_done"] == TRAIN_EPOCHS, figures
    assert figures["ok"]
