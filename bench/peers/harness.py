"""The measuring side of the peer benchmarks: child processes, timing, peak RSS, JSON, tables.

Every contender runs in a process of its own (``run_child``): the wall time is measured here around
the whole process (interpreter start, imports, reading the data, the work, exit) and its peak RSS
is that child's own ``ru_maxrss`` (``os.wait4``), so memory held by Arrow, BLAS or torch buffers is
counted, unlike ``tracemalloc``. Runs of the contenders of one table are interleaved (round 1 of
every contender, then round 2, ...) so that load from other jobs hits every contender alike, and
the minimum over rounds is reported.

A child may write a JSON object to the file named by ``$BENCH_RESULT`` (phases timed inside the
process, metrics, notes); ``child.py`` does this for every contender of ours and of the peers.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = REPO / "bench" / "results"
VENV = Path(os.environ.get("BENCH_VENV", HERE / ".venv"))
PYTHON = VENV / "bin" / "python"
CHILD = HERE / "child.py"
DATA = Path(os.environ.get("BENCH_DATA", HERE / ".data"))


# ----------------------------------------------------------------------------- child processes


@dataclass
class ChildRun:
    """One process: wall seconds, peak RSS, exit status, what it printed and reported."""

    argv: list[str]
    wall_s: float
    peak_rss_mb: float
    returncode: int
    stdout: str
    stderr: str
    report: dict = field(default_factory=dict)
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and "error" not in self.report

    def error_line(self) -> str | None:
        """The one line that says why a run failed (the child's own error, else the last stderr line)."""
        if self.ok:
            return None
        if self.timed_out:
            return f"timed out after {self.wall_s:.0f} s"
        if "error" in self.report:
            return self.report["error"]
        if self.returncode < 0:
            name = signal.Signals(-self.returncode).name
            hint = " (the kernel's OOM killer?)" if name == "SIGKILL" else ""
            return f"killed by {name}{hint}"
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else f"exit code {self.returncode}"


GNU_TIME = Path("/usr/bin/time")


def _wrapped(argv: list[str], cap_bytes: int | None, rusage_file: Path) -> list[str]:
    """The command line that measures ``argv``: capped by the shell's ulimit, run under GNU time.

    A child's ru_maxrss starts at the RSS of the process that forked it (Linux carries the old
    address space's high-water mark across exec), so the contender is forked by GNU time, a 2 MB
    process, which writes the contender's own peak RSS (%M) to ``rusage_file``. Without
    /usr/bin/time the contender is forked by this process (a few tens of MB) and wait4 measures it.
    """
    if GNU_TIME.exists():
        argv = [str(GNU_TIME), "-f", "%M", "-o", str(rusage_file), *argv]
    if cap_bytes:
        argv = ["/bin/sh", "-c", f'ulimit -v {cap_bytes // 1024} && exec "$@"', "sh", *argv]
    return argv


def _gnu_time_result(rusage_file: Path, returncode: int, wait4_maxrss_kb: int) -> tuple[float, int]:
    """(peak RSS in MB, exit code) from GNU time's file: its last line is %M; it names a killing signal."""
    if not rusage_file.exists():
        return wait4_maxrss_kb / 1024, returncode
    lines = [line.strip() for line in rusage_file.read_text().splitlines() if line.strip()]
    peak_kb = int(lines[-1]) if lines and lines[-1].isdigit() else wait4_maxrss_kb
    for line in lines:
        if line.startswith("Command terminated by signal"):
            returncode = -int(line.rsplit(" ", 1)[1])
    return peak_kb / 1024, returncode


def run_child(argv: Sequence[str], *, mem_cap_bytes: int | None = None, timeout_s: float | None = None,
              env: dict[str, str] | None = None, cwd: Path | None = None) -> ChildRun:
    """Run one process to its end; wall time around the whole process, its own peak RSS."""
    argv = [str(a) for a in argv]
    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        out_path, err_path, report_path = Path(tmp, "stdout"), Path(tmp, "stderr"), Path(tmp, "report.json")
        rusage_path = Path(tmp, "rusage")
        child_env = {**os.environ, **(env or {}), "BENCH_RESULT": str(report_path)}
        with open(out_path, "wb") as out, open(err_path, "wb") as err:
            start = time.perf_counter()
            proc = subprocess.Popen(_wrapped(argv, mem_cap_bytes, rusage_path), stdout=out, stderr=err,
                                    stdin=subprocess.DEVNULL, env=child_env, cwd=cwd, start_new_session=True)
            timer, fired = None, threading.Event()
            if timeout_s:
                def kill() -> None:
                    fired.set()
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                timer = threading.Timer(timeout_s, kill)
                timer.start()
            _, status, usage = os.wait4(proc.pid, 0)
            wall = time.perf_counter() - start
            if timer:
                timer.cancel()
            proc.returncode = os.waitstatus_to_exitcode(status)
        peak_mb, returncode = _gnu_time_result(rusage_path, proc.returncode, usage.ru_maxrss)
        report = {}
        if report_path.exists():
            try:
                report = json.loads(report_path.read_text())
            except json.JSONDecodeError as exc:
                report = {"error": f"unreadable child report: {exc}"}
        return ChildRun(argv, wall, peak_mb, returncode, out_path.read_text(errors="replace"),
                        err_path.read_text(errors="replace"), report, fired.is_set())


def child_argv(contender: str, *args: Any) -> list[str]:
    """A contender of child.py, run by the bench environment's interpreter."""
    return [str(PYTHON), str(CHILD), contender, *[str(a) for a in args]]


# ----------------------------------------------------------------------------- rounds of contenders


@dataclass
class Contender:
    """A row of a table: how to start one run, and whether it runs every round or once."""

    name: str
    label: str  # what the table shows: the toolkit and the exact function called
    argv: Callable[[int], list[str]]  # round index -> argv (e.g. a fresh output folder per run)
    repeats: int | None = None  # None: the table's repeats; 1 for the slow ones
    timeout_s: float | None = None
    group: str = ""  # e.g. the data shape the row belongs to
    kind: str = "peer"  # "ours", "peer" or "floor"
    parse_stdout_json: bool = False  # ours' CLI prints one JSON object (--json)
    best_by: Callable[["ChildRun"], float] | None = None  # which run is the best (default: the least wall time)


def run_rounds(contenders: Sequence[Contender], repeats: int, mem_cap_bytes: int | None,
               log: Callable[[str], None] = print, stop_after_failure: bool = True) -> dict[str, list[ChildRun]]:
    """Interleaved rounds; a contender that failed (crash, out of memory) is not run again."""
    runs: dict[str, list[ChildRun]] = {c.name: [] for c in contenders}
    for round_index in range(repeats):
        for c in contenders:
            wanted = repeats if c.repeats is None else min(c.repeats, repeats)
            done = runs[c.name]
            if len(done) >= wanted or (stop_after_failure and done and not done[-1].ok):
                continue
            run = run_child(c.argv(round_index), mem_cap_bytes=mem_cap_bytes, timeout_s=c.timeout_s)
            if c.parse_stdout_json and run.returncode == 0:
                try:
                    run.report.setdefault("cli_json", json.loads(run.stdout))
                except json.JSONDecodeError as exc:
                    run.report["error"] = f"--json output is not one JSON object: {exc}"
            done.append(run)
            state = "ok" if run.ok else f"FAILED: {run.error_line()}"
            log(f"  [{round_index + 1}/{repeats}] {c.name:28} {run.wall_s:8.2f} s {run.peak_rss_mb:8.0f} MB  {state}")
    return runs


def summarise(c: Contender, runs: list[ChildRun]) -> dict:
    """One row: min wall over the successful runs, max peak RSS, the fastest run's phases and metrics."""
    row: dict[str, Any] = {"name": c.name, "label": c.label, "group": c.group, "kind": c.kind}
    good = [r for r in runs if r.ok]
    row["runs"] = len(runs)
    row["wall_s_all"] = [round(r.wall_s, 4) for r in runs]
    row["peak_rss_mb_all"] = [round(r.peak_rss_mb, 1) for r in runs]
    if not good:
        failed = runs[-1] if runs else None
        row["error"] = failed.error_line() if failed else "not run"
        row["peak_rss_mb"] = failed.peak_rss_mb if failed else None
        row["wall_s"] = failed.wall_s if failed else None
        if failed is not None:
            row["stderr_tail"] = failed.stderr[-2000:]
            row["report"] = failed.report
        return row
    best = min(good, key=c.best_by or (lambda r: r.wall_s))
    row["wall_s"] = best.wall_s
    row["peak_rss_mb"] = max(r.peak_rss_mb for r in good)
    row["report"] = best.report
    return row


# ----------------------------------------------------------------------------- the child side


class Phases:
    """In-child timing of named phases: ``with phases("load"): ...``; ``phases.report(...)``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}  # the process's peak RSS when each phase ended
        self.start = time.perf_counter()

    def __call__(self, name: str) -> "_Phase":
        return _Phase(self, name)

    def add(self, name: str, seconds: float) -> None:
        self.times[name] = self.times.get(name, 0.0) + seconds


class _Phase:
    def __init__(self, phases: Phases, name: str) -> None:
        self.phases, self.name = phases, name

    def __enter__(self) -> None:
        self.t0 = time.perf_counter()

    def __exit__(self, *exc) -> None:
        self.phases.add(self.name, time.perf_counter() - self.t0)
        self.phases.peak_rss_mb[self.name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_report(report: dict) -> None:
    """The child's JSON report, to the file the parent named (stdout when run by hand)."""
    text = json.dumps(report, indent=2, default=_jsonable)
    target = os.environ.get("BENCH_RESULT")
    if target:
        Path(target).write_text(text + "\n")
    else:
        print(text)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# ----------------------------------------------------------------------------- machine, memory


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or "unknown"


def meminfo_bytes(key: str) -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def default_mem_cap() -> int:
    """Address-space cap for each child: what is free now, less 2 GiB for the other jobs here.

    A peer that needs more fails with its own MemoryError instead of waking the OOM killer on a
    machine shared with others; the cap is recorded with the results.
    """
    available = meminfo_bytes("MemAvailable") or 8 << 30
    return max(2 << 30, available - (2 << 30))


def machine_info() -> dict:
    """CPU, cores, memory and load here; BLAS kernels as a bench-environment child reports them."""
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "mem_total_gb": round((meminfo_bytes("MemTotal") or 0) / 2**30, 1),
        "mem_available_gb": round((meminfo_bytes("MemAvailable") or 0) / 2**30, 1),
        "load_average_1_5_15": list(os.getloadavg()),
        "env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OMP_NUM_THREADS",
                                           "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS") if k in os.environ},
    }
    probe = run_child(child_argv("machine"), timeout_s=300)
    info.update(probe.report if probe.ok else {"blas_probe_error": probe.error_line()})
    return info


def bench_status() -> dict:
    path = VENV / "peers-status.json"
    return json.loads(path.read_text()) if path.exists() else {"error": f"{path} missing: run bench/peers/setup"}


def require_venv() -> None:
    if not PYTHON.exists():
        sys.exit(f"{PYTHON} not found: run bench/peers/setup first")


def bench_parser(doc: str, shapes: str) -> argparse.ArgumentParser:
    """The options every table script shares: --shapes, --repeats, --mem-cap-gb."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=shapes)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (the minimum is reported)")
    parser.add_argument("--mem-cap-gb", type=float, help="address-space cap per child (default: free memory − 2 GiB)")
    return parser


def start(parser: argparse.ArgumentParser, results_name: str) -> tuple[argparse.Namespace, int, dict, dict]:
    """Parse, check the environment; (args, memory cap, shapes already in the results file, machine)."""
    args = parser.parse_args()
    require_venv()
    mem_cap = int(args.mem_cap_gb * 2**30) if args.mem_cap_gb else default_mem_cap()
    path = RESULTS / f"peers_{results_name}.json"
    shapes = dict((json.loads(path.read_text()) if path.exists() else {}).get("shapes", {}))
    return args, mem_cap, shapes, machine_info()


# ----------------------------------------------------------------------------- output


def write_results(name: str, payload: dict) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"peers_{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=_jsonable) + "\n")
    tmp.replace(path)
    return path


def fmt(value: Any, spec: str = ".2f", missing: str = "—") -> str:
    if value is None:
        return missing
    if isinstance(value, float) and value != value:  # NaN
        return missing
    try:
        return format(value, spec)
    except (TypeError, ValueError):
        return str(value)


def table(rows: Iterable[Sequence[str]], header: Sequence[str]) -> str:
    """A GitHub-markdown table (also readable on a terminal)."""
    rows = [list(map(str, r)) for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    line = lambda cells: "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    out = [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in rows]
    return "\n".join(out)
