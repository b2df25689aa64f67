"""Bootstrap intervals, `retrieve compare` and `retrieve report`."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import retrieval.eval.confidence as confidence
from _catalogue_runs import make_evaluate_run, make_verify_run, snapshot
from retrieval.eval.confidence import bootstrap_mean_interval, paired_bootstrap_delta
from retrieval.eval.errors import EvaluationError
from retrieval.cli import run
from retrieval.compare import compare_runs
from retrieval.report import write_report

# ------------------------------------------------------------------------------ bootstrap


def _direct_percentile_interval(values, conf, n_resamples, seed):
    """The documented method written out plainly: one resample per row, then two quantiles."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    indices = rng.integers(0, values.size, size=(n_resamples, values.size))
    means = np.array([values[row].mean() for row in indices])
    tail = (1 - conf) / 2
    return tuple(np.quantile(means, [tail, 1 - tail]))


def test_bootstrap_interval_agrees_with_the_direct_computation(monkeypatch):
    values = np.random.default_rng(5).uniform(size=37)
    expected = _direct_percentile_interval(values, 0.9, 300, seed=11)
    assert bootstrap_mean_interval(values, 0.9, 300, seed=11) == pytest.approx(expected, abs=1e-12)
    # Drawing the resamples in small chunks gives the very same draws.
    monkeypatch.setattr(confidence, "_CHUNK_VALUES", 37 * 7)
    assert bootstrap_mean_interval(values, 0.9, 300, seed=11) == pytest.approx(expected, abs=1e-12)


def test_bootstrap_is_reproducible_for_a_seed_and_varies_with_it():
    values = np.random.default_rng(0).uniform(size=50)
    assert bootstrap_mean_interval(values, seed=3) == bootstrap_mean_interval(values, seed=3)
    assert bootstrap_mean_interval(values, seed=3) != bootstrap_mean_interval(values, seed=4)


def test_bootstrap_of_two_values_matches_the_exact_distribution():
    # Resampled means of [0, 1]: 0 (p=1/4), 0.5 (p=1/2), 1 (p=1/4).
    low, high = bootstrap_mean_interval([0.0, 1.0], confidence=0.4, n_resamples=4000, seed=0)
    assert (low, high) == (0.5, 0.5)  # the 30% and 70% quantiles both fall on 0.5
    low, high = bootstrap_mean_interval([0.0, 1.0], confidence=0.95, n_resamples=4000, seed=0)
    assert (low, high) == (0.0, 1.0)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=40), st.integers(0, 2**31))
def test_bootstrap_interval_lies_within_the_values_and_holds_the_typical_mean(values, seed):
    low, high = bootstrap_mean_interval(values, 0.95, 200, seed)
    assert min(values) - 1e-12 <= low <= high <= max(values) + 1e-12


def test_constant_values_give_a_point_interval():
    assert bootstrap_mean_interval([0.25] * 9) == pytest.approx((0.25, 0.25))


def test_paired_delta_is_the_difference_of_means_with_a_paired_interval():
    rng = np.random.default_rng(1)
    a = rng.uniform(size=40)
    b = a + 0.1  # every query better by exactly 0.1: no paired uncertainty at all
    result = paired_bootstrap_delta(a, b, seed=2)
    assert result["delta"] == pytest.approx(0.1)
    assert (result["low"], result["high"]) == pytest.approx((0.1, 0.1))
    # Against a direct loop over the same resampled query indices.
    b = rng.uniform(size=40)
    result = paired_bootstrap_delta(a, b, confidence=0.9, n_resamples=250, seed=7)
    generator = np.random.default_rng(7)
    deltas = [b[idx].mean() - a[idx].mean() for idx in generator.integers(0, 40, size=(250, 40))]
    assert result["delta"] == pytest.approx(b.mean() - a.mean())
    assert (result["low"], result["high"]) == pytest.approx(tuple(np.quantile(deltas, [0.05, 0.95])))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: bootstrap_mean_interval([]), "no values"),
        (lambda: bootstrap_mean_interval([0.5, float("nan")]), "finite"),
        (lambda: bootstrap_mean_interval([0.5], confidence=1.0), "confidence"),
        (lambda: bootstrap_mean_interval([0.5], n_resamples=0), "n_resamples"),
        (lambda: paired_bootstrap_delta([0.5, 0.2], [0.1]), "one value per query"),
    ],
)
def test_bootstrap_bad_input_is_an_evaluation_error(call, message):
    with pytest.raises(EvaluationError, match=message):
        call()


# -------------------------------------------------------------------------------- compare


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    make_evaluate_run(ws, "run-a", seed=1)
    make_evaluate_run(ws, "run-b", seed=2)
    make_verify_run(ws, "run-v", seed=3)
    return ws


def _valid(path: Path) -> dict[str, dict]:
    return {r["query_id"]: r for r in pq.read_table(path).to_pylist() if r["valid"]}


def test_compare_matches_a_direct_computation(workspace: Path):
    result = compare_runs(workspace / "run-a", workspace / "run-b", seed=4, n_resamples=300)
    a = _valid(workspace / "run-a" / "per_query.parquet")
    b = _valid(workspace / "run-b" / "per_query.parquet")
    matched = [q for q in a if q in b]
    assert result["matched_queries"] == len(matched)
    ap_a = np.array([a[q]["ap"] for q in matched])
    ap_b = np.array([b[q]["ap"] for q in matched])
    by_metric = {m["metric"]: m for m in result["per_query_metrics"]}
    expected = paired_bootstrap_delta(ap_a, ap_b, n_resamples=300, seed=4)
    assert by_metric["mAP"]["delta"] == pytest.approx(expected["delta"])
    assert (by_metric["mAP"]["low"], by_metric["mAP"]["high"]) == pytest.approx((expected["low"], expected["high"]))
    hits_a = np.array([1.0 if a[q]["first_match_rank"] <= 5 else 0.0 for q in matched])
    hits_b = np.array([1.0 if b[q]["first_match_rank"] <= 5 else 0.0 for q in matched])
    assert by_metric["rank-5"]["delta"] == pytest.approx(hits_b.mean() - hits_a.mean())
    # With all queries valid in both runs the recomputed means are the stored metrics.
    stored = {m["metric"]: m for m in result["metrics"]}
    assert by_metric["mAP"]["a"] == pytest.approx(stored["mAP"]["a"])
    assert by_metric["rank-1"]["b"] == pytest.approx(stored["rank-1"]["b"])
    delta = ap_b - ap_a
    counts = result["counts"]
    assert (counts["improved"], counts["worsened"], counts["unchanged"]) == (
        int((delta > 1e-9).sum()), int((delta < -1e-9).sum()), int((abs(delta) <= 1e-9).sum()))
    drops = [c["query_id"] for c in result["largest_drops"]]
    assert drops == [matched[i] for i in np.argsort(delta, kind="stable")[: len(drops)]]
    assert all(c["delta"] < 0 for c in result["largest_drops"])
    assert compare_runs(workspace / "run-a", workspace / "run-b", seed=4, n_resamples=300) == result


def test_compare_matches_queries_by_id_not_by_row(workspace: Path, tmp_path: Path):
    per_query = pq.read_table(workspace / "run-a" / "per_query.parquet")
    shuffled = per_query.take(np.random.default_rng(0).permutation(per_query.num_rows))
    make_evaluate_run(tmp_path, "run-a-shuffled", per_query=shuffled)
    result = compare_runs(workspace / "run-a", tmp_path / "run-a-shuffled")
    assert result["counts"]["unchanged"] == result["matched_queries"] == per_query.num_rows - 1
    assert all(m["delta"] == pytest.approx(0.0) for m in result["per_query_metrics"])


def test_compare_resolves_run_ids_in_the_workspace_and_warns_on_conventions(workspace: Path):
    make_evaluate_run(workspace, "run-c", seed=2, protocol="no-camera")
    result = compare_runs("run-a", "run-c", workspace=workspace)
    assert result["run_b"] == "run-c"
    assert any("different protocol" in note for note in result["warnings"])


def test_compare_cli_json_and_text(workspace: Path, capsys):
    before = snapshot(workspace)
    code = run(["compare", "run-a", "run-b", "-w", str(workspace), "--json", "--seed", "4", "--resamples", "300"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    assert payload == json.loads(json.dumps(compare_runs("run-a", "run-b", workspace=workspace, seed=4, n_resamples=300)))
    assert run(["compare", str(workspace / "run-a"), str(workspace / "run-b")]) == 0
    out = capsys.readouterr().out
    assert "improved" in out and "mAP" in out and "95% CI" in out
    assert snapshot(workspace) == before


def test_compare_verify_runs_gives_metric_deltas_without_intervals(workspace: Path, capsys):
    make_verify_run(workspace, "run-v2", seed=4)
    result = compare_runs(workspace / "run-v", workspace / "run-v2")
    assert result["per_query_metrics"] == [] and result["counts"] is None
    assert {m["metric"] for m in result["metrics"]} >= {"accuracy_mean", "roc_auc", "eer"}


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["compare", "nope", "run-b"], 1, "nope: no such run folder"),
        (["compare", "run-a", "run-b", "--confidence", "1.5"], 2, "--confidence"),
        (["report", "nope"], 1, "nope: no such run folder"),
    ],
)
def test_bad_runs_and_options_give_clear_errors(workspace: Path, capsys, argv, code, message):
    assert run(argv + ["-w", str(workspace)]) == code
    assert message in capsys.readouterr().err


def test_a_folder_that_is_not_a_run_and_a_newer_run_are_refused(workspace: Path, tmp_path: Path, capsys):
    plain = tmp_path / "plain"
    plain.mkdir()
    assert run(["report", str(plain), "--out", str(tmp_path / "r.html")]) == 1
    assert "not a run folder (no run.json)" in capsys.readouterr().err
    newer = tmp_path / "newer"
    newer.mkdir()
    (newer / "run.json").write_text(json.dumps({"format_version": 2, "run_id": "newer"}))
    before = snapshot(newer)
    assert run(["compare", str(newer), str(workspace / "run-a")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("retrieve: error: ") and "newer than this retrieve understands" in err
    assert run(["report", str(newer), "--out", str(tmp_path / "r.html")]) == 1
    assert not (tmp_path / "r.html").exists()
    assert snapshot(newer) == before


# --------------------------------------------------------------------------------- report


def _figure_ids(page: str) -> list[str]:
    return re.findall(r"<figure id='([^']+)'>", page)


def _embedded_pngs(page: str) -> list[bytes]:
    return [base64.b64decode(data) for data in re.findall(r"data:image/png;base64,([A-Za-z0-9+/=]+)", page)]


def test_report_of_an_evaluate_run_contains_each_figure(workspace: Path, tmp_path: Path, capsys):
    before = snapshot(workspace)
    out = tmp_path / "out" / "report.html"
    png_dir = tmp_path / "png"
    assert run(["report", "run-a", "-w", str(workspace), "--out", str(out), "--png", str(png_dir)]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    page = out.read_text()
    assert _figure_ids(page) == ["cmc", "ap_histogram", "worst_queries"]
    pngs = _embedded_pngs(page)
    assert len(pngs) == 3 and all(p.startswith(b"\x89PNG") for p in pngs)
    assert sorted(p.name for p in png_dir.iterdir()) == ["ap_histogram.png", "cmc.png", "worst_queries.png"]
    assert (png_dir / "cmc.png").read_bytes() == pngs[0]
    assert "mAP" in page and "rank-1" in page and "retrieve evaluate" in page  # metric table and parameters
    assert "src='http" not in page and "<script" not in page  # self-contained
    assert snapshot(workspace) == before
    assert not list(out.parent.glob(".*.tmp"))


def test_report_of_a_verify_run_has_the_roc_curve(workspace: Path, tmp_path: Path):
    path = write_report([workspace / "run-v"], tmp_path / "v.html")
    page = path.read_text()
    assert _figure_ids(page) == ["roc"]
    assert "accuracy_mean" in page


def test_report_of_two_runs_overlays_and_compares(workspace: Path, tmp_path: Path):
    path = write_report([workspace / "run-a", workspace / "run-b"], tmp_path / "ab.html", png_dir=tmp_path / "png")
    page = path.read_text()
    assert _figure_ids(page) == ["cmc", "ap_histogram", "worst_queries_a", "worst_queries_b"]
    assert "A: run-a" in page and "B: run-b" in page and "B - A" in page
    assert "Per-query comparison" in page and "improved" in page


def test_report_uses_images_from_the_embeddings_path_column(tmp_path: Path):
    from PIL import Image

    from retrieval.catalogue import resolve_run
    from retrieval.report import worst_query_strips

    images = tmp_path / "images"
    images.mkdir()
    ids = [f"q{i:03d}" for i in range(30)] + [f"g{i:03d}" for i in range(50)]
    for item_id in ids:
        Image.new("RGB", (16, 32), (200, 100, 50)).save(images / f"{item_id}.png")
    vectors = np.zeros((len(ids), 2), dtype=np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 2)
    emb_path = tmp_path / "emb.parquet"
    pq.write_table(pa.table({"id": ids, "embedding": embedding, "path": [f"images/{i}.png" for i in ids]}), emb_path)
    run_dir = make_evaluate_run(tmp_path / "ws", "run-img", embeddings=str(emb_path))
    strips = worst_query_strips(resolve_run(run_dir))
    assert strips and strips[0].query_image == str(images / f"{strips[0].query_id}.png")
    assert all(item.image and Path(item.image).is_file() for strip in strips for item in strip.items)
    worst = min((r for r in pq.read_table(run_dir / "per_query.parquet").to_pylist() if r["valid"]), key=lambda r: r["ap"])
    assert strips[0].query_id == worst["query_id"]
    statuses = [item.status for item in strips[0].items]
    assert statuses.count("match") == (1 if worst["first_match_rank"] <= 10 else 0)
    page = write_report([run_dir], tmp_path / "img.html").read_text()
    assert "worst_queries" in _figure_ids(page)


def test_report_refuses_to_write_into_a_run_folder(workspace: Path, capsys):
    before = snapshot(workspace)
    assert run(["report", "run-a", "-w", str(workspace), "--out", str(workspace / "run-a" / "r.html")]) == 1
    assert "never written to" in capsys.readouterr().err
    assert snapshot(workspace) == before


def test_report_default_name(workspace: Path, tmp_path: Path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert run(["report", "run-a", "run-b", "-w", str(workspace)]) == 0
    assert capsys.readouterr().out.strip() == "report-run-a-vs-run-b.html"
    assert (tmp_path / "report-run-a-vs-run-b.html").is_file()


def test_report_of_a_run_without_plottable_tables(tmp_path: Path):
    from retrieval.runs import write_run

    rankings = pa.table({"query_id": ["q1"], "rank": [1], "gallery_id": ["g1"], "distance": [0.5],
                         "is_match": [False], "is_junk": [False]})
    run_dir = write_run(tmp_path / "search-run", {"kind": "search", "command": "retrieve search"}, {"rankings": rankings})
    page = write_report([run_dir], tmp_path / "s.html").read_text()
    assert _figure_ids(page) == [] and "stored no curves" in page and "stored no metrics" in page
