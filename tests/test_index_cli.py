"""retrieve build-index / search / index-info / tune, end to end on a small embeddings file."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pyarrow.parquet as pq
import pytest

from retrieval.data.store import read_embeddings, write_embeddings
from retrieval.cli import run
from retrieval.runs import read_run_record, read_run_table


@pytest.fixture(autouse=True, scope="module")
def one_faiss_thread():
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory):
    """600 gallery + 40 query rows of 20 identities, 16-d, L2-normalised, 3 cameras."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 16))
    n_gallery, n_query = 600, 40
    pid = np.concatenate([np.arange(n_gallery) % 20, np.arange(n_query) % 20])
    vectors = centres[pid] + 0.4 * rng.standard_normal((len(pid), 16))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    split = np.array(["gallery"] * n_gallery + ["query"] * n_query, dtype=object)
    ids = [f"g{i:04d}" for i in range(n_gallery)] + [f"q{i:04d}" for i in range(n_query)]
    path = tmp_path_factory.mktemp("emb") / "emb.parquet"
    write_embeddings(path, ids, vectors.astype(np.float32), pid=pid, camid=np.arange(len(pid)) % 3, split=split)
    return path


def run_json(capsys, argv):
    code = run(argv + ["--json"])
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


def test_build_search_info_tune(tmp_path, embeddings, capsys, monkeypatch):
    monkeypatch.setenv("RETRIEVE_WORKSPACE", str(tmp_path / "ws"))
    index = tmp_path / "ivf"
    built = run_json(capsys, ["build-index", str(embeddings), "--out", str(index), "--kind", "ivf", "--nlist", "8"])
    manifest = built["manifest"]
    gallery = read_embeddings(embeddings, splits="gallery")
    assert manifest["count"] == 600 and manifest["split"] == "gallery" and manifest["factory"] == "IVF8,Flat"
    assert manifest["content_hash"] == gallery.content_hash()  # hashed while streaming == hash of the split

    info = run_json(capsys, ["index-info", str(index)])
    assert info["search_defaults"] == {"nprobe": 8} and info["file_bytes"]["index.faiss"] > 0

    results = tmp_path / "res.parquet"
    found = run_json(capsys, ["search", str(index), str(embeddings), "--k", "5", "--nprobe", "8", "--out", str(results)])
    assert found["num_queries"] == 40 and found["k"] == 5 and found["params"]["nprobe"] == 8
    table = pq.read_table(results)
    assert table.column_names == ["query_id", "rank", "gallery_id", "distance", "gallery_pid", "gallery_camid"]
    assert table.num_rows == 200 and table.column("rank").to_pylist()[:5] == [1, 2, 3, 4, 5]
    # the first hit of the first query is its true nearest gallery row (all lists probed = exact)
    q0 = read_embeddings(embeddings, splits="query").vectors[0]
    nearest = np.argmin(np.linalg.norm(gallery.vectors - q0, axis=1))
    assert table.column("gallery_id")[0].as_py() == gallery.ids[nearest]
    assert table.column("gallery_pid")[0].as_py() == gallery.pid[nearest]
    record = read_run_record(found["run_dir"])
    assert record["kind"] == "search" and record["inputs"]["gallery_content_hash"] == gallery.content_hash()
    rankings = read_run_table(found["run_dir"], "rankings")
    assert rankings.num_rows == 200 and "is_match" in rankings.column_names

    tuned = run_json(capsys, ["tune", str(index), str(embeddings), "--k", "5", "--target-recall", "0.9"])
    assert tuned["met"] and tuned["saved"] and tuned["best"]["recall"] >= 0.9
    assert run_json(capsys, ["index-info", str(index)])["search_defaults"]["nprobe"] == tuned["best"]["nprobe"]


def test_text_output_and_pq_tuning_from_the_source_file(tmp_path, embeddings, capsys, monkeypatch):
    monkeypatch.setenv("RETRIEVE_WORKSPACE", str(tmp_path / "ws"))
    index = tmp_path / "pq"
    code = run(["build-index", str(embeddings), "--out", str(index), "--kind", "ivfpq", "--nlist", "4",
                "--pq-m", "8", "--pq-bits", "4", "--metric", "cosine"])
    out = capsys.readouterr()
    assert code == 0 and "built IVF4,PQ8x4 (cosine) of 600 × 16" in out.out
    assert run(["index-info", str(index)]) == 0 and "IVF4,PQ8x4" in capsys.readouterr().out
    code = run(["tune", str(index), str(embeddings), "--k", "5", "--target-recall", "0.3", "--no-save"])
    out = capsys.readouterr()
    assert code == 0 and "recall@5" in out.out and "not saved" in out.out


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["--kind", "ivf", "--nlist", "5000"], 1, "nlist 5000 needs at least 5000 training rows"),
        (["--kind", "ivf", "--factory", "Flat"], 2, "not both"),
        (["--nlist", "0"], 2, "must be at least 1"),
        (["--split", "train"], 1, "split(s) train are empty"),
    ],
)
def test_build_errors_are_one_line(tmp_path, embeddings, capsys, argv, code, message):
    got = run(["build-index", str(embeddings), "--out", str(tmp_path / "x")] + argv)
    err = capsys.readouterr().err
    assert got == code and message in err
    if code == 1:
        assert err.startswith("retrieve: error:") and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_search_errors_are_one_line(tmp_path, embeddings, capsys, monkeypatch):
    monkeypatch.setenv("RETRIEVE_WORKSPACE", str(tmp_path / "ws"))
    index = tmp_path / "flat"
    assert run(["build-index", str(embeddings), "--out", str(index)]) == 0
    other = tmp_path / "other.parquet"
    write_embeddings(other, ["a", "b"], np.ones((2, 8), dtype=np.float32))
    cases = [
        (["search", str(index), str(embeddings), "--k", "601"], "--k 601 is larger than the gallery (600 rows"),
        (["search", str(index), str(other)], "queries have dimension 8 but the index was built with dimension 16"),
        (["search", str(tmp_path / "nothing"), str(embeddings)], "no such index folder"),
        (["search", str(index), str(embeddings), "--nprobe", "3"], "IVF indexes only"),
    ]
    capsys.readouterr()
    for argv, message in cases:
        assert run(argv + ["--out", str(tmp_path / "r.parquet")]) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r.parquet").exists()  # no half-written results
    (index / "index.faiss").write_bytes(b"broken")
    assert run(["index-info", str(index)]) == 1
    assert "corrupt index file" in capsys.readouterr().err
