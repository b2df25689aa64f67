"""Exporting the query × gallery distance matrix of a small set: exact values, id orders, size limit."""

from __future__ import annotations

import json

import numpy as np
import pytest

from test_exact_distances import AnyKernel, clustered_data

from retrieval.errors import RetrieveError
from retrieval.eval.distances import EmbeddingDistances, PrecomputedDistances
from retrieval.eval.errors import EvaluationError
from retrieval.eval.export import distance_matrix
from retrieval.eval.rerank import RerankedDistances
from retrieval.common.errors import OutputError, OutputExistsError
from retrieval.export import IDS_FILE, read_distance_matrix, write_distance_matrix
from retrieval.indexes.distance import exact_pair_keys, key_to_distance, metric_from_name, prepare


@pytest.mark.parametrize("metric", ["euclidean", "sqeuclidean", "cosine"])
def test_entries_are_the_exact_distances(metric):
    d = clustered_data(1, n_query=12, n_gallery=70)
    core = metric_from_name(metric)
    q, g = prepare(d["q"], core), prepare(d["g"], core)
    rows, cols = np.indices((len(q), len(g))).reshape(2, -1)
    want = key_to_distance(exact_pair_keys(q, rows, g, cols, core), core).reshape(len(q), len(g))
    source = EmbeddingDistances(d["q"], d["g"], metric=metric)
    for block_rows in (1, 5, 100):
        got = distance_matrix(source, block_rows=block_rows)
        assert got.distances.dtype == np.float32
        np.testing.assert_array_equal(got.distances, want)
    # any kernel: approximate blocks, settled pair by pair, give the same bits
    np.testing.assert_array_equal(distance_matrix(AnyKernel(source, 3, edge=True), block_rows=4).distances, want)


def test_reranked_and_precomputed_sources():
    d = clustered_data(2, n_query=10, n_gallery=60)
    reranked = RerankedDistances(d["q"], d["g"], k1=6, k2=3)
    np.testing.assert_array_equal(distance_matrix(reranked, block_rows=3).distances, reranked.dense())
    given = np.arange(12.0).reshape(3, 4)
    out = distance_matrix(PrecomputedDistances(given), ["a", "b", "c"], ["w", "x", "y", "z"])
    np.testing.assert_array_equal(out.distances, given)
    assert out.query_ids.tolist() == ["a", "b", "c"] and out.metric == "precomputed"


def test_refused_above_the_limit_with_the_reason():
    source = PrecomputedDistances(np.zeros((30, 40)))
    with pytest.raises(EvaluationError, match=r"a 30 × 40 distance matrix holds 1,200 distances .* above the export limit of 1,000"):
        distance_matrix(source, max_entries=1000)
    assert distance_matrix(source, max_entries=1200).distances.shape == (30, 40)
    with pytest.raises(EvaluationError, match="2 ids given for 40 items"):
        distance_matrix(source, gallery_ids=["a", "b"])


def test_written_folder_reads_back(tmp_path):
    d = clustered_data(3, n_query=5, n_gallery=20)
    ids_q = [f"q{i}" for i in range(5)]
    ids_g = [f"g{i}" for i in range(20)]
    matrix = distance_matrix(EmbeddingDistances(d["q"], d["g"]), ids_q, ids_g)
    out = write_distance_matrix(matrix, tmp_path / "out", record={"run": "r1"})
    back = read_distance_matrix(out)
    np.testing.assert_array_equal(back.distances, matrix.distances)
    assert back.query_ids.tolist() == ids_q and back.gallery_ids.tolist() == ids_g
    assert json.loads((out / IDS_FILE).read_text())["run"] == "r1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging folder left
    with pytest.raises(OutputExistsError, match="already exists"):
        write_distance_matrix(matrix, out)
    write_distance_matrix(matrix, out, overwrite=True)
    (out / IDS_FILE).unlink()
    with pytest.raises(RetrieveError, match="ids.json is missing"):
        read_distance_matrix(out)


def test_a_folder_that_is_not_an_export_is_never_replaced(tmp_path):
    matrix = distance_matrix(PrecomputedDistances(np.ones((2, 2))))
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError, match="is not a distance export"):
        write_distance_matrix(matrix, tmp_path / "mine", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]
