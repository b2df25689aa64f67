"""One rule for junk and match (RankingLabels) in evaluation, search results and Gallery.show;
run records that find their inputs from any folder; catalogue views that say which rule a flag follows."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from retrieval import Gallery, connect
from retrieval.cli import run
from retrieval.data.writer import write_embeddings
from retrieval.runs import read_run_record, read_run_table


@pytest.fixture()
def scene(tmp_path: Path) -> Path:
    """Query q (pid 1, camera 0) and, in order of distance: the same person on the same camera,
    a junk item (pid -1), the same person on another camera, another person; images on disk."""
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    ids = ["q", "same_cam", "junk", "other_cam", "stranger"]
    for item in ids:
        Image.new("RGB", (8, 16), (200, 10, 10)).save(images / f"{item}.png")
    vectors = np.array([[0, 0], [1, 0], [2, 0], [3, 0], [4, 0]], np.float32)
    path = tmp_path / "scene.parquet"
    write_embeddings(path, ids, vectors, pid=np.array([1, 1, -1, 1, 2]), camid=np.array([0, 0, 1, 1, 1]),
                     split=["query", "gallery", "gallery", "gallery", "gallery"],
                     paths=[f"images/{item}.png" for item in ids])
    return path


def test_show_follows_the_protocol_it_is_given(scene: Path):
    g = Gallery.from_parquet(scene)
    statuses = {protocol: [item.status for item in g.ranked_strip("q", k=4, protocol=protocol).items]
                for protocol in ("market", "no-camera")}
    assert statuses == {
        "market": ["junk", "junk", "match", "non-match"],  # same person, same camera: junk under market
        "no-camera": ["match", "junk", "match", "non-match"],  # ... but a match without the camera rule
    }
    assert [i.status for i in g.ranked_strip("q", k=4).items] == statuses["market"]  # cameras known: market
    assert [i.status for i in g.ranked_strip("q", k=4, junk_pids=()).items] == ["junk", "non-match", "match", "non-match"]
    # leave-one-out over every row: the query itself is junk, its own camera does not matter
    everything = Gallery.from_parquet(scene, split=None)
    strip = everything.ranked_strip("q", k=3, protocol="leave-one-out")
    assert [(i.item_id, i.status) for i in strip.items] == [("q", "junk"), ("same_cam", "match"), ("junk", "junk")]


def test_search_flags_follow_the_protocol_and_say_which(scene: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("RETRIEVE_WORKSPACE", str(tmp_path / "ws"))
    assert run(["build-index", str(scene), "--out", str(tmp_path / "idx")]) == 0
    flags = {}
    for args in ([], ["--protocol", "no-camera"], ["--protocol", "no-camera", "--junk-pids", "none"]):
        capsys.readouterr()
        assert run(["search", str(tmp_path / "idx"), str(scene), "--k", "4", "--json", *args]) == 0
        result = json.loads(capsys.readouterr().out)
        record = read_run_record(result["run_dir"])
        rankings = read_run_table(result["run_dir"], "rankings").to_pylist()
        assert record["parameters"]["protocol"] == result["protocol"]
        flags[result["protocol"], tuple(record["parameters"]["junk_pids"])] = [
            (row["gallery_id"], row["is_match"], row["is_junk"]) for row in rankings]
    assert flags == {
        ("market", (-1,)): [("same_cam", False, True), ("junk", False, True), ("other_cam", True, False),
                            ("stranger", False, False)],
        ("no-camera", (-1,)): [("same_cam", True, False), ("junk", False, True), ("other_cam", True, False),
                               ("stranger", False, False)],
        ("no-camera", ()): [("same_cam", True, False), ("junk", False, False), ("other_cam", True, False),
                            ("stranger", False, False)],
    }


def test_search_and_evaluate_flag_the_same_pairs_alike(tmp_path: Path, capsys):
    """On data with cameras, junk and distractors: search's flags equal evaluate's for every shared pair."""
    rng = np.random.default_rng(5)
    pid = np.concatenate([np.arange(10), np.repeat(np.arange(10), 4), [-1, -1, 0, 0]])
    cam = rng.integers(0, 3, size=len(pid))
    split = ["query"] * 10 + ["gallery"] * (len(pid) - 10)
    path = tmp_path / "e.parquet"
    write_embeddings(path, [f"i{k}" for k in range(len(pid))], rng.normal(size=(len(pid), 6)), pid=pid, camid=cam,
                     split=split)
    ws = tmp_path / "ws"
    assert run(["build-index", str(path), "--out", str(tmp_path / "idx")]) == 0
    assert run(["evaluate", str(path), "--keep-top", "20", "--out", str(ws / "eval")]) == 0
    assert run(["search", str(tmp_path / "idx"), str(path), "--k", "20", "--workspace", str(ws)]) == 0
    evaluated = {(r["query_id"], r["gallery_id"]): (r["is_match"], r["is_junk"])
                 for r in read_run_table(ws / "eval", "rankings").to_pylist()}
    search_dir = next(p for p in ws.iterdir() if "search" in p.name)
    searched = {(r["query_id"], r["gallery_id"]): (r["is_match"], r["is_junk"])
                for r in read_run_table(search_dir, "rankings").to_pylist()}
    shared = set(evaluated) & set(searched)
    assert len(shared) == 200 and all(evaluated[key] == searched[key] for key in shared)
    assert any(junk for _, junk in searched.values()) and any(match for match, _ in searched.values())

    # The catalogue keeps them apart: each row says which kind of run and which protocol it follows.
    connection = connect(ws)
    kinds = connection.execute(
        "SELECT run_kind, run_protocol, count(*) FROM rankings GROUP BY ALL ORDER BY run_kind").fetchall()
    assert kinds == [("evaluate", "market", 200), ("search", "market", 200)]  # 10 × top 20 each


def test_report_finds_the_images_from_another_folder(scene: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(["evaluate", "scene.parquet", "--protocol", "no-camera", "--out", "runs/r"]) == 0
    record = read_run_record(tmp_path / "runs" / "r")
    assert record["inputs"]["embeddings"] == str(scene) and record["inputs"]["embeddings_as_given"] == "scene.parquet"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    from retrieval.catalogue import resolve_run
    from retrieval.report import worst_query_strips

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing file would warn
        strips = worst_query_strips(resolve_run(tmp_path / "runs" / "r"))
    images = [strips[0].query_image] + [item.image for item in strips[0].items]
    assert all(image and Path(image).is_file() for image in images)
    capsys.readouterr()
    assert run(["report", str(tmp_path / "runs" / "r"), "--out", "r.html"]) == 0
    assert "warning" not in capsys.readouterr().err


def test_report_says_once_when_the_images_are_gone(scene: Path, tmp_path: Path, capsys):
    assert run(["evaluate", str(scene), "--protocol", "no-camera", "--out", str(tmp_path / "r")]) == 0
    for image in (tmp_path / "images").iterdir():
        image.unlink()
    capsys.readouterr()
    assert run(["report", str(tmp_path / "r"), "--out", str(tmp_path / "r.html")]) == 0
    warnings_said = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings_said) == 1 and "images of run r were not found" in warnings_said[0]
    assert pq.read_schema(scene).names[-1] == "path"
