"""`retrieve identify` and `retrieve cluster` end to end: --json keys, run folders, catalogue views,
reports, index candidate lists, and the user errors of issue 13 (notes, nulls, usage errors)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.catalogue import connect
from retrieval.cli import run
from retrieval.data.store import write_embeddings
from retrieval.eval.identification import identify
from retrieval.runs import read_run_record, read_run_table


@pytest.fixture(scope="module")
def faces(tmp_path_factory) -> Path:
    """40 people × 5 gallery images; 60 probes: 40 of enrolled people, 20 of people never enrolled;
    a few junk gallery items and unknown (pid 0) people."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((61, 16))
    gallery_pid = np.repeat(np.arange(1, 41), 5)
    gallery_pid[::23] = 0
    gallery_pid[::31] = -1
    probe_pid = np.concatenate([np.arange(1, 41), np.arange(41, 61)])
    vectors = np.concatenate([centres[np.maximum(gallery_pid, 0)], centres[probe_pid]])
    vectors = (vectors + 0.45 * rng.standard_normal(vectors.shape)).astype(np.float32)
    pid = np.concatenate([gallery_pid, probe_pid])
    split = np.array(["gallery"] * len(gallery_pid) + ["query"] * len(probe_pid), dtype=object)
    ids = [f"g{i:03d}" for i in range(len(gallery_pid))] + [f"p{i:03d}" for i in range(len(probe_pid))]
    path = tmp_path_factory.mktemp("faces") / "faces.parquet"
    write_embeddings(path, ids, vectors, pid=pid, split=split)
    return path


def run_json(capsys, argv: list[str]) -> dict:
    code = run([*argv, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def usage_error(capsys, argv: list[str], code: int = 2) -> str:
    assert run(argv) == code
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) >= 1
    return err


# ----------------------------------------------------------------------------- identify


def test_identify_json_run_folder_and_catalogue(tmp_path, faces, capsys):
    out = tmp_path / "ws" / "id"
    result = run_json(capsys, ["identify", str(faces), "--out", str(out), "--fpir", "5e-2,1e-1", "--ranks", "1,5"])
    for key in ("protocol", "template", "metric", "num_probes", "num_mated", "num_nonmated", "num_identities", "cmc",
                "tpir_at_fpir", "run_dir"):
        assert key in result
    assert (result["protocol"], result["template"], result["metric"]) == ("identification", "item", "cosine")
    assert (result["num_probes"], result["num_mated"], result["num_nonmated"]) == (60, 40, 20)
    assert set(result["cmc"]) == {"1", "5"} and set(result["tpir_at_fpir"]) == {"5e-2", "1e-1"}
    assert result["tpir_at_fpir"]["5e-2"]["reachable"] is True  # 20 non-mated: 1/20 is reachable
    assert result["run_dir"] == str(out)
    record = read_run_record(out)
    assert record["kind"] == "identify" and record["result"] == result
    per_probe = read_run_table(out, "per_probe")
    assert per_probe.column_names[:8] == ["probe_id", "pid", "mated", "top1_identity", "top1_gallery_id", "top1_score",
                                          "mate_rank", "mate_score"]
    curves = read_run_table(out, "curves").to_pydict()
    assert set(curves["curve"]) == {"cmc", "det"}
    det = [(x, y) for c, x, y in zip(curves["curve"], curves["x"], curves["y"]) if c == "det"]
    assert det[0] == (0.0, 1.0) and det[-1][0] == 1.0  # accept nothing ... accept everything
    with connect(tmp_path / "ws") as con:
        assert con.execute("SELECT count(*) FROM per_probe WHERE mated").fetchone()[0] == 40
        assert con.execute("SELECT value FROM metrics WHERE metric = 'rank-1'").fetchone()[0] == result["cmc"]["1"]
        assert con.execute("SELECT rank1 FROM runs").fetchone()[0] == result["cmc"]["1"]


def test_identify_equals_the_engine_on_the_same_rows(faces, tmp_path, capsys):
    from retrieval.data.store import read_embeddings

    result = run_json(capsys, ["identify", str(faces), "--template", "mean", "--metric", "euclidean",
                               "--out", str(tmp_path / "r")])
    emb = read_embeddings(faces)
    q, g = emb.split == "query", emb.split == "gallery"
    direct = identify(emb.vectors[q], emb.vectors[g], emb.pid[q], emb.pid[g], template="mean", metric="euclidean",
                      probe_ids=emb.ids[q], gallery_ids=emb.ids[g])
    assert result["cmc"] == direct.to_dict()["cmc"] and result["tpir_at_fpir"] == direct.to_dict()["tpir_at_fpir"]
    assert read_run_table(tmp_path / "r", "per_probe").equals(direct.per_probe)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_identify_through_an_index(tmp_path, faces, capsys, kind):
    index = tmp_path / "index"
    assert run(["build-index", str(faces), "--split", "gallery", "--kind", kind, "--metric", "cosine",
                "--out", str(index)] + (["--nlist", "4"] if kind == "ivf" else [])) == 0
    capsys.readouterr()
    listed = run_json(capsys, ["identify", str(faces), "--index", str(index), "--k", "200",
                               "--out", str(tmp_path / "listed")])
    full = run_json(capsys, ["identify", str(faces), "--out", str(tmp_path / "full")])
    assert listed["candidates"] == "index top-k (k=200)"
    # every gallery item listed (flat; the IVF's default nprobe reaches all its 4 cells): the exhaustive numbers
    assert (listed["cmc"], listed["tpir_at_fpir"]) == (full["cmc"], full["tpir_at_fpir"])
    assert read_run_table(tmp_path / "listed", "per_probe").equals(read_run_table(tmp_path / "full", "per_probe"))


def test_identify_user_errors_and_notes(tmp_path, faces, capsys):
    err = usage_error(capsys, ["identify", str(faces), "--fpir", "0"])
    assert "FPIR targets" in err
    err = usage_error(capsys, ["identify", str(faces), "--index", str(tmp_path), "--template", "mean",
                               "--out", str(tmp_path / "x")])
    assert "--index needs --template item" in err
    # probes without pid (another file): candidate lists only, with a note
    from retrieval.data.store import read_embeddings

    emb = read_embeddings(faces)
    q = emb.split == "query"
    probes = tmp_path / "probes.parquet"
    write_embeddings(probes, emb.ids[q], emb.vectors[q], split=np.full(int(q.sum()), "query", dtype=object))
    gallery = tmp_path / "gallery.parquet"
    g = emb.split == "gallery"
    write_embeddings(gallery, emb.ids[g], emb.vectors[g], pid=emb.pid[g])
    result = run_json(capsys, ["identify", str(probes), "--gallery", str(gallery), "--out", str(tmp_path / "n")])
    assert result["cmc"] is None and result["tpir_at_fpir"] is None
    assert any("no pid" in note for note in result["notes"])


def test_identify_without_nonmated_probes_reports_null_with_the_reason(tmp_path, capsys):
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((30, 8)).astype(np.float32)
    pid = np.concatenate([np.arange(1, 21), np.arange(1, 11)])
    split = np.array(["gallery"] * 20 + ["query"] * 10, dtype=object)
    path = tmp_path / "e.parquet"
    write_embeddings(path, [f"i{i}" for i in range(30)], vectors, pid=pid, split=split)
    result = run_json(capsys, ["identify", str(path), "--out", str(tmp_path / "r")])
    assert result["tpir_at_fpir"] is None and result["num_nonmated"] == 0
    assert any("no non-mated probes" in note for note in result["notes"])


# ----------------------------------------------------------------------------- cluster


def test_cluster_sweep_json_run_folder_catalogue_and_report(tmp_path, faces, capsys):
    out = tmp_path / "ws" / "cl"
    result = run_json(capsys, ["cluster", str(faces), "--split", "gallery", "--k", "5", "--sweep", "auto",
                               "--out", str(out)])
    for key in ("pairwise_precision", "pairwise_recall", "pairwise_f", "bcubed_precision", "bcubed_recall", "bcubed_f",
                "nmi", "ari", "homogeneity", "completeness", "v_measure", "num_clusters", "num_classes",
                "singleton_fraction"):
        assert result[key] is not None, key
    assert len(result["sweep"]) >= 8 and sum(p["chosen"] for p in result["sweep"]) == 1
    assert result["chosen_by"].startswith("oracle")
    best = max(p["pairwise_f"] for p in result["sweep"])
    assert result["pairwise_f"] == best
    clusters = read_run_table(out, "clusters")
    assert clusters.column_names == ["id", "cluster", "pid", "threshold"]
    assert clusters.num_rows == 200 * len(result["sweep"])
    quality = read_run_table(out, "cluster_quality").to_pylist()
    assert all(row["mean_similarity"] is None for row in quality if row["size"] == 1)
    with connect(tmp_path / "ws") as con:
        chosen = con.execute("SELECT threshold FROM sweep WHERE chosen").fetchone()[0]
        assert chosen == result["threshold"]
        assert con.execute("SELECT pairwise_f FROM runs").fetchone()[0] == result["pairwise_f"]
        assert con.execute(f"SELECT count(DISTINCT cluster) FROM clusters WHERE threshold = {chosen}").fetchone()[0] \
            == result["num_clusters"]
    report = tmp_path / "report.html"
    assert run(["report", str(out), "--out", str(report)]) == 0
    page = report.read_text()
    assert "Cluster sizes" in page and "Threshold sweep" in page and "Clusters to review first" in page


@pytest.mark.parametrize("method,threshold", [("components", "0.3"), ("agglomerative", "0.4"), ("dbscan", "0.3")])
def test_cluster_methods_at_one_threshold(tmp_path, faces, capsys, method, threshold):
    result = run_json(capsys, ["cluster", str(faces), "--split", "gallery", "--method", method, "--threshold", threshold,
                               "--k", "5", "--out", str(tmp_path / method)])
    assert result["method"] == method and result["threshold"] == float(threshold) and "sweep" not in result
    assert result["chosen_by"] == "the given threshold" and 0 <= result["pairwise_f"] <= 1


def test_cluster_without_pids_gives_sizes_and_a_note(tmp_path, capsys):
    rng = np.random.default_rng(2)
    path = tmp_path / "nolabels.parquet"
    write_embeddings(path, [f"i{i}" for i in range(50)], rng.standard_normal((50, 8)).astype(np.float32))
    result = run_json(capsys, ["cluster", str(path), "--k", "4", "--out", str(tmp_path / "r")])
    assert result["pairwise_f"] is None and result["threshold"] is None and result["chosen_by"] is None
    assert all("pairwise_f" not in point for point in result["sweep"])
    assert any("no pid" in note for note in result["notes"])
    clusters = read_run_table(tmp_path / "r", "clusters")
    assert clusters.column("pid").null_count == clusters.num_rows == 50 * len(result["sweep"])


def test_cluster_through_an_index(tmp_path, faces, capsys):
    index = tmp_path / "index"
    assert run(["build-index", str(faces), "--split", "gallery", "--kind", "flat", "--metric", "cosine",
                "--out", str(index)]) == 0
    capsys.readouterr()
    listed = run_json(capsys, ["cluster", str(faces), "--split", "gallery", "--k", "5", "--threshold", "1.5",
                               "--index", str(index), "--out", str(tmp_path / "a")])
    exact = run_json(capsys, ["cluster", str(faces), "--split", "gallery", "--k", "5", "--threshold", "1.5",
                              "--out", str(tmp_path / "b")])
    assert listed["neighbours"]["kind"] == "index" and exact["neighbours"]["kind"] == "flat"
    a, b = read_run_table(tmp_path / "a", "clusters"), read_run_table(tmp_path / "b", "clusters")
    assert a.column("cluster").equals(b.column("cluster"))  # a flat index's lists are the exact lists


def test_cluster_user_errors(tmp_path, faces, capsys):
    err = usage_error(capsys, ["cluster", str(faces), "--threshold", "3", "--method", "components"])
    assert "outside the range (0, 2] of cosine distance" in err
    err = usage_error(capsys, ["cluster", str(faces), "--k", "5", "--threshold", "9"])
    assert "rank-order distance with k = 5" in err
    assert "not both" in usage_error(capsys, ["cluster", str(faces), "--threshold", "1", "--sweep", "auto"])
    assert "not both" in usage_error(capsys, ["cluster", str(faces), "--index", str(tmp_path), "--kind", "ivf"])
    assert "whole distance matrix" in usage_error(capsys, ["cluster", str(faces), "--method", "dbscan",
                                                          "--index", str(tmp_path)])
    assert "auto or comma-separated" in usage_error(capsys, ["cluster", str(faces), "--sweep", "a,b"])
