"""retrieval.common.atomic: outputs are atomic, follow the umask, are exclusive unless asked, and locked."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from retrieval.common.atomic import (
    atomic_file,
    output_lock,
    staging_folder,
    sweep_stale,
    temporary_name,
    write_bytes,
    write_text,
)
from retrieval.common.errors import OutputError, OutputExistsError, OutputLockedError

ROOT = Path(__file__).resolve().parents[1]


@contextmanager
def umask(mask: int):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------- modes


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)])
def test_files_and_folders_follow_the_umask(tmp_path: Path, mask: int, file_mode: int, dir_mode: int):
    with umask(mask):
        write_bytes(tmp_path / "a.bin", b"x", overwrite=False)
        with staging_folder(tmp_path / "folder", overwrite=False) as staging:
            (staging / "inner.txt").write_text("y")
    assert mode(tmp_path / "a.bin") == file_mode
    assert mode(tmp_path / "folder") == dir_mode
    assert mode(tmp_path / "folder" / "inner.txt") == file_mode
    assert hidden_leftovers(tmp_path) == []


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
def test_every_kind_of_output_follows_the_umask(tmp_path: Path, mask: int, file_mode: int, dir_mode: int):
    """Embeddings files, run folders, index folders (and a tuned manifest), reports, models."""
    from retrieval.data.synth import generate
    from retrieval.data.writer import write_embeddings
    from retrieval.indexes.store import build_index, load_index
    from retrieval.report import write_report
    from retrieval.runs import write_run

    rng = np.random.default_rng(0)
    with umask(mask):
        emb = write_embeddings(tmp_path / "e.parquet", [f"i{k}" for k in range(20)], rng.normal(size=(20, 4)),
                               pid=np.arange(20) % 4)
        run = write_run(tmp_path / "ws" / "run", {"kind": "test"}, {"metrics": pa.table({"metric": ["m"], "value": [1.0]})})
        index = build_index(tmp_path / "idx", rng.normal(size=(50, 4)).astype(np.float32), kind="ivf", nlist=2).handle.path
        load_index(index).save_search_defaults({"nprobe": 2})
        report = write_report([run], tmp_path / "reports" / "r.html", png_dir=tmp_path / "png", overwrite=False)
        synthetic = generate("small", 0, tmp_path / "synth.parquet", overwrite=False)  # streamed batch by batch
    assert mode(synthetic) == file_mode
    assert mode(emb) == file_mode and mode(report) == file_mode and mode(tmp_path / "reports") == dir_mode
    assert mode(run) == dir_mode and mode(tmp_path / "ws") == dir_mode
    assert {mode(p) for p in run.iterdir()} == {file_mode}
    assert mode(index) == dir_mode and {mode(p) for p in index.iterdir()} == {file_mode}
    for folder in (tmp_path, tmp_path / "ws", index):
        assert hidden_leftovers(folder) == [], folder


def test_model_files_follow_the_umask(tmp_path: Path):
    pytest.importorskip("torch")
    from retrieval.train.trainer import atomic_save, atomic_write_json

    with umask(0o022):
        atomic_save({"w": 1}, tmp_path / "model.pt")
        atomic_write_json({"loss": float("nan")}, tmp_path / "config.json")
    assert mode(tmp_path / "model.pt") == 0o644 and mode(tmp_path / "config.json") == 0o644
    assert (tmp_path / "config.json").read_text().split() == ["{", '"loss":', "null", "}"]
    assert hidden_leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------- atomic, exclusive


def test_an_existing_output_is_refused_unless_overwrite(tmp_path: Path):
    target = tmp_path / "out.txt"
    write_text(target, "first", overwrite=False)
    with pytest.raises(OutputExistsError, match=r"out.txt: already exists; .*--overwrite"):
        write_text(target, "second", overwrite=False)
    assert target.read_text() == "first"
    write_text(target, "third", overwrite=True)
    assert target.read_text() == "third"
    with pytest.raises(OutputError, match="is a folder"):
        write_text(tmp_path, "x", overwrite=True)


def test_a_failed_write_leaves_the_old_output_and_no_temporary(tmp_path: Path):
    target = tmp_path / "out.txt"
    write_text(target, "old", overwrite=False)
    with pytest.raises(RuntimeError):
        with atomic_file(target, overwrite=True) as temporary:
            temporary.write_text("half")
            raise RuntimeError("crash while writing")
    with pytest.raises(RuntimeError):
        with staging_folder(tmp_path / "folder", overwrite=False) as staging:
            (staging / "x").write_text("half")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "old"
    assert not (tmp_path / "folder").exists()
    assert hidden_leftovers(tmp_path) == []


def test_folders_replace_only_with_overwrite_and_never_a_foreign_folder(tmp_path: Path):
    target = tmp_path / "out"
    for content, overwrite in (("one", False), ("two", True)):
        with staging_folder(target, overwrite=overwrite) as staging:
            (staging / "f").write_text(content)
    assert (target / "f").read_text() == "two"
    with pytest.raises(OutputExistsError):
        with staging_folder(target, overwrite=False) as staging:
            pass
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep")

    def not_ours(path):
        return "is not ours"

    with pytest.raises(OutputError, match="is not ours"):
        with staging_folder(foreign, overwrite=True, replaceable=not_ours):
            pass
    assert (foreign / "mine.txt").read_text() == "keep"
    empty = tmp_path / "empty"
    empty.mkdir()
    with staging_folder(empty, overwrite=False) as staging:  # an empty folder counts as no output
        (staging / "f").write_text("new")
    assert (empty / "f").read_text() == "new"
    assert hidden_leftovers(tmp_path) == []


def test_stale_temporaries_of_dead_processes_are_swept(tmp_path: Path):
    target = tmp_path / "run"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stale = tmp_path / f".run.{dead_pid}-abcd1234.tmp"
    stale.mkdir()
    old = tmp_path / f".run.{dead_pid}-abcd1234.old"
    old.mkdir()
    alive = temporary_name(target)  # this process: still writing
    alive.mkdir()
    other = tmp_path / f".runs.{dead_pid}-abcd1234.tmp"  # another output's temporary
    other.mkdir()
    assert sorted(p.name for p in sweep_stale(target)) == sorted([stale.name, old.name])
    assert alive.exists() and other.exists()


# ------------------------------------------------------------------------------------- the lock

HOLD_LOCK = """
import sys, time
from retrieval.common.atomic import output_lock
with output_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(target: Path, seconds: float) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(target), str(seconds)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_the_lock_excludes_another_process_and_is_removed_after(tmp_path: Path):
    target = tmp_path / "model"
    holder = _holder(target, 1.0)
    try:
        with pytest.raises(OutputLockedError, match="model: another process is writing it"):
            with output_lock(target, wait=0):
                pass
        started = time.monotonic()
        with output_lock(target, wait=30):  # waits for the holder, then gets it
            assert time.monotonic() - started > 0.3
    finally:
        holder.wait(timeout=30)
    assert hidden_leftovers(tmp_path) == []


def test_the_layers_write_through_the_atomic_module():
    """No other module creates temporary files or renames outputs itself (one module for atomic I/O)."""
    offenders = []
    for folder in ("common", "data", "eval", "indexes", "retrieval"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            if path == ROOT / "common" / "atomic.py":
                continue
            text = path.read_text()
            for needle in ("mkstemp(", "mkdtemp(", "os.replace(", "os.rename(", "NamedTemporaryFile("):
                if needle in text:
                    offenders.append(f"{path.relative_to(ROOT)}: {needle}")
    assert offenders == []
