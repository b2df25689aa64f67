"""Start N copies of one `retrieve` command at the same instant (forked after one import) and report
each one's exit code and stderr as JSON: ``python _concurrent_writers.py N WORKDIR ARG...``."""

from __future__ import annotations

import json
import os
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from retrieval.cli import run

def main() -> None:
    count, workdir, argv = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
    # One warm-up run (to another --out) first, so that each child finds every lazy import done.
    warm = list(argv)
    warm[warm.index("--out") + 1] = str(workdir / "warm-up")
    with open(os.devnull, "w") as quiet, redirect_stdout(quiet), redirect_stderr(quiet):
        run(warm)
    start_read, start_write = os.pipe()
    children = []
    for number in range(count):
        pid = os.fork()
        if pid == 0:
            os.close(start_write)
            err = os.open(workdir / f"stderr-{number}.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            out = os.open(os.devnull, os.O_WRONLY)
            os.dup2(err, 2)
            os.dup2(out, 1)
            os.read(start_read, 1)  # every child waits here until all are forked
            try:
                code = run(argv)
            except BaseException:  # a traceback is what the test looks for: keep it on stderr
                import traceback

                traceback.print_exc()
                code = 99
            sys.stderr.flush()
            os._exit(code)
        children.append(pid)
    os.close(start_read)
    os.close(start_write)  # releases them all at once
    results = []
    for number, pid in enumerate(children):
        _, status = os.waitpid(pid, 0)
        results.append({"code": os.waitstatus_to_exitcode(status),
                        "stderr": (workdir / f"stderr-{number}.txt").read_text()})
    print(json.dumps(results))


if __name__ == "__main__":
    main()
