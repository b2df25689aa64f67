"""The everyday commands of issue 16 on generated data: show (pictures and text from a run folder),
search with what you have (.npy, .npz, one vector), Gallery.search, tag / runs --tag / rm / restore,
export --distances, layout --kind cuhk03 through import to evaluation."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retrieval import Gallery
from retrieval.cli import run
from retrieval.data.store import read_embeddings
from retrieval.data.writer import write_embeddings
from retrieval.eval.distances import EmbeddingDistances
from retrieval.eval.export import distance_matrix
from retrieval.eval.expansion import Expansion, expand
from retrieval.eval.rerank import RerankedDistances
from retrieval.export import read_distance_matrix
from retrieval.indexes.knn import exact_knn_between

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "sample" / "sample.parquet"


@pytest.fixture()
def scene(tmp_path: Path) -> Path:
    """Two queries; gallery items at growing distance: q's same-camera twin (junk under market), a
    junk pid, matches on another camera, strangers; every image on disk but one (g_gone)."""
    images = tmp_path / "images"
    images.mkdir()
    ids = ["q", "r", "twin", "junk", "m1", "s1", "m2", "s2", "g_gone"]
    pid = [1, 2, 1, -1, 1, 3, 1, 4, 2]
    camid = [0, 0, 0, 1, 1, 1, 1, 1, 1]
    split = ["query", "query"] + ["gallery"] * 7
    vectors = np.array([[0, 0], [10, 0], [1, 0], [2, 0], [3, 0], [4, 0], [5, 0], [6, 0], [10.5, 0]], np.float32)
    for item in ids:
        if item != "g_gone":
            Image.new("RGB", (8, 16), (30, 120, 200)).save(images / f"{item}.png")
    path = tmp_path / "scene.parquet"
    write_embeddings(path, ids, vectors, pid=np.array(pid), camid=np.array(camid), split=split,
                     paths=[f"images/{item}.png" for item in ids])
    return path


@pytest.fixture()
def evaluated(scene: Path, tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.setenv("RETRIEVE_WORKSPACE", str(tmp_path / "ws"))
    assert run(["evaluate", str(scene), "--out", str(tmp_path / "ws" / "run1"), "--json"]) == 0
    return tmp_path / "ws" / "run1"


# ----------------------------------------------------------------------------------------- show


def test_show_text_numbers_by_kept_rank_and_flags_junk(evaluated: Path, capsys):
    capsys.readouterr()
    assert run(["show", str(evaluated), "q", "--top", "6", "--json"]) == 0
    items = json.loads(capsys.readouterr().out)["queries"][0]["items"]
    assert [(i["gallery_id"], i["rank"], i["status"]) for i in items] == [
        ("twin", None, "junk"), ("junk", None, "junk"), ("m1", 1, "match"), ("s1", 2, "non-match"),
        ("m2", 3, "match"), ("s2", 4, "non-match")]
    assert items[2]["distance"] == pytest.approx(3.0) and items[2]["path"].endswith("images/m1.png")
    assert run(["show", str(evaluated), "q", "--top", "3", "--text"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("query q · AP") and lines[1].split() == ["rank", "gallery_id", "distance", "status", "path"]
    assert lines[3].split()[:3] == ["twin", "1.0000", "junk"]  # no rank number for junk
    assert lines[5].split()[:4] == ["1", "m1", "3.0000", "match"]


def test_show_draws_a_png_with_one_warning_for_missing_images(evaluated: Path, tmp_path: Path, capsys):
    out = tmp_path / "grid.png"
    assert run(["show", "run1", "r", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size[0] > 400
    said = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(said) == 1 and "1 of 8 images of run run1 were not found" in said[0] and "g_gone" in said[0]
    assert run(["show", "run1", "r", "--out", str(out)]) == 1  # exclusive unless --overwrite
    assert "already exists" in capsys.readouterr().err
    assert run(["show", "run1", "--worst", "2", "--out", str(tmp_path / "worst.png"), "--overwrite"]) == 0
    assert (tmp_path / "worst.png").is_file()


def test_show_strips_carry_kept_ranks_and_placeholders(evaluated: Path):
    from retrieval.catalogue import resolve_run
    from retrieval.show import run_strips

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        strip = run_strips(resolve_run(evaluated), ["r"], 3)[0]
    assert [(i.item_id, i.rank, i.status) for i in strip.items][:2] == [("g_gone", 1, "match"), ("s2", 2, "non-match")]
    assert not Path(strip.items[0].image).exists() and len(caught) == 1


@pytest.mark.parametrize("args, message, code", [
    (["q", "--worst", "2"], "give a QUERY_ID or --worst N", 2),
    ([], "give a QUERY_ID or --worst N", 2),
    (["nobody"], "no ranked list for query 'nobody'", 1),
])
def test_show_errors(evaluated: Path, capsys, args, message, code):
    assert run(["show", str(evaluated), *args, "--text"]) == code
    assert message in capsys.readouterr().err


def test_show_refuses_to_write_into_the_run(evaluated: Path, capsys):
    assert run(["show", str(evaluated), "q", "--out", str(evaluated / "x.png")]) == 1
    assert "run folders are never written to" in capsys.readouterr().err


# --------------------------------------------------------------------------------------- search


@pytest.fixture()
def flat_index(tmp_path: Path) -> Path:
    assert run(["build-index", str(SAMPLE), "--out", str(tmp_path / "idx")]) == 0
    return tmp_path / "idx"


def exact_top(vectors: np.ndarray, k: int):
    gallery = read_embeddings(SAMPLE).by_split("gallery")
    distances, rows = exact_knn_between(vectors, gallery.vectors, k, metric="euclidean")
    return gallery.ids[rows], distances


def search_json(capsys, *args):
    assert run(["search", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_search_one_vector_as_text_or_file(flat_index: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("RETRIEVE_WORKSPACE", str(tmp_path / "ws"))
    vector = np.round(read_embeddings(SAMPLE).by_split("query").vectors[5], 3).astype(np.float32)
    text = ",".join(f"{v:.3f}" for v in vector)
    by_text = search_json(capsys, flat_index, "--vector", text, "--k", "7")["results"]
    want_ids, want_d = exact_top(vector[None, :], 7)
    assert [item["gallery_id"] for item in by_text[0]["top"]] == want_ids[0].tolist()
    assert np.allclose([item["distance"] for item in by_text[0]["top"]], want_d[0], atol=1e-5)
    np.save(tmp_path / "v.npy", vector)
    by_file = search_json(capsys, flat_index, "--vector-file", tmp_path / "v.npy", "--k", "7")["results"]
    assert by_file == by_text
    assert run(["search", str(flat_index), "--vector", text, "--k", "3"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[1] == "query q0" and printed[2].split()[:2] == ["1", want_ids[0][0]]


def test_search_npy_with_ids_and_npz_with_names(flat_index: Path, tmp_path: Path, capsys, monkeypatch):
    monkeypatch.setenv("RETRIEVE_WORKSPACE", str(tmp_path / "ws"))
    queries = read_embeddings(SAMPLE).by_split("query")
    np.save(tmp_path / "m.npy", queries.vectors[:4])
    (tmp_path / "ids.txt").write_text("a\nb\nc\nd\n")
    result = search_json(capsys, flat_index, tmp_path / "m.npy", "--ids", tmp_path / "ids.txt", "--k", "5")
    want_ids, _ = exact_top(queries.vectors[:4], 5)
    assert [r["query_id"] for r in result["results"]] == ["a", "b", "c", "d"]
    assert [[i["gallery_id"] for i in r["top"]] for r in result["results"]] == want_ids.tolist()
    np.savez(tmp_path / "q.npz", features=queries.vectors[:2], names=np.array(queries.ids[:2].astype(str)),
             labels=queries.pid[:2])
    named = search_json(capsys, flat_index, tmp_path / "q.npz", "--k", "5")
    assert [r["query_id"] for r in named["results"]] == queries.ids[:2].tolist()
    assert named["protocol"] == "no-camera"  # labels in the .npz: flags decided; no cameras given
    assert run(["search", str(flat_index), str(tmp_path / "m.npy"), "--ids", str(tmp_path / "ids.txt"),
                "--out", str(tmp_path / "r.parquet")]) == 0


@pytest.mark.parametrize("args, message, code", [
    (["--vector", "1,2,x"], "element 3 ('x') is not a number", 2),
    (["--vector", "1,2"], "queries have dimension 2 but the index was built with dimension 128", 1),
    ([], "give the queries one way", 2),
    (["QUERIES", "--vector", "1"], "give the queries one way", 2),
])
def test_search_input_errors(flat_index: Path, tmp_path: Path, capsys, args, message, code):
    args = [str(SAMPLE) if a == "QUERIES" else a for a in args]
    assert run(["search", str(flat_index), *args]) == code
    assert message in capsys.readouterr().err


def test_search_ids_count_must_match(flat_index: Path, tmp_path: Path, capsys):
    np.save(tmp_path / "m.npy", np.zeros((3, 128), np.float32) + 0.1)
    (tmp_path / "ids.txt").write_text("a\nb\n")
    assert run(["search", str(flat_index), str(tmp_path / "m.npy"), "--ids", str(tmp_path / "ids.txt")]) == 1
    assert "2 ids for 3 query vectors" in capsys.readouterr().err


def test_gallery_search_takes_one_vector_or_a_batch(flat_index: Path):
    queries = read_embeddings(SAMPLE).by_split("query").vectors[:6]
    for gallery in (Gallery.from_parquet(SAMPLE), Gallery.from_index(flat_index)):
        batch = gallery.search(queries, k=4)
        assert type(batch).__name__ == "DataFrame" and len(batch) == 24
        single = gallery.search(queries[2], k=4)
        assert single["gallery_id"].tolist() == batch[batch["query_id"] == "q2"]["gallery_id"].tolist()
        want_ids, _ = exact_top(queries, 4)
        assert batch["gallery_id"].tolist() == want_ids.ravel().tolist()


# ------------------------------------------------------------------------------ tag, rm, restore


def test_tags_filter_runs_and_survive_the_trash(evaluated: Path, tmp_path: Path, capsys):
    ws = str(tmp_path / "ws")
    assert run(["evaluate", str(tmp_path / "scene.parquet"), "--out", str(tmp_path / "ws" / "run2")]) == 0
    assert run(["tag", "run1", "baseline", "paper", "-w", ws]) == 0
    assert capsys.readouterr().out.strip().endswith("run1: baseline, paper")
    assert run(["runs", "--tag", "paper", "--json", "-w", ws]) == 0
    listed = json.loads(capsys.readouterr().out)["runs"]
    assert [r["run_id"] for r in listed] == ["run1"] and listed[0]["tags"] == ["baseline", "paper"]
    assert run(["tag", "run1", "paper", "--remove", "-w", ws]) == 0
    assert run(["runs", "--tag", "paper", "-w", ws]) == 0
    assert "matches --tag 'paper'." in capsys.readouterr().err
    assert run(["tag", "run1", "bad tag", "-w", ws]) == 2
    from retrieval import connect

    assert connect(ws).execute("SELECT tags FROM runs WHERE run_id = 'run1'").fetchone()[0] == ["baseline"]
    capsys.readouterr()
    assert run(["rm", "run1", "-w", ws]) == 0
    assert "retrieve restore run1" in capsys.readouterr().err
    assert not evaluated.exists() and (tmp_path / "ws" / ".trash" / "run1" / "run.json").is_file()
    assert run(["runs", "--json", "-w", ws]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["run2"]
    assert run(["restore", "nope", "-w", ws]) == 1
    assert "it holds run1" in capsys.readouterr().err
    assert run(["restore", "run1", "-w", ws]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "ws" / "run1")
    assert run(["runs", "--tag", "baseline", "--json", "-w", ws]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)["runs"]] == ["run1"]
    assert run(["rm", "run2", "nope", "-w", ws]) == 1  # every name checked before anything moves
    assert (tmp_path / "ws" / "run2").is_dir()


# ---------------------------------------------------------------------------------------- export


def test_export_writes_the_exact_matrix_of_each_stage(tmp_path: Path, capsys):
    ws = str(tmp_path / "ws")
    assert run(["evaluate", str(SAMPLE), "--expand", "dba,aqe", "--rerank", "--k1", "10", "--k2", "3",
                "--out", str(tmp_path / "ws" / "x"), "--json"]) == 0
    capsys.readouterr()
    emb = read_embeddings(SAMPLE)
    q, g = emb.by_split("query"), emb.by_split("gallery")
    out = expand(q.vectors, g.vectors, Expansion(("dba", "aqe")))
    want = {
        "plain": distance_matrix(EmbeddingDistances(q.vectors, g.vectors)).distances,
        "expansion": distance_matrix(EmbeddingDistances(out.queries, out.gallery)).distances,
        "rerank": RerankedDistances(out.queries, out.gallery, k1=10, k2=3).dense(),
    }
    for stage in ("plain", "expansion", None):
        target = tmp_path / f"m-{stage}"
        args = ["export", "x", "--distances", "-w", ws, "--out", str(target), "--json"]
        assert run(args + (["--stage", stage] if stage else [])) == 0
        summary = json.loads(capsys.readouterr().out)
        matrix = read_distance_matrix(target)
        np.testing.assert_array_equal(matrix.distances, want[stage or "rerank"])
        assert summary["stage"] == (stage or "rerank") and summary["shape"] == [300, 2000]
        assert matrix.query_ids.tolist() == q.ids.tolist() and matrix.gallery_ids.tolist() == g.ids.tolist()
    assert run(["export", "x", "--distances", "-w", ws, "--max-entries", "1000"]) == 1
    assert "a 300 × 2,000 distance matrix holds 600,000 distances" in capsys.readouterr().err
    assert run(["export", "x", "--distances", "-w", ws, "--out", str(tmp_path / "m-None")]) == 1
    assert "already exists" in capsys.readouterr().err


def test_export_refuses_what_it_cannot_recompute(evaluated: Path, scene: Path, tmp_path: Path, capsys):
    assert run(["export", str(evaluated), "--distances", "--stage", "rerank"]) == 2
    assert "stage 'rerank' did not run in this run" in capsys.readouterr().err
    assert run(["export", str(evaluated)]) == 2
    write_embeddings(scene, ["q", "r", "x"], np.eye(3, dtype=np.float32), pid=np.array([1, 2, 1]),
                     camid=np.array([0, 0, 1]), split=["query", "query", "gallery"], overwrite=True)
    assert run(["export", str(evaluated), "--distances", "--out", str(tmp_path / "e")]) == 1
    assert "the file changed since run run1" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------- cuhk03


def test_cuhk03_layout_import_and_evaluate_default_to_single_gallery_shot(tmp_path: Path, capsys):
    root = tmp_path / "cuhk03-np"
    names = {"query": ["0001_c1_1", "0002_c1_1"], "bounding_box_test": ["0001_c2_1", "0002_c2_2", "0003_c2_1"],
             "bounding_box_train": ["0010_c1_1"]}
    for variant in ("detected", "labeled"):
        for folder, stems in names.items():
            (root / variant / folder).mkdir(parents=True)
            for stem in stems:
                (root / variant / folder / f"{stem}.png").write_bytes(b"")
    assert run(["layout", str(root), "--kind", "cuhk03", "--out", str(tmp_path / "m.parquet")]) == 1
    assert "choose one with the variant" in capsys.readouterr().err
    assert run(["layout", str(root), "--kind", "cuhk03", "--variant", "labeled", "--out", str(tmp_path / "m.parquet"),
                "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["dataset"] == "cuhk03-np/labeled" and summary["defaults"] == {"cmc_mode": "single-gallery-shot"}
    assert summary["splits"] == {"gallery": 3, "query": 2, "train": 1}
    paths = sorted(str(p) for p in (root / "labeled").rglob("*.png"))
    (tmp_path / "m.csv").write_text("path\n" + "\n".join(paths) + "\n")
    np.save(tmp_path / "v.npy", np.random.default_rng(0).normal(size=(len(paths), 4)).astype(np.float32))
    assert run(["import", str(tmp_path / "m.csv"), "--vectors", str(tmp_path / "v.npy"), "--out", str(tmp_path / "e.parquet"),
                "--layout", "cuhk03", "--layout-root", str(root), "--layout-variant", "labeled"]) == 0
    capsys.readouterr()
    assert run(["evaluate", str(tmp_path / "e.parquet"), "--json", "--out", str(tmp_path / "run")]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["cmc_mode"] == "single-gallery-shot"
    assert "note: CMC single-gallery-shot: the default of this data set's layout" in captured.err
