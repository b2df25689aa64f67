"""Running shard tasks on the cluster: remote functions with retries, one progress bar, clear errors.

* ``remote(fn)``: ``fn`` as a Ray task that Ray runs again when its worker dies (``max_retries``);
  a Python exception (bad input) is not retried, and its original type and message reach the
  caller (``gather``), so a user mistake on a worker is the same one-line error as in one process.
* ``gather(refs, progress, stage)``: the results in order, the bar advancing shard by shard.
* ``fault_point(stage)``: a test hook. With ``RETRIEVE_RAY_FAULTS=DIR`` in the workers' environment,
  the first task that reaches ``stage`` while ``DIR/kill-<stage>`` exists removes the file and
  kills its own worker process (SIGKILL): what a crashed or pre-empted node looks like to Ray.
"""

from __future__ import annotations

import os
import signal
from typing import Any, Callable, Sequence

from retrieval.common.progress import ProgressCallback, no_progress
from retrieval.distributed.cluster import import_ray
from retrieval.errors import USER_ERRORS, RetrieveError

TASK_RETRIES = 3  # a task whose worker dies is run again up to this many times
FAULTS_ENV = "RETRIEVE_RAY_FAULTS"

_remotes: dict[tuple[Callable, tuple], Any] = {}


def remote(fn: Callable, **options):
    """``fn`` (a module-level function) as a Ray remote function, retried when its worker dies."""
    key = (fn, tuple(sorted(options.items())))
    if key not in _remotes:
        ray = import_ray()
        settings = {"max_retries": TASK_RETRIES, "retry_exceptions": False, **options}
        _remotes[key] = ray.remote(**settings)(fn)
    return _remotes[key]


def put(value: Any):
    """One copy of ``value`` in the object store, shared by every task that takes the reference."""
    return import_ray().put(value)


def gather(refs: Sequence[Any], progress: ProgressCallback | None = None, stage: str = "shards",
           on_result: Callable[[int, Any], None] | None = None) -> list[Any] | None:
    """The tasks' results in the order of ``refs``; ``progress(stage, done, total)`` as they finish.

    ``on_result(index, result)``: each result handed over as it arrives (in any order) and not
    kept (a streaming reduction on the driver); then nothing is returned.
    """
    ray = import_ray()
    progress = progress or no_progress
    index = {ref: i for i, ref in enumerate(refs)}
    pending = list(refs)
    total = len(pending)
    progress(stage, 0, total)
    try:
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            if on_result is not None:
                on_result(index[ready[0]], ray.get(ready[0]))
            progress(stage, total - len(pending), total)
        return None if on_result is not None else ray.get(list(refs))
    except ray.exceptions.RayTaskError as error:
        cause = getattr(error, "cause", None)
        if isinstance(cause, USER_ERRORS):
            raise cause from None
        raise
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError) as error:
        raise RetrieveError(f"a Ray worker was lost {TASK_RETRIES + 1} times running {stage}: "
                            f"{' '.join(str(error).split())[:200]}") from None


def fault_point(stage: str) -> None:
    """Kill this worker process once when the test hook asks for it (see the module docstring)."""
    folder = os.environ.get(FAULTS_ENV)
    if not folder:
        return
    marker = os.path.join(folder, f"kill-{stage}")
    try:
        os.unlink(marker)  # only one worker wins the marker
    except OSError:
        return
    os.kill(os.getpid(), signal.SIGKILL)
