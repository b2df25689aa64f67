"""`retrieve` commands as processes forked from one warm interpreter (multiprocessing's forkserver).

A new interpreter pays about a second of CPU importing numpy, pyarrow, pandas, faiss, DuckDB,
typer and rich before a command does anything; torch adds 3 to 4 s (with the ``torch._dynamo``
an optimizer imports) and scikit-learn about 2 s. The fault campaign (``bench/faults.py``) and the
tour test (``tests/test_tour.py``) start dozens of commands. Here each command is still a process
of its own, with its own exit code, working folder, environment, stdout and stderr, killable with
SIGKILL, but forked from a server that imported those modules once, so it starts in milliseconds.

What a command does is what ``retrieve ARGV...`` does: the same entry point (``retrieval.cli.main``)
with the same ``sys.argv``, exit status from its ``SystemExit``, and a traceback on stderr with
status 1 for an uncaught exception. Only the interpreter start is skipped; the console script
itself is checked by ``tests/test_namespace.py``.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import sys
import tempfile
import weakref
from dataclasses import dataclass
from pathlib import Path

# What the commands import lazily, loaded once in the server (a module that fails to import is skipped).
PRELOAD = ("retrieval.cli", "numpy", "pyarrow.parquet", "pyarrow.compute", "pandas", "faiss", "duckdb",
           "retrieval.jobs.evaluate", "retrieval.jobs.index", "retrieval.report", "matplotlib.pyplot")
TRAINING = ("torch", "torch._dynamo", "retrieval.train.trainer")  # for `train` and `embed`
CLUSTERING = ("sklearn.metrics",)  # NMI / ARI of `retrieve cluster`


def _command(argv: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str) -> None:
    """The child: the command's folder, environment and output files, then the entry point."""
    os.chdir(cwd)
    os.environ.clear()
    os.environ.update(env)
    for fd, path in ((1, stdout), (2, stderr)):
        handle = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(handle, fd)
        os.close(handle)
    from retrieval.cli import main

    sys.argv = ["retrieve", *argv]
    main()  # its SystemExit is the process's exit status (multiprocessing's bootstrap)


def _call(writer, fn, args) -> None:
    writer.send(fn(*args))
    writer.close()


@dataclass
class Started:
    """A running command: wait for it, kill it, read what it wrote."""

    process: multiprocessing.process.BaseProcess
    stdout_path: Path
    stderr_path: Path

    def wait(self, timeout: float | None = None) -> int | None:
        """Its exit status (negative: the signal that ended it); None while it still runs after ``timeout``."""
        self.process.join(timeout)
        return self.process.exitcode

    def kill(self) -> int:
        """SIGKILL, as a crashed or pre-empted machine would."""
        self.process.kill()
        self.process.join()
        return self.process.exitcode

    @property
    def returncode(self) -> int | None:
        return self.process.exitcode

    @property
    def stdout(self) -> str:
        return _text(self.stdout_path)

    @property
    def stderr(self) -> str:
        return _text(self.stderr_path)


def _text(path: Path) -> str:
    """What the command wrote there ("" when it was killed before it opened the file)."""
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


@dataclass
class Finished:
    """A finished command, like ``subprocess.CompletedProcess``."""

    argv: list[str]
    returncode: int
    stdout: str
    stderr: str


class Commands:
    """Starts ``retrieve`` commands forked from one server that preloaded ``preload`` (started on first use).

    The forkserver is one per process (multiprocessing's); when something else already started
    it, commands still run correctly, only without these preloads. As with any multiprocessing
    start method but fork, each child imports the caller's main script again (not ``-m`` modules
    such as pytest): keep a script's work under ``if __name__ == "__main__"``.
    """

    def __init__(self, preload: tuple[str, ...] = PRELOAD, env: dict[str, str] | None = None):
        self.context = multiprocessing.get_context("forkserver")
        self.context.set_forkserver_preload(list(preload))
        self.env = dict(os.environ if env is None else env)
        self.outputs = Path(tempfile.mkdtemp(prefix="retrieve-commands-"))  # the commands' stdout and stderr files
        weakref.finalize(self, shutil.rmtree, self.outputs, True)
        self.count = 0

    def warm(self) -> None:
        """Start the server and load its preloads now (the first command would otherwise pay for them)."""
        done = self.run(["--version"], cwd=self.outputs)
        if done.returncode != 0:
            raise RuntimeError(f"retrieve --version failed in the fork server: {done.stderr[-500:]}")

    def start(self, argv: list[str], cwd: Path | str) -> Started:
        self.count += 1
        out, err = self.outputs / f"{self.count}.out", self.outputs / f"{self.count}.err"
        process = self.context.Process(target=_command, args=(list(argv), str(cwd), self.env, str(out), str(err)),
                                       name=f"retrieve {' '.join(argv[:1])}")
        process.start()
        return Started(process, out, err)

    def call(self, fn, *args):
        """``fn(*args)`` in a forked child, where the preloads are (a module-level function; its result pickled back)."""
        reader, writer = self.context.Pipe(duplex=False)
        process = self.context.Process(target=_call, args=(writer, fn, args))
        process.start()
        writer.close()
        try:
            result = reader.recv()
        except EOFError:
            process.join()
            raise RuntimeError(f"{fn.__name__} failed in a forked child (exit {process.exitcode})") from None
        process.join()
        return result

    def run(self, argv: list[str], cwd: Path | str, timeout: float | None = None) -> Finished:
        """Run one command to its end (killed after ``timeout`` seconds: status -9)."""
        started = self.start(argv, cwd)
        code = started.wait(timeout)
        if code is None:
            code = started.kill()
        return Finished(list(argv), code, started.stdout, started.stderr)
