"""Sharded indexes in one process: a sharded flat index answers as one flat index; shards are checked."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import numpy as np
import pytest

from retrieval.cli import run
from retrieval.data.store import write_embeddings
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.handle import load_index
from retrieval.indexes.search import merge_top_k
from retrieval.indexes.sharded import ShardedIndexHandle
from retrieval.jobs.index import BuildOptions, build


@pytest.fixture()
def gallery_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    n, dim = 600, 16
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    vectors[100] = vectors[400]  # identical vectors in different shards: an exact tie, ordered by row
    vectors[101] = vectors[102]
    split = np.where(np.arange(n) < 60, "query", "gallery")
    path = tmp_path / "emb.parquet"
    write_embeddings(path, [f"x{i}" for i in range(n)], vectors, pid=rng.integers(1, 40, n),
                     camid=rng.integers(0, 3, n), split=split)
    return path


@pytest.mark.parametrize("metric", ["l2", "ip", "cosine"])
def test_sharded_flat_answers_as_one_flat_index(tmp_path: Path, gallery_file: Path, metric: str) -> None:
    one = build(gallery_file, tmp_path / "one", BuildOptions(metric=metric, device="cpu"), overwrite=False).handle
    sharded = build(gallery_file, tmp_path / "four", BuildOptions(metric=metric, device="cpu", shards=4),
                    overwrite=False).handle
    assert isinstance(sharded, ShardedIndexHandle) and len(sharded.manifest["shards"]) == 4
    assert sharded.manifest["content_hash"] == one.manifest["content_hash"]
    queries = np.random.default_rng(1).normal(size=(30, 16)).astype(np.float32)
    queries[0] = load_index(tmp_path / "one").index.reconstruct(40)  # sits on the duplicated rows' tie
    for k in (1, 10, 540):
        a, b = one.search_detailed(queries, k), load_index(tmp_path / "four").search_detailed(queries, k)
        assert np.array_equal(a.rows, b.rows) and np.array_equal(a.distances, b.distances)
    assert sharded.rows.equals(one.rows)


def test_ivf_shards_share_the_quantizer_one_build_trains(tmp_path: Path, gallery_file: Path) -> None:
    options = dict(kind="ivf", nlist=8, device="cpu", seed=3)
    one = build(gallery_file, tmp_path / "one", BuildOptions(**options), overwrite=False).handle
    build(gallery_file, tmp_path / "three", BuildOptions(**options, shards=3), overwrite=False)
    def centroids(index):  # the index must outlive the quantizer taken from it
        return faiss.downcast_index(faiss.extract_index_ivf(index).quantizer).reconstruct_n(0, 8).copy()

    expected = centroids(one.index)
    for shard in sorted((tmp_path / "three").glob("shard-*")):
        handle = load_index(shard)
        assert np.array_equal(expected, centroids(handle.index))
    counts = [r["count"] for r in json.loads((tmp_path / "three" / "manifest.json").read_text())["shards"]]
    assert sum(counts) == 540 and len(counts) == 3


def test_a_changed_shard_file_is_refused_by_name(tmp_path: Path, gallery_file: Path) -> None:
    build(gallery_file, tmp_path / "idx", BuildOptions(device="cpu", shards=2), overwrite=False)
    rows = tmp_path / "idx" / "shard-00001" / "rows.parquet"
    rows.write_bytes(rows.read_bytes() + b"\0")
    handle = load_index(tmp_path / "idx")
    with pytest.raises(FaissIndexError, match=r"shard-00001/rows.parquet: shard file changed since the index was built"):
        handle.search(np.zeros((1, 16), np.float32), 3)


def test_merge_top_k_orders_by_value_then_row() -> None:
    values, rows = merge_top_k([(np.array([[1.0, 2.0]]), np.array([[5, 9]])),
                                (np.array([[1.0, 1.5]]), np.array([[2, 7]]))], 3)
    assert rows.tolist() == [[2, 5, 7]] and values.tolist() == [[1.0, 1.0, 1.5]]


def test_cli_builds_and_searches_a_sharded_index(tmp_path: Path, gallery_file: Path, capsys) -> None:
    out = tmp_path / "idx"
    assert run(["build-index", str(gallery_file), "--out", str(out), "--shards", "3", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["manifest"]["kind"] == "sharded" and len(built["manifest"]["shards"]) == 3
    assert run(["search", str(out), str(gallery_file), "--k", "5", "--json",
                "--workspace", str(tmp_path / "ws")]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["num_queries"] == 60 and found["params"]["shards"] == 3
    assert run(["evaluate", str(gallery_file), "--index", str(out), "--k", "20", "--json",
                "--out", str(tmp_path / "run")]) == 0
    assert json.loads(capsys.readouterr().out)["topk"] == 20


def test_ray_without_shards_is_a_usage_error(tmp_path: Path, gallery_file: Path, capsys) -> None:
    code = run(["build-index", str(gallery_file), "--out", str(tmp_path / "i"), "--ray", "local:2"])
    assert code == 2 and "give --shards S" in capsys.readouterr().err  # refused before any cluster starts
    code = run(["build-index", str(gallery_file), "--out", str(tmp_path / "i"), "--shards", "2", "--ray", "local:x"])
    assert code == 2 and "expected local, local:N" in capsys.readouterr().err


def test_tune_refuses_a_sharded_index(tmp_path: Path, gallery_file: Path, capsys) -> None:
    build(gallery_file, tmp_path / "idx", BuildOptions(device="cpu", shards=2), overwrite=False)
    assert run(["tune", str(tmp_path / "idx"), str(gallery_file)]) == 2
    assert "sharded index is not tuned" in capsys.readouterr().err
