"""Suite-wide: ``bench/`` on the import path, and the collection order.

``bench/`` stays on ``sys.path`` for the whole session: the tour test and ``test_forked_cli.py``
import ``bench/forked_cli.py``, and the fork server it starts finds it there.

The files that hold ``slow`` tests run first, the costliest first.

``@pytest.mark.slow(seconds=N)``: N is about the CPU seconds the file's slow tests take on the
2-core machine the suite is timed on. With pytest-xdist (``-n auto --dist loadfile``, and
``--no-loadscope-reorder`` in pyproject.toml) each file goes whole to the next free worker in this
order, so the Ray cluster, the tour and the fault campaign start at once and the many short files
fill in beside them; started last, one of them kept a worker busy for a minute after the others.

The tour and the fault campaign go to the same worker (``ONE_WORKER``): both fork their commands
from a fork server that imported the engine, torch and scikit-learn (about 6 s of CPU to start),
and there is one per process.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))


# files whose tests run on one worker, as one unit (the scope's name: the first file)
ONE_WORKER = ("tests/test_tour.py", "tests/test_faults.py")


def pytest_xdist_make_scheduler(config, log):
    """``--dist loadfile`` with the files of ``ONE_WORKER`` as one unit (None: xdist's own scheduler)."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class Scheduling(LoadFileScheduling):
        def _split_scope(self, nodeid: str) -> str:
            scope = super()._split_scope(nodeid)
            return ONE_WORKER[0] if scope in ONE_WORKER else scope

    return Scheduling(config, log)


def _cost(item) -> float:
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("seconds", 1)) if marker else 0.0


def pytest_collection_modifyitems(config, items) -> None:
    cost: dict = {}
    for item in items:
        cost[item.path] = max(cost.get(item.path, 0.0), _cost(item))
    items.sort(key=lambda item: -cost[item.path])  # stable: a file's tests, and files of equal cost, keep their order
