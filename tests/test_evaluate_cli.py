"""`retrieve evaluate` through the CLI: golden numbers, JSON keys, run folder, errors and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.data.store import write_embeddings
from retrieval.cli import run
from retrieval.runs import read_run_record, read_run_table

GOLDEN = Path(__file__).parent / "data" / "reid_small"
EMB = str(GOLDEN / "embeddings.parquet")
EXPECTED = json.loads((GOLDEN / "expected.json").read_text())


def run_json(capsys, *args):
    code = run(["evaluate", *args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    lines = [line for line in captured.out.splitlines() if line.strip()]
    assert len(lines) == 1, captured.out  # exactly one JSON object on stdout
    return json.loads(lines[0])


def run_error(capsys, *args):
    code = run(["evaluate", *args])
    return code, capsys.readouterr().err


def small_file(path: Path, *, dim=4, camid=True, nan=False, seed=0, n_query=3, n_gallery=8) -> str:
    rng = np.random.default_rng(seed)
    n = n_query + n_gallery
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    pid = np.array([1, 2, 3][:n_query] + [1, 2, 3, 1, 2, 3, 4, -1][:n_gallery])
    split = ["query"] * n_query + ["gallery"] * n_gallery
    ids = [f"x{i}" for i in range(n)]
    cam = np.array([0] * n_query + [1] * n_gallery)
    if nan:
        vectors[4, 1] = np.nan
        table = pa.table(
            {"id": ids, "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
             "pid": pid, "camid": pa.array(cam, pa.int32()), "split": split}
        )
        pq.write_table(table, path)
        return str(path)
    write_embeddings(path, ids, vectors, pid=pid, camid=cam if camid else None, split=split)
    return str(path)


# ----------------------------------------------------------------------------- golden through the CLI


def test_json_golden_keys_and_run_folder(capsys, tmp_path):
    out = tmp_path / "run"
    result = run_json(capsys, EMB, "--out", str(out))
    for key in ("protocol", "ap_variant", "metric", "num_queries", "num_gallery", "num_valid_queries",
                "mAP", "mINP", "mAP_at_R", "cmc", "rerank", "run_dir"):
        assert key in result
    assert (result["protocol"], result["ap_variant"], result["metric"]) == ("market", "standard", "euclidean")
    assert result["rerank"] is None and result["run_dir"] == str(out)
    assert result["num_valid_queries"] == EXPECTED["num_valid_queries"] == 200
    assert result["mAP"] == pytest.approx(EXPECTED["mAP_standard"], abs=1e-6)
    assert result["mINP"] == pytest.approx(EXPECTED["mINP"], abs=1e-6)
    assert list(result["cmc"]) == [str(k) for k in range(1, 51)]
    for k, value in EXPECTED["cmc_standard"].items():
        assert result["cmc"][k] == pytest.approx(value, abs=1e-6)

    record = read_run_record(out)
    assert record["kind"] == "evaluate" and record["result"] == result
    assert record["command"].startswith("retrieve evaluate") and "--json" in record["command"]
    assert record["inputs"]["content_hash"] and record["parameters"]["protocol"] == "market"
    metrics = read_run_table(out, "metrics").to_pylist()
    by_name = {m["metric"]: m for m in metrics}
    assert by_name["mAP"]["value"] == pytest.approx(EXPECTED["mAP_standard"], abs=1e-6)
    assert by_name["rank-1"]["value"] == pytest.approx(EXPECTED["cmc_standard"]["1"], abs=1e-6)
    assert {m["stage"] for m in metrics} == {"plain"} and by_name["mAP"]["metric_distance"] == "euclidean"
    per_query = read_run_table(out, "per_query")
    assert per_query.num_rows == 200
    assert per_query.column_names[:9] == ["query_id", "pid", "camid", "valid", "ap", "inp",
                                          "first_match_rank", "num_matches", "r_precision"]
    rankings = read_run_table(out, "rankings")
    assert rankings.num_rows == 200 * 10  # the default --keep-top
    first = rankings.slice(0, 10).to_pydict()
    assert first["rank"] == list(range(1, 11)) and first["distance"] == sorted(first["distance"])
    curves = read_run_table(out, "curves").to_pydict()
    assert curves["curve"][:50] == ["cmc"] * 50 and curves["x"][:3] == [1.0, 2.0, 3.0]
    assert curves["y"][0] == pytest.approx(EXPECTED["cmc_standard"]["1"], abs=1e-6)


def test_table_names_conventions_and_workspace(capsys, tmp_path):
    code = run(["evaluate", EMB, "--ap", "market", "--workspace", str(tmp_path / "ws")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for text in ("market", "AP market", "euclidean", "200/200 valid", "rank-20"):
        assert text in captured.out
    assert f"{100 * EXPECTED['mAP_market_trapezoid']:.2f}" in captured.out
    runs = list((tmp_path / "ws").iterdir())
    assert len(runs) == 1 and (runs[0] / "run.json").is_file() and "evaluate" in runs[0].name


def test_ap_market_variant_golden(capsys, tmp_path):
    result = run_json(capsys, EMB, "--ap", "market", "--out", str(tmp_path / "r"))
    assert result["ap_variant"] == "market"
    assert result["mAP"] == pytest.approx(EXPECTED["mAP_market_trapezoid"], abs=1e-6)


def test_rerank_golden_and_both_stages(capsys, tmp_path):
    out = tmp_path / "rr"
    result = run_json(capsys, EMB, "--rerank", "--out", str(out))
    assert result["rerank"] == {"k1": 20, "k2": 6, "lambda": 0.3, "distance": "squared"}
    assert result["mAP"] == pytest.approx(EXPECTED["rerank"]["mAP_standard"], abs=1e-6)
    assert result["mINP"] == pytest.approx(EXPECTED["rerank"]["mINP"], abs=1e-6)
    assert result["cmc"]["1"] == pytest.approx(EXPECTED["rerank"]["cmc_standard"]["1"], abs=1e-6)
    assert result["before_rerank"]["mAP"] == pytest.approx(EXPECTED["mAP_standard"], abs=1e-6)
    metrics = read_run_table(out, "metrics").to_pylist()
    assert {m["stage"] for m in metrics} == {"plain", "rerank"}
    per_query = read_run_table(out, "per_query")
    assert {"ap_before_rerank", "inp_before_rerank", "first_match_rank_before_rerank"} <= set(per_query.column_names)
    assert np.mean(per_query.column("ap_before_rerank").to_numpy()) == pytest.approx(EXPECTED["mAP_standard"], abs=1e-6)


@pytest.mark.parametrize(
    "args, hint",
    [
        (["--rerank", "--k1", "0"], "--k1"),
        (["--rerank", "--k2", "0"], "--k2"),
        (["--rerank", "--k1", "5", "--k2", "6"], "--k2"),
        (["--rerank", "--lambda", "1.5"], "--lambda"),
        (["--rerank", "--k1", "1700"], "--k1"),
        (["--cmc-ranks", "one"], "--cmc-ranks"),
        (["--cmc-ranks", "0,5"], "--cmc-ranks"),
        (["--junk-pids", "x"], "--junk-pids"),
        (["--ci", "1.5"], "--ci"),
    ],
)
def test_usage_errors_exit_2(capsys, tmp_path, args, hint):
    code, err = run_error(capsys, EMB, *args, "--out", str(tmp_path / "r"))
    assert code == 2 and hint in err
    assert not (tmp_path / "r").exists()  # nothing written


def test_dimension_mismatch(capsys, tmp_path):
    other = small_file(tmp_path / "other.parquet", dim=5)
    code, err = run_error(capsys, EMB, "--gallery", other, "--gallery-split", "gallery", "--out", str(tmp_path / "r"))
    assert code == 1 and "dimension mismatch" in err and "64" in err and "5" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_empty_split(capsys, tmp_path):
    code, err = run_error(capsys, EMB, "--query-split", "nope")
    assert code == 1 and "split 'nope' is empty" in err


def test_missing_camid_under_market_suggests_no_camera(capsys, tmp_path):
    path = small_file(tmp_path / "nocam.parquet", camid=False)
    code, err = run_error(capsys, path, "--out", str(tmp_path / "r"))
    assert code == 1 and "--protocol no-camera" in err and "camid" in err
    result = run_json(capsys, path, "--protocol", "no-camera", "--out", str(tmp_path / "r2"))
    assert result["protocol"] == "no-camera" and result["num_valid_queries"] == 3


def test_nan_embeddings_are_an_error(capsys, tmp_path):
    path = small_file(tmp_path / "nan.parquet", nan=True)
    code, err = run_error(capsys, path, "--out", str(tmp_path / "r"))
    assert code == 1 and "NaN" in err.replace("nan", "NaN") and not (tmp_path / "r").exists()


def test_no_valid_query(capsys, tmp_path):
    path = small_file(tmp_path / "s.parquet")
    code, err = run_error(capsys, path, "--junk-pids", "1,2,3", "--out", str(tmp_path / "r"))
    assert code == 1 and "no valid query" in err


def test_leave_one_out_on_a_file_without_splits(capsys, tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "faces.parquet"
    write_embeddings(path, [f"f{i}" for i in range(12)], rng.normal(size=(12, 8)).astype(np.float32),
                     pid=np.repeat(np.arange(1, 5), 3))
    result = run_json(capsys, str(path), "--protocol", "leave-one-out", "--metric", "cosine", "--out", str(tmp_path / "r"))
    assert result["num_queries"] == result["num_gallery"] == 12 and result["num_valid_queries"] == 12
    assert result["metric"] == "cosine"
    rankings = read_run_table(tmp_path / "r", "rankings").to_pydict()
    first_of_f0 = [g for q, g, r in zip(rankings["query_id"], rankings["gallery_id"], rankings["rank"]) if q == "f0"]
    assert first_of_f0[0] == "f0"  # the item itself is ranked first, flagged junk
    assert rankings["is_junk"][0] is True


def test_confidence_intervals_are_seeded(capsys, tmp_path):
    a = run_json(capsys, EMB, "--ci", "0.9", "--seed", "3", "--out", str(tmp_path / "a"))
    b = run_json(capsys, EMB, "--ci", "0.9", "--seed", "3", "--out", str(tmp_path / "b"))
    assert a["ci"] == b["ci"] and a["ci"]["level"] == 0.9
    low, high = a["ci"]["mAP"]
    assert low < a["mAP"] < high
    low, high = a["ci"]["rank-1"]
    assert low <= a["cmc"]["1"] <= high


def test_index_topk_mode(capsys, tmp_path):
    assert run(["build-index", EMB, "--out", str(tmp_path / "idx"), "--kind", "flat", "--split", "gallery"]) == 0
    capsys.readouterr()
    result = run_json(capsys, EMB, "--index", str(tmp_path / "idx"), "--k", "1500", "--out", str(tmp_path / "r"))
    assert result["topk"] == 1500 and "mAP" not in result
    # the whole gallery returned by an exact index: the same numbers as full evaluation
    assert result["mAP@k"] == pytest.approx(EXPECTED["mAP_standard"], abs=1e-6)
    assert result["cmc"]["1"] == pytest.approx(EXPECTED["cmc_standard"]["1"], abs=1e-6)
    short = run_json(capsys, EMB, "--index", str(tmp_path / "idx"), "--k", "10", "--out", str(tmp_path / "r2"))
    assert short["topk"] == 10 and len(short["cmc"]) <= 10 and short["topk_ap"] == "in-list"
    # min(R, k) never divides by less than the matches found in the list: it is the stricter AP@k,
    # below the full mAP for a short list; the CMC is the same under both
    strict = run_json(capsys, EMB, "--index", str(tmp_path / "idx"), "--k", "10", "--topk-ap", "min-r-k",
                      "--out", str(tmp_path / "r3"))
    assert strict["topk_ap"] == "min-r-k" and strict["mAP@k"] < EXPECTED["mAP_standard"]
    assert strict["mAP@k"] <= short["mAP@k"] and strict["cmc"] == short["cmc"]
    metrics = {m["metric"] for m in read_run_table(tmp_path / "r2", "metrics").to_pylist()}
    assert "mAP@k" in metrics and "mAP" not in metrics
    # an index built from other embeddings is refused
    other = small_file(tmp_path / "o.parquet", dim=64, n_gallery=8)
    assert run(["build-index", other, "--out", str(tmp_path / "idx2"), "--kind", "flat", "--split", "gallery"]) == 0
    capsys.readouterr()
    code, err = run_error(capsys, EMB, "--index", str(tmp_path / "idx2"), "--k", "5")
    assert code == 1 and "built from other embeddings" in err


def test_single_gallery_shot_cmc_is_named_and_seeded(capsys, tmp_path):
    a = run_json(capsys, EMB, "--cmc-mode", "single-gallery-shot", "--repeats", "3", "--seed", "1", "--out", str(tmp_path / "a"))
    b = run_json(capsys, EMB, "--cmc-mode", "single-gallery-shot", "--repeats", "3", "--seed", "1", "--out", str(tmp_path / "b"))
    assert a["cmc_mode"] == "single-gallery-shot" and a["cmc"] == b["cmc"]
    curve = [a["cmc"][str(k)] for k in range(1, 51)]
    assert curve == sorted(curve) and curve[-1] <= 1.0
    assert a["mAP"] == pytest.approx(EXPECTED["mAP_standard"], abs=1e-6)  # AP does not depend on the CMC mode
