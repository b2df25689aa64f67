"""`retrieve verify` through the CLI: golden pairs, run folder, trials mode, and user errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.data.store import read_embeddings, write_embeddings
from retrieval.cli import run
from retrieval.runs import read_run_record, read_run_table

DATA = Path(__file__).parent / "data"
GOLDEN = DATA / "verification_pairs"
REID = DATA / "reid_small" / "embeddings.parquet"


def verify_json(capsys, *args) -> dict:
    code = run(["verify", *args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


def test_golden_pairs_with_the_lfw_grid(tmp_path, capsys):
    expected = json.loads((GOLDEN / "expected.json").read_text())
    out = tmp_path / "run"
    result = verify_json(
        capsys, str(GOLDEN / "embeddings.parquet"), "--pairs", str(GOLDEN / "pairs.txt"),
        "--threshold-grid", "lfw", "--out", str(out),
    )
    assert result["num_pairs"] == 6000 and result["folds"] == 10
    assert result["fold_accuracy"] == expected["fold_accuracy_grid"]
    assert result["accuracy_mean"] == pytest.approx(expected["accuracy_mean_grid"], abs=1e-12)
    assert result["accuracy_std"] == pytest.approx(expected["accuracy_std_grid"], abs=1e-12)
    assert result["roc_auc"] == pytest.approx(expected["roc_auc"], abs=1e-6)
    assert set(result["tar_at_far"]) == {"1e-1", "1e-2", "1e-3"}
    for label, tar in expected["tar_at_far"].items():
        point = result["tar_at_far"][label]
        assert point["tar"] == pytest.approx(tar, abs=1e-6)
        assert point["far"] <= float(label)
    assert abs(result["eer"] - expected["eer_approx"]) <= 1 / 3000  # convention differs by < one step
    assert (result["distance"], result["threshold_grid"], result["warnings"]) == ("sqeuclidean", "lfw", [])
    assert result["run_dir"] == str(out)

    record = read_run_record(out)
    assert record["kind"] == "verify" and record["result"] == result
    metrics = read_run_table(out, "metrics").to_pylist()
    by_name = {row["metric"]: row["value"] for row in metrics}
    assert by_name["accuracy_mean"] == result["accuracy_mean"] and by_name["tar@far=1e-3"] == result["tar_at_far"]["1e-3"]["tar"]
    curve = read_run_table(out, "curves").to_pydict()
    assert len(curve["x"]) <= 2000 and set(curve["curve"]) == {"roc"}
    assert (curve["x"][0], curve["y"][0], curve["x"][-1], curve["y"][-1]) == (0.0, 0.0, 1.0, 1.0)
    assert np.all(np.diff(curve["x"]) >= 0) and np.all(np.diff(curve["y"]) >= 0)
    folds = read_run_table(out, "folds").to_pydict()
    assert folds["accuracy"] == expected["fold_accuracy_grid"]


def test_exact_grid_and_cosine(tmp_path, capsys):
    args = [str(GOLDEN / "embeddings.parquet"), "--pairs", str(GOLDEN / "pairs.txt"), "--workspace", str(tmp_path)]
    exact = verify_json(capsys, *args, "--folds", "5", "--far", "1e-2,0.05")
    assert exact["folds"] == 5 and len(exact["fold_accuracy"]) == 5 and exact["threshold_grid"] == "exact"
    assert set(exact["tar_at_far"]) == {"1e-2", "5e-2"} and set(exact["val_at_far"]) == {"1e-2", "5e-2"}
    cosine = verify_json(capsys, *args, "--distance", "cosine")
    assert cosine["distance"] == "cosine" and 0.5 < cosine["roc_auc"] <= 1


def test_too_few_impostors_warns(tmp_path, capsys):
    result = verify_json(
        capsys, str(GOLDEN / "embeddings.parquet"), "--pairs", str(GOLDEN / "pairs.txt"),
        "--far", "1e-4", "--workspace", str(tmp_path),
    )
    assert result["tar_at_far"]["1e-4"]["far"] == 0.0
    assert len(result["warnings"]) == 1 and "3000 impostor pairs" in result["warnings"][0]


def write_pairs(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def small_embeddings(tmp_path: Path, with_paths: bool) -> Path:
    names = [("Ann", 1), ("Ann", 2), ("Bob", 1), ("Bob", 2)]
    ids = [f"img{i}" if with_paths else f"{n}_{k:04d}" for i, (n, k) in enumerate(names)]
    paths = [f"lfw/{n}/{n}_{k:04d}.jpg" for n, k in names] if with_paths else None
    vectors = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.2, 0.8]], np.float32)
    return write_embeddings(tmp_path / "emb.parquet", ids, vectors, pid=[1, 1, 2, 2], paths=paths)


@pytest.mark.parametrize("with_paths", [False, True])
def test_images_found_by_id_or_path(tmp_path, capsys, with_paths):
    emb = small_embeddings(tmp_path, with_paths)
    pairs = write_pairs(tmp_path / "pairs.txt", "2\t1", ["Ann\t1\t2", "Ann\t1\tBob\t1", "Bob\t1\t2", "Bob\t2\tAnn\t2"])
    result = verify_json(capsys, str(emb), "--pairs", str(pairs), "--workspace", str(tmp_path / "ws"))
    assert result["num_pairs"] == 4 and result["num_same"] == 2 and result["folds"] == 2
    assert result["roc_auc"] == 1.0


def test_missing_images_are_listed(tmp_path, capsys):
    emb = small_embeddings(tmp_path, False)
    lines = ["Ann\t1\t7", "Ann\t1\tZed\t1", "Bob\t1\t2", "Bob\t2\tAnn\t9"]
    pairs = write_pairs(tmp_path / "pairs.txt", "2\t1", lines)
    code = run(["verify", str(emb), "--pairs", str(pairs), "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("retrieve: error: 3 image(s)") and err.count("\n") == 1
    for key in ("Ann_0007", "Zed_0001", "Ann_0009"):
        assert key in err
    assert not (tmp_path / "ws").exists()  # nothing written


@pytest.mark.parametrize(
    "header, lines, message",
    [
        ("2\t1", ["Ann\t1\t2", "Ann\t1\tBob\t1\t5", "Bob\t1\t2", "Bob\t2\tAnn\t2"], "pairs.txt:3: expected 'name i j'"),
        ("2\t1", ["Ann\t1\t2", "Ann\t1\tBob", "Bob\t1\t2", "Bob\t2\tAnn\t2"], "pairs.txt:3: image number 'Bob'"),
        ("2\t1", ["Ann\t1\t2", "Ann\t1\tBob\t1", "Bob\tx\t2", "Bob\t2\tAnn\t2"], "pairs.txt:4: image number 'x'"),
        ("two\t1", ["Ann\t1\t2"], "pairs.txt:1: bad header"),
        ("2\t2", ["Ann\t1\t2", "Ann\t1\tBob\t1"], "announces 2 × 2 × 2 = 8 pairs, the file has 2"),
    ],
)
def test_malformed_pairs_file(tmp_path, capsys, header, lines, message):
    emb = small_embeddings(tmp_path, False)
    pairs = write_pairs(tmp_path / "pairs.txt", header, lines)
    code = run(["verify", str(emb), "--pairs", str(pairs), "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert code == 1 and message in err and err.count("\n") == 1


@pytest.mark.parametrize(
    "extra",
    [
        [],  # neither --pairs nor --trials
        ["--pairs", "p.txt", "--trials", "query-gallery"],
        ["--pairs", "p.txt", "--far", "2"],
        ["--pairs", "p.txt", "--far", "abc"],
        ["--pairs", "p.txt", "--distance", "cosine", "--threshold-grid", "lfw"],
        ["--pairs", "p.txt", "--folds", "1"],
        ["--trials", "query-gallery", "--folds", "10"],
    ],
)
def test_usage_errors_exit_2(tmp_path, capsys, extra):
    code = run(["verify", str(GOLDEN / "embeddings.parquet"), *extra, "--workspace", str(tmp_path)])
    capsys.readouterr()
    assert code == 2


def test_query_gallery_trials_match_the_library(tmp_path, capsys):
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.protocol import RankingLabels
    from retrieval.eval.trials import query_gallery_verification

    result = verify_json(capsys, str(REID), "--trials", "query-gallery", "--device", "cpu", "--out", str(tmp_path / "run"))
    emb = read_embeddings(REID)
    q, g = emb.by_split("query"), emb.by_split("gallery")
    # brute force: all trials of the dense matrix, junk = same pid & camid, or pid -1
    source = EmbeddingDistances(q.vectors, g.vectors, "sqeuclidean")
    dense = np.concatenate([source.to_distance(b.values) for b in source.exact_blocks(50)])
    same = (q.pid[:, None] == g.pid[None, :]) & (q.pid[:, None] != 0)  # distractors match nobody
    keep = ~(same & (q.camid[:, None] == g.camid[None, :])) & (g.pid[None, :] != -1) & (q.pid[:, None] != -1)
    assert result["num_pairs"] == int(keep.sum()) and result["num_same"] == int((same & keep).sum())
    genuine, impostor = dense[same & keep], dense[~same & keep]
    auc = np.mean([np.mean(impostor > v) + 0.5 * np.mean(impostor == v) for v in genuine])
    assert result["roc_auc"] == pytest.approx(auc, abs=1e-12)
    labels = RankingLabels(q.pid, g.pid, q.camid, g.camid, protocol="market")
    library = query_gallery_verification(EmbeddingDistances(q.vectors, g.vectors, "sqeuclidean"), labels).to_dict()
    assert {k: result[k] for k in ("roc_auc", "eer", "tar_at_far")} == {k: library[k] for k in ("roc_auc", "eer", "tar_at_far")}
    assert result["protocol"] == "market" and result["accuracy_mean"] is None


def test_trials_without_cameras_suggest_no_camera(tmp_path, capsys):
    emb = read_embeddings(REID)
    path = write_embeddings(tmp_path / "nocam.parquet", emb.ids, emb.vectors, pid=emb.pid, split=emb.split)
    code = run(["verify", str(path), "--trials", "query-gallery", "--workspace", str(tmp_path / "ws")])
    err = capsys.readouterr().err
    assert code == 1 and "--protocol no-camera" in err
    ok = verify_json(capsys, str(path), "--trials", "query-gallery", "--protocol", "no-camera", "--workspace", str(tmp_path / "ws"))
    assert ok["protocol"] == "no-camera" and ok["num_same"] > 0


def test_table_output(tmp_path, capsys):
    code = run(["verify", str(GOLDEN / "embeddings.parquet"), "--pairs", str(GOLDEN / "pairs.txt"), "--workspace", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0
    assert "TAR@FAR=1e-3" in captured.out and "ROC AUC" in captured.out and "run folder" in captured.err
