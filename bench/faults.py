"""Fault campaign: start runs (evaluate, build-index, train), SIGKILL them at random moments, check.

Each attempt starts one `retrieve` process on the bundled sample (evaluate with re-ranking into a
new run folder, build-index into a new index folder, or train the digits model into one model
folder, resuming it when it holds a checkpoint), waits a random time between 0 and 1.2 × that
command's measured duration, and kills it with SIGKILL if it is still running. Afterwards:

* runs: every visible entry of the workspace is a complete run that `retrieve runs` lists (a
  run.json that reads, its tables readable); every attempt that finished (exit 0) is listed:
  runs lost = finished attempts not listed;
* no temporary output is visible (hidden `.<name>.<pid>-<hex>.tmp` / `.old` / `.lock` leftovers of
  killed processes in the workspace, index and model folders are counted; the next writer of the
  same output removes them);
* every index folder either loads (`retrieve index-info`) or is refused with one clear line
  (exit 1, `retrieve: error: ...`), never a traceback;
* the model folder still trains: `retrieve train ... --resume` finishes the schedule.

    .venv/bin/python bench/faults.py [--attempts 30] [--seed 0] [--folder DIR] [--json]

Prints the figures (and one JSON object with --json); exit 1 when any check fails.

Each command is a process of its own, forked from one interpreter that imported the engine (and
torch) once (``bench/forked_cli.py``): it is killed the same way, but the kill window is spent in
the command's work rather than in the interpreter's start (which wrote nothing).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

from forked_cli import PRELOAD, TRAINING, Commands, Finished

KINDS = ("evaluate", "build-index", "train")
TRAIN_EPOCHS = 3
TRAIN = ["train", "--dataset", "digits", "--epochs", str(TRAIN_EPOCHS), "--threads", "1", "--eval-every", str(TRAIN_EPOCHS)]


COMMANDS: Commands | None = None  # set by campaign()


def retrieve(argv: list[str], cwd: Path) -> Finished:
    return COMMANDS.run(argv, cwd, timeout=900)


def command(kind: str, attempt: int, folder: Path) -> list[str]:
    sample = str(folder / "sample" / "embeddings.parquet")
    if kind == "evaluate":
        return ["evaluate", sample, "--rerank", "--out", f"ws/run-{attempt:03d}", "--workspace", "ws"]
    if kind == "build-index":
        return ["build-index", sample, "--kind", "ivf", "--out", f"indexes/index-{attempt:03d}"]
    resume = ["--resume"] if (folder / "model" / "checkpoint.pt").is_file() and (folder / "model" / "config.json").is_file() else []
    return TRAIN + ["--out", "model", "--workspace", "ws"] + resume


def checkpoint_epoch(folder: Path) -> int:
    """Epochs saved in the model folder's checkpoint (0 when there is none): read in a forked child,
    where torch is loaded already (``epoch_of``)."""
    return COMMANDS.call(epoch_of, folder)


def epoch_of(folder: Path) -> int:
    import torch

    checkpoint = folder / "model" / "checkpoint.pt"
    return int(torch.load(checkpoint, weights_only=False)["epoch"]) if checkpoint.is_file() else 0


def attempt_once(kind: str, attempt: int, folder: Path, duration: float, rng: random.Random) -> dict:
    argv = command(kind, attempt, folder)
    before = checkpoint_epoch(folder) if kind == "train" else None
    delay = rng.uniform(0.0, 1.2 * duration)
    process = COMMANDS.start(argv, folder)
    killed = process.wait(timeout=delay) is None
    if killed:
        process.kill()
    stderr = process.stderr
    record = {"kind": kind, "attempt": attempt, "argv": argv, "delay": round(delay, 3), "killed": killed,
              "returncode": process.returncode, "traceback": "Traceback" in stderr,
              "stderr": stderr.strip().splitlines()[-1:] if stderr.strip() else []}
    if kind == "train":
        record.update(resumed="--resume" in argv, epoch_before=before, epoch_after=checkpoint_epoch(folder))
    return record


def out_of(argv: list[str]) -> str:
    return argv[argv.index("--out") + 1]


def check_runs(folder: Path, attempts: list[dict]) -> dict:
    from retrieval.runs import read_run_record, read_run_table

    listed = retrieve(["runs", "--workspace", "ws", "--json"], folder)
    runs = json.loads(listed.stdout)["runs"] if listed.returncode == 0 else []
    listed_ids = {run["run_id"] for run in runs}
    workspace = folder / "ws"
    visible = [p for p in workspace.iterdir() if not p.name.startswith(".")] if workspace.is_dir() else []
    incomplete = []
    for path in visible:
        try:
            record = read_run_record(path)
            for table in ("metrics", "per_query", "rankings", "curves") if record.get("kind") == "evaluate" else ():
                if read_run_table(path, table) is None:
                    raise ValueError(f"no {table}.parquet")
        except Exception as exc:  # noqa: BLE001 - any failure to read is what this check counts
            incomplete.append(f"{path.name}: {exc}")
            continue
        if path.name not in listed_ids:
            incomplete.append(f"{path.name}: not listed by retrieve runs")
    finished = [out_of(a["argv"]) for a in attempts if a["kind"] == "evaluate" and a["returncode"] == 0]
    lost = [out for out in finished if Path(out).name not in listed_ids]
    places = [workspace, folder / "indexes", folder / "model", folder]
    hidden = [p.name for place in places if place.is_dir() for p in place.iterdir()
              if p.name.startswith(".") and p.name.endswith((".tmp", ".old", ".lock"))]
    return {"listed": len(runs), "visible_incomplete": incomplete, "runs_lost": lost,
            "visible_temporaries": [p.name for p in visible if p.name.endswith((".tmp", ".old"))],
            "hidden_leftovers": len(hidden)}


def check_indexes(folder: Path) -> dict:
    loads, refused, unclear = 0, 0, []
    root = folder / "indexes"
    for path in sorted(root.iterdir()) if root.is_dir() else []:
        if path.name.startswith("."):
            continue
        done = retrieve(["index-info", str(path), "--json"], folder)
        lines = done.stderr.strip().splitlines()
        if done.returncode == 0:
            loads += 1
        elif done.returncode == 1 and len(lines) == 1 and lines[0].startswith("retrieve: error:"):
            refused += 1
        else:
            unclear.append(f"{path.name}: exit {done.returncode}: {done.stderr.strip()[-300:]}")
    return {"index_folders_load": loads, "index_folders_refused_clearly": refused, "index_folders_unclear": unclear}


def check_training(folder: Path, attempts: list[dict]) -> dict:
    """The model folder after the kills: resumed attempts went on from their checkpoint, and a last
    `train --resume` (or a first `train`, when no epoch was ever saved) finishes the schedule."""
    resumed = [a for a in attempts if a["kind"] == "train" and a["resumed"]]
    went_back = [a["attempt"] for a in resumed if a["epoch_after"] < a["epoch_before"]]
    before = checkpoint_epoch(folder)
    argv = command("train", -1, folder) + ["--json"]
    done = retrieve(argv, folder)
    result = json.loads(done.stdout) if done.returncode == 0 else {}
    return {"train_resumes": len(resumed),
            "train_resumes_that_advanced": sum(a["epoch_after"] > a["epoch_before"] for a in resumed),
            "train_resumes_that_went_back": went_back,
            "train_final_resume_from_epoch": before, "train_resume_exit": done.returncode,
            "train_epochs_done": result.get("epochs_done"), "train_error": done.stderr.strip().splitlines()[-1:]}


def campaign(folder: Path, attempts: int, seed: int, preload: tuple[str, ...] = PRELOAD + TRAINING) -> dict:
    """The figures of ``attempts`` attempts in ``folder``. ``preload``: what the fork server imports
    (it is one per process: a caller that also forks other commands passes everything they need)."""
    from retrieval.data.sample import install_sample

    global COMMANDS
    COMMANDS = Commands(preload)
    COMMANDS.warm()  # so that the measured durations below are the commands' own
    install_sample(folder / "sample")
    rng = random.Random(seed)
    durations = {}
    for kind in KINDS:  # one complete run of each: its duration sets the kill window
        started = time.perf_counter()
        done = retrieve(command(kind, 999, folder), folder)
        if done.returncode != 0:
            raise SystemExit(f"{kind} does not run: {done.stderr.strip()[-500:]}")
        durations[kind] = time.perf_counter() - started
    shutil.rmtree(folder / "model")  # the attempts train it from scratch
    log = [attempt_once(KINDS[i % len(KINDS)], i, folder, durations[KINDS[i % len(KINDS)]], rng) for i in range(attempts)]
    figures = {
        "attempts": attempts,
        "kills": sum(a["killed"] for a in log),
        "finished": sum(not a["killed"] and a["returncode"] == 0 for a in log),
        "failed_cleanly": [a for a in log if not a["killed"] and a["returncode"] != 0],
        "tracebacks": sum(a["traceback"] for a in log),
        "durations_s": {k: round(v, 2) for k, v in durations.items()},
        "per_kind": {k: {"attempts": sum(a["kind"] == k for a in log),
                         "kills": sum(a["kind"] == k and a["killed"] for a in log)} for k in KINDS},
    }
    figures.update(check_runs(folder, log))
    figures.update(check_indexes(folder))
    figures.update(check_training(folder, log))
    figures["ok"] = (not figures["runs_lost"] and not figures["failed_cleanly"] and not figures["visible_incomplete"] and not figures["visible_temporaries"]
                     and not figures["index_folders_unclear"] and figures["tracebacks"] == 0
                     and not figures["train_resumes_that_went_back"]
                     and figures["train_resume_exit"] == 0 and figures["train_epochs_done"] == TRAIN_EPOCHS)
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attempts", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--folder", type=Path, default=None, help="work folder (default: a new temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    folder = args.folder or Path(tempfile.mkdtemp(prefix="retrieve-faults-"))
    folder.mkdir(parents=True, exist_ok=True)
    figures = campaign(folder, args.attempts, args.seed)
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"attempts {figures['attempts']}, kills {figures['kills']}, finished {figures['finished']}, "
              f"runs lost {len(figures['runs_lost'])}, visible temporaries {len(figures['visible_temporaries'])}, "
              f"hidden leftovers {figures['hidden_leftovers']}, index folders load {figures['index_folders_load']} / "
              f"refused clearly {figures['index_folders_refused_clearly']} / unclear {len(figures['index_folders_unclear'])}, "
              f"tracebacks {figures['tracebacks']}, train resumes {figures['train_resumes']} "
              f"({figures['train_resumes_that_advanced']} advanced), last resume from epoch "
              f"{figures['train_final_resume_from_epoch']} -> {figures['train_epochs_done']} epochs "
              f"(exit {figures['train_resume_exit']})")
    return 0 if figures["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
