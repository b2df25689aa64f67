"""`retrieve evaluate --expand / --multi-query` and the CUHK03 layout's CMC default, through the CLI and
the notebook API: the stages, the JSON, the run folder, and the numbers against the library."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval import evaluate
from retrieval.cli import run
from retrieval.data.store import read_embeddings, write_embeddings
from retrieval.eval.distances import EmbeddingDistances
from retrieval.eval.evaluate import evaluate_ranking
from retrieval.eval.expansion import Expansion, expand
from retrieval.eval.multi_query import pool_queries
from retrieval.runs import read_run_record, read_run_table

EMB = Path(__file__).parent / "data" / "reid_small" / "embeddings.parquet"


def run_json(capsys, *args):
    code = run(["evaluate", str(EMB), "--device", "cpu", *args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def library_map(emb, expansion=None, pool=None):
    query, gallery = emb.by_split("query"), emb.by_split("gallery")
    q, g = query.vectors, gallery.vectors
    if pool:
        q = pool_queries(q, query.pid, query.camid, query.ids, mode=pool).vectors
    if expansion:
        out = expand(q, g, expansion)
        q, g = out.queries, out.gallery
    return evaluate_ranking(EmbeddingDistances(q, g), query.pid, gallery.pid, query.camid, gallery.camid).mAP


def test_expansion_stages_in_the_json_and_the_run_folder(capsys, tmp_path):
    plain = run_json(capsys, "--out", str(tmp_path / "plain"))
    result = run_json(capsys, "--expand", "alpha-qe", "--qe-k", "4", "--qe-alpha", "2", "--out", str(tmp_path / "x"))
    emb = read_embeddings(EMB)
    assert result["mAP"] == pytest.approx(library_map(emb, Expansion(("alpha-qe",), qe_k=4, qe_alpha=2.0)), abs=1e-12)
    assert result["before_expansion"]["mAP"] == plain["mAP"]
    assert result["expansion"]["methods"] == ["alpha-qe"] and result["expansion"]["qe_alpha"] == 2.0
    assert "before_rerank" not in result and plain["expansion"] is None
    record = read_run_record(tmp_path / "x")
    assert record["parameters"]["expand"] == ["alpha-qe"] and record["parameters"]["qe_k"] == 4
    assert record["result"]["expansion"] == result["expansion"]
    stages = set(read_run_table(tmp_path / "x", "metrics").column("stage").to_pylist())
    assert stages == {"plain", "expansion"}
    per_query = read_run_table(tmp_path / "x", "per_query")
    ap_before = per_query.column("ap_before_expansion").to_numpy(zero_copy_only=False)
    assert np.nanmean(ap_before.astype(float)) == pytest.approx(plain["mAP"], abs=1e-12)


def test_expansion_then_reranking_keeps_three_stages(capsys, tmp_path):
    result = run_json(capsys, "--expand", "dba,aqe", "--rerank", "--k1", "12", "--k2", "4", "--out", str(tmp_path / "r"))
    emb = read_embeddings(EMB)
    assert result["before_rerank"]["mAP"] == pytest.approx(library_map(emb, Expansion(("dba", "aqe"))), abs=1e-12)
    assert result["expansion"]["order"] == "dba -> aqe"
    stages = read_run_table(tmp_path / "r", "metrics").column("stage").to_pylist()
    assert sorted(set(stages)) == ["expansion", "plain", "rerank"]
    from retrieval.catalogue import headline_metrics

    stage, values = headline_metrics(tmp_path / "r")
    assert stage == "rerank" and values["mAP"] == pytest.approx(result["mAP"])


def test_the_notebook_api_gives_the_same_numbers(capsys, tmp_path):
    cli = run_json(capsys, "--expand", "dba", "--dba-k", "3", "--multi-query", "mean", "--out", str(tmp_path / "c"))
    emb = read_embeddings(EMB)
    api = evaluate(emb.by_split("query"), emb.by_split("gallery"), expand="dba", dba_k=3, multi_query="mean",
                   device="cpu")
    assert api.to_dict()["mAP"] == cli["mAP"]
    assert [stage for stage, _ in api.stages] == ["plain", "expansion"]
    assert cli["multi_query"]["multi_query"] == "mean" and cli["multi_query"]["queries"] == cli["num_queries"]
    assert cli["mAP"] == pytest.approx(library_map(emb, Expansion(("dba",), dba_k=3), pool="mean"), abs=1e-12)


@pytest.mark.parametrize("args, flag", [
    (["--expand", "qe"], "unknown expansion 'qe'"),
    (["--expand", "aqe,alpha-qe"], "at most one of aqe / alpha-qe"),
    (["--expand", "aqe", "--qe-k", "0"], "qe_k must be a whole number"),
    (["--expand", "alpha-qe", "--qe-alpha", "-1"], "qe_alpha must be a finite number"),
])
def test_bad_expansion_options_are_usage_errors(capsys, args, flag):
    assert run(["evaluate", str(EMB), *args]) == 2
    assert flag in capsys.readouterr().err


def test_expansion_refuses_index_top_k_mode(capsys, tmp_path):
    assert run(["build-index", str(EMB), "--out", str(tmp_path / "idx")]) == 0
    assert run(["evaluate", str(EMB), "--index", str(tmp_path / "idx"), "--expand", "aqe"]) == 2
    assert "--expand needs the embeddings' full rankings" in capsys.readouterr().err


def test_a_cuhk03_file_evaluates_single_gallery_shot_by_default(capsys, tmp_path):
    from retrieval.data.importers import with_layout_metadata
    from retrieval.data.layouts import build_manifest
    from retrieval.data.store import embeddings_table
    from retrieval.data.writer import write_parquet_atomically

    root = tmp_path / "cuhk03-np" / "detected"
    names = {"query": ["0001_c1_1", "0002_c1_1"], "bounding_box_test": ["0001_c2_1", "0001_c2_2", "0002_c2_1", "0003_c2_1"]}
    for folder, stems in names.items():
        (root / folder).mkdir(parents=True)
        for stem in stems:
            (root / folder / f"{stem}.png").write_bytes(b"")
    (root / "bounding_box_train").mkdir()
    manifest = build_manifest("cuhk03", root)
    rows = manifest.to_pylist()
    rng = np.random.default_rng(0)
    table = embeddings_table([r["id"] for r in rows], rng.normal(size=(len(rows), 8)).astype(np.float32),
                             pid=[r["pid"] for r in rows], camid=[r["camid"] for r in rows],
                             split=[r["split"] for r in rows], paths=[r["path"] for r in rows])
    path = tmp_path / "cuhk.parquet"
    write_parquet_atomically(with_layout_metadata(table, manifest), path)
    code = run(["evaluate", str(path), "--json", "--out", str(tmp_path / "run")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert json.loads(captured.out)["cmc_mode"] == "single-gallery-shot"
    assert "the default of this data set's layout" in captured.err
    assert run(["evaluate", str(path), "--json", "--cmc-mode", "multi-gallery-shot", "--out", str(tmp_path / "m")]) == 0
    assert json.loads(capsys.readouterr().out)["cmc_mode"] == "multi-gallery-shot"
    write_embeddings(tmp_path / "plain.parquet", ["a", "b"], np.eye(2, dtype=np.float32), pid=[1, 1], camid=[0, 1],
                     split=["query", "gallery"])
    assert run(["evaluate", str(tmp_path / "plain.parquet"), "--json", "--out", str(tmp_path / "p")]) == 0
    assert json.loads(capsys.readouterr().out)["cmc_mode"] == "multi-gallery-shot"
