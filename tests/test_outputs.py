"""Outputs of the commands: never silently replaced, safe under concurrent writers, locked when updated."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from retrieval.cli import run
from retrieval.data.writer import write_embeddings
from retrieval.runs import read_run_record

HERE = Path(__file__).resolve().parent
WRITERS = 60  # replacing one output: the race that once gave tracebacks (issue 12)
EXCLUSIVE_WRITERS = 12  # creating one output: exactly one wins; fewer processes show it as well


@pytest.fixture()
def small(tmp_path: Path) -> Path:
    """4 identities on 2 cameras: 4 queries and 12 gallery items (plus a junk item)."""
    rng = np.random.default_rng(3)
    ids, pid, cam, split = [], [], [], []
    for person in range(4):
        ids.append(f"q{person}"), pid.append(person), cam.append(0), split.append("query")
        for j in range(3):
            ids.append(f"g{person}_{j}"), pid.append(person), cam.append(j % 2), split.append("gallery")
    ids.append("junk"), pid.append(-1), cam.append(1), split.append("gallery")
    vectors = rng.normal(size=(len(ids), 8)) + np.repeat(np.eye(8)[:, :8][np.array(pid) % 8] * 2, 1, axis=0)
    path = tmp_path / "small.parquet"
    write_embeddings(path, ids, vectors.astype(np.float32), pid=np.array(pid), camid=np.array(cam), split=split)
    return path


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# ------------------------------------------------------------------------------------- refusing


def test_evaluate_out_existing_is_refused_unless_overwrite(small: Path, tmp_path: Path, capsys):
    out = tmp_path / "run"
    assert run(["evaluate", str(small), "--out", str(out), "--json"]) == 0
    first = read_run_record(out)
    capsys.readouterr()
    assert run(["evaluate", str(small), "--out", str(out), "--protocol", "no-camera"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("retrieve: error:") and len(err.strip().splitlines()) == 1
    assert "already holds a run (kind evaluate)" in err and "--overwrite" in err
    assert read_run_record(out) == first  # untouched
    # a run of another kind is named too, and --overwrite replaces it
    assert run(["verify", str(small), "--trials", "query-gallery", "--out", str(tmp_path / "v")]) == 0
    capsys.readouterr()
    assert run(["evaluate", str(small), "--out", str(tmp_path / "v")]) == 1
    assert "(kind verify)" in capsys.readouterr().err
    assert run(["evaluate", str(small), "--out", str(out), "--protocol", "no-camera", "--overwrite"]) == 0
    assert read_run_record(out)["parameters"]["protocol"] == "no-camera"
    # a folder that is not a run is never replaced, even with --overwrite
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "mine.txt").write_text("keep")
    capsys.readouterr()
    assert run(["evaluate", str(small), "--out", str(notes), "--overwrite"]) == 1
    assert "is not a run" in capsys.readouterr().err and (notes / "mine.txt").read_text() == "keep"
    assert leftovers(tmp_path) == []


def test_search_out_existing_file_is_refused_unless_overwrite(small: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("RETRIEVE_WORKSPACE", str(tmp_path / "ws"))
    assert run(["build-index", str(small), "--out", str(tmp_path / "idx")]) == 0
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    capsys.readouterr()
    assert run(["search", str(tmp_path / "idx"), str(small), "--k", "3", "--out", str(notes)]) == 1
    err = capsys.readouterr().err
    assert "notes.txt: already exists" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert notes.read_text() == "my notes"
    assert not (tmp_path / "ws").exists()  # refused before searching: no run folder either
    assert run(["search", str(tmp_path / "idx"), str(small), "--k", "3", "--out", str(notes), "--overwrite"]) == 0
    assert notes.read_bytes().startswith(b"PAR1")
    # build-index --out EXISTING is refused the same way
    capsys.readouterr()
    assert run(["build-index", str(small), "--out", str(tmp_path / "idx")]) == 1
    assert "already exists" in capsys.readouterr().err
    assert run(["build-index", str(small), "--out", str(tmp_path / "idx"), "--overwrite"]) == 0


def test_report_and_synth_refuse_an_existing_output(small: Path, tmp_path: Path, capsys):
    assert run(["evaluate", str(small), "--out", str(tmp_path / "run")]) == 0
    report = tmp_path / "r.html"
    assert run(["report", str(tmp_path / "run"), "--out", str(report)]) == 0
    before = report.read_bytes()
    capsys.readouterr()
    assert run(["report", str(tmp_path / "run"), "--out", str(report)]) == 1
    assert "already exists" in capsys.readouterr().err and report.read_bytes() == before
    assert run(["synth", "--out", str(small)]) == 1
    assert "already exists" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- concurrency


def _race(tmp_path: Path, argv: list[str], writers: int) -> list[dict]:
    work = tmp_path / "race"
    work.mkdir(exist_ok=True)
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}  # 60 processes, not 60 × cores threads
    env["CUDA_VISIBLE_DEVICES"] = ""  # the race is about outputs; a child forked after CUDA started cannot use it
    done = subprocess.run([sys.executable, str(HERE / "_concurrent_writers.py"), str(writers), str(work), *argv],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.slow(seconds=5)
@pytest.mark.parametrize("overwrite", [False, True])
def test_concurrent_writers_of_one_out(small: Path, tmp_path: Path, overwrite: bool):
    out = tmp_path / "ws" / "same"
    argv = ["evaluate", str(small), "--out", str(out), "--json"] + (["--overwrite"] if overwrite else [])
    writers = WRITERS if overwrite else EXCLUSIVE_WRITERS
    results = _race(tmp_path, argv, writers)
    assert len(results) == writers
    for result in results:
        assert "Traceback" not in result["stderr"], result["stderr"]
        assert result["code"] in (0, 1), result
        if result["code"] == 1:
            lines = result["stderr"].strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("retrieve: error:") and str(out) in lines[0], result
    wins = sum(result["code"] == 0 for result in results)
    if overwrite:
        assert wins == writers, [r["stderr"] for r in results if r["code"]]  # each replaced the previous one in turn, under the lock
    else:
        assert wins == 1  # exactly one created it; the others were refused
        assert all("already" in r["stderr"] for r in results if r["code"] == 1)
    assert read_run_record(out)["kind"] == "evaluate"
    assert sorted(p.name for p in out.iterdir()) == ["curves.parquet", "metrics.parquet", "per_query.parquet",
                                                     "rankings.parquet", "run.json"]
    assert leftovers(out.parent) == []  # no temporary, .old or lock left


# ------------------------------------------------------------------------------------- locked updates


def test_tune_updates_are_merged_under_the_lock_and_wait_for_it(tmp_path: Path):
    from retrieval.common.atomic import output_lock
    from retrieval.indexes.store import build_index, load_index

    rng = np.random.default_rng(0)
    path = build_index(tmp_path / "idx", rng.normal(size=(200, 8)).astype(np.float32), kind="ivf", nlist=4).handle.path
    first, second = load_index(path), load_index(path)  # two tunes that read the manifest at the same time
    first.save_search_defaults({"nprobe": 2}, {"parameter": "nprobe", "value": 2})
    second.save_search_defaults({"ef_search": 16})
    manifest = load_index(path).manifest
    assert manifest["search_defaults"] == {"nprobe": 2, "ef_search": 16}  # neither update lost
    assert manifest["tuned"] == {"parameter": "nprobe", "value": 2}
    # while another process holds the folder's lock, an update waits for it
    finished = []
    with output_lock(path):
        worker = threading.Thread(target=lambda: finished.append(load_index(path).save_search_defaults({"nprobe": 3})))
        worker.start()
        time.sleep(0.3)
        assert not finished
    worker.join(timeout=30)
    assert finished and load_index(path).manifest["search_defaults"]["nprobe"] == 3
    # an index rebuilt in between is not patched with a setting tuned for the old one
    stale = load_index(path)
    build_index(path, rng.normal(size=(200, 8)).astype(np.float32), kind="ivf", nlist=8)
    from retrieval.indexes.errors import FaissIndexError

    with pytest.raises(FaissIndexError, match="rebuilt while this command ran"):
        stale.save_search_defaults({"nprobe": 5})
    assert leftovers(tmp_path) == [] and leftovers(path) == []


def test_train_out_held_by_another_process_is_refused_at_once(tmp_path: Path, capsys):
    pytest.importorskip("torch")
    from retrieval.common.atomic import output_lock

    model = tmp_path / "model"
    with output_lock(model):
        code = run(["train", "--dataset", "digits", "--epochs", "1", "--out", str(model),
                    "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert code == 1 and "model: another process is writing it" in err and len(err.strip().splitlines()) == 1
    assert not model.exists() and not (tmp_path / "ws").exists()


def test_embed_out_existing_is_refused(tmp_path: Path, capsys):
    pytest.importorskip("torch")
    existing = tmp_path / "e.parquet"
    existing.write_bytes(b"mine")
    assert run(["embed", str(tmp_path), "--dataset", "digits", "--out", str(existing)]) == 1
    assert "already exists" in capsys.readouterr().err and existing.read_bytes() == b"mine"
    assert os.listdir(tmp_path) == ["e.parquet"]
