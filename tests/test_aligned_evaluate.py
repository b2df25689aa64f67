"""`retrieve evaluate --metric aligned [--local-weight w] [--rerank]` and its doors (job, notebook, export).

Expected values come from the brute force of tests/test_aligned.py (every monotone path, exact
fractions) fed to the evaluator as a plain matrix, and from the dense re-ranking reference.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.cli import run
from retrieval.data.store import write_embeddings
from retrieval.eval.distances import PrecomputedDistances
from retrieval.eval.evaluate import evaluate_ranking
from retrieval.runs import read_run_record
from test_aligned import brute_aligned, unit_parts

P = 3


@pytest.fixture(scope="module")
def parts_file(tmp_path_factory):
    """Float embeddings with parts: 6 queries, 16 gallery items (a duplicate, junk, distractors), 3 cameras."""
    rng = np.random.default_rng(11)
    n_q, n_g = 6, 16
    pid = np.concatenate([[0, 1, 2, 3, 0, 4], [0, 1, 2, 2, 3, -1, 0, 2, 1, 3, -1, 4, 9, 0, 7, 8]])
    centres = rng.standard_normal((10, 8)).astype(np.float32)
    vectors = centres[np.where(pid < 0, 9, pid)] + 0.6 * rng.standard_normal((n_q + n_g, 8)).astype(np.float32)
    parts = unit_parts(rng, n_q + n_g, P, 4).reshape(n_q + n_g, P * 4)
    vectors[n_q + 13], parts[n_q + 13] = vectors[n_q], parts[n_q]  # query 0 duplicated in the gallery
    camid = np.concatenate([[0, 1, 0, 1, 1, 2], np.arange(n_g) % 3])
    split = ["query"] * n_q + ["gallery"] * n_g
    folder = tmp_path_factory.mktemp("aligned")
    path = write_embeddings(folder / "parts.parquet", [f"i{k}" for k in range(n_q + n_g)], vectors, pid=pid,
                            camid=camid, split=split, parts=parts.reshape(n_q + n_g, P, 4))
    plain = write_embeddings(folder / "plain.parquet", [f"i{k}" for k in range(n_q + n_g)], vectors, pid=pid,
                             camid=camid, split=split)
    return {"path": path, "plain": plain, "vectors": vectors, "parts": parts, "pid": pid, "camid": camid, "n_q": n_q}


def expected(data, w):
    n_q = data["n_q"]
    v, p = data["vectors"], data["parts"]
    matrix = brute_aligned(v[:n_q], v[n_q:], p[:n_q], p[n_q:], P, w)
    pid, cam = data["pid"], data["camid"]
    return matrix, evaluate_ranking(PrecomputedDistances(matrix), pid[:n_q], pid[n_q:], cam[:n_q], cam[n_q:])


def evaluate_json(capsys, *args):
    code = run(["evaluate", *args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.mark.parametrize("w, flag", [(0.5, "--metric"), (1.0, "--distance")])
def test_cli_ranks_by_global_plus_weighted_local(capsys, tmp_path, parts_file, w, flag):
    weight = [] if w == 1.0 else ["--local-weight", str(w)]  # 1 is the default
    got = evaluate_json(capsys, str(parts_file["path"]), flag, "aligned", *weight, "--out", str(tmp_path / "run"))
    _, want = expected(parts_file, w)
    assert got["mAP"] == pytest.approx(want.mAP, abs=1e-15) and got["mINP"] == pytest.approx(want.mINP, abs=1e-15)
    assert [got["cmc"][str(r)] for r in range(1, 6)] == pytest.approx(list(want.cmc[:5]), abs=1e-15)
    record = read_run_record(tmp_path / "run")
    assert record["parameters"]["metric"] == "aligned" and record["parameters"]["local_weight"] == w
    assert "--metric aligned" in record["command"]


def test_weight_zero_ranks_as_the_euclidean_metric(capsys, parts_file):
    aligned = evaluate_json(capsys, str(parts_file["path"]), "--metric", "aligned", "--local-weight", "0")
    euclidean = evaluate_json(capsys, str(parts_file["path"]), "--metric", "euclidean")
    assert aligned["mAP"] == euclidean["mAP"] and aligned["cmc"] == euclidean["cmc"]


def test_rerank_on_the_aligned_distance_equals_the_dense_reference(capsys, tmp_path, parts_file):
    from _rerank_reference import dense_rerank_from

    got = evaluate_json(capsys, str(parts_file["path"]), "--metric", "aligned", "--local-weight", "0.5", "--rerank",
                        "--k1", "4", "--k2", "2", "--out", str(tmp_path / "rr"))
    n_q, v, p, pid, cam = parts_file["n_q"], parts_file["vectors"], parts_file["parts"], parts_file["pid"], parts_file["camid"]
    whole = brute_aligned(v, v, p, p, P, 0.5)
    reranked = dense_rerank_from(whole ** 2, n_q, 4, 2, 0.3)
    want = evaluate_ranking(PrecomputedDistances(reranked), pid[:n_q], pid[n_q:], cam[:n_q], cam[n_q:])
    assert got["mAP"] == pytest.approx(want.mAP, abs=1e-12)
    assert [got["cmc"][str(r)] for r in range(1, 6)] == pytest.approx(list(want.cmc[:5]), abs=1e-12)
    assert got["before_rerank"]["mAP"] == pytest.approx(expected(parts_file, 0.5)[1].mAP, abs=1e-15)


def test_notebook_and_export_use_the_same_distance(tmp_path, parts_file):
    import retrieval
    from retrieval.export import read_distance_matrix
    from retrieval.jobs.export import export_distances

    result = retrieval.evaluate(str(parts_file["path"]), metric="aligned", local_weight=2.0)
    matrix, want = expected(parts_file, 2.0)
    assert result.mAP == pytest.approx(want.mAP, abs=1e-15)
    saved = result.save(tmp_path / "nb")
    export_distances(saved, tmp_path / "matrix")
    np.testing.assert_array_equal(read_distance_matrix(tmp_path / "matrix").distances, matrix)


@pytest.mark.parametrize("args, message", [
    (["--local-weight", "0.5"], "--local-weight"),
    (["--metric", "aligned", "--local-weight", "-1"], "finite number ≥ 0"),
    (["--metric", "aligned", "--expand", "aqe"], "not available with --metric aligned"),
    (["--metric", "aligned", "--multi-query", "mean"], "not available with --metric aligned"),
    (["--metric", "aligned", "--ray", "local:1"], "not available with --ray"),
])
def test_option_errors_are_one_line_usage_errors(capsys, parts_file, args, message):
    code = run(["evaluate", str(parts_file["path"]), *args])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_file_without_parts_is_refused_by_name(capsys, parts_file):
    code = run(["evaluate", str(parts_file["plain"]), "--metric", "aligned"])
    err = capsys.readouterr().err
    assert code == 1 and "plain.parquet" in err and "no 'parts' column" in err and len(err.strip().splitlines()) == 1
