"""The command line a user expects (issue 11 §5): help shows every default, progress while
searching, `runs` filters and fits the terminal, `tune` compares with a flat scan, top-k names its
AP@k convention, `compare` in points, `info` the whole hash, split typos, one wording for --k 0."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from retrieval.cli import run
from retrieval.cli.app import command
from retrieval.data.sample import install_sample


@pytest.fixture(scope="module")
def sample(tmp_path_factory) -> Path:
    """The bundled sample (300 queries, 2,000 gallery, 128-D) with an IVF and a flat index."""
    folder = tmp_path_factory.mktemp("surface")
    embeddings = install_sample(folder / "sample")
    assert run(["build-index", str(embeddings), "--kind", "ivf", "--out", str(folder / "ivf.index")]) == 0
    assert run(["build-index", str(embeddings), "--kind", "flat", "--out", str(folder / "flat.index")]) == 0
    return embeddings


def out_of(capsys, argv: list[str], code: int = 0) -> tuple[str, str]:
    got = run(argv)
    captured = capsys.readouterr()
    assert got == code, captured.err
    return captured.out, captured.err


def one_line(text: str) -> str:
    """Help text with rich's box drawing and line wrapping removed."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


# ------------------------------------------------------------------------------------ --help

@pytest.mark.parametrize("name", ["build-index", "search", "tune"])
def test_help_shows_every_default_written_in_brackets(name, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    text = one_line(out_of(capsys, [name, "--help"])[0])
    sources = [p.help for p in command().commands[name].params if p.help and "[default:" in p.help]
    assert sources, "these commands state their computed defaults in brackets"
    for source in sources:
        default = source[source.index("[default:"):]
        assert " ".join(default.replace("\\[", "[").split()) in text, default
    assert not re.search(r"\w \.(\s|$)", text), "text swallowed before a full stop (e.g. 'Split of the queries .')"


def test_no_command_shows_a_type_for_flags(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "300")
    for name in [*command().commands, None]:
        text = out_of(capsys, [name, "--help"] if name else ["--help"])[0]
        assert "<bool>" not in text, name


# ------------------------------------------------------------------------------------ search

def test_search_reports_progress_per_batch_and_equals_one_search(sample):
    from retrieval.data.store import read_embeddings
    from retrieval.indexes.store import load_index
    from retrieval.jobs.search import SearchOptions, search_with_progress

    handle = load_index(sample.parent.parent / "ivf.index")
    queries = read_embeddings(sample, splits="query").vectors
    calls: list[tuple[str, int, int]] = []
    options = SearchOptions(k=10, nprobe=4)
    batched = search_with_progress(handle, queries, options, lambda *call: calls.append(call), batch_rows=64)
    whole = handle.search_detailed(queries, 10, nprobe=4)
    np.testing.assert_array_equal(batched.rows, whole.rows)
    np.testing.assert_array_equal(batched.distances, whole.distances)
    done = [c[1] for c in calls]
    assert done == sorted(done) and done[0] == 0 and done[-1] == len(queries) and len(done) == 1 + -(-len(queries) // 64)
    assert {c[2] for c in calls} == {len(queries)}


def test_batched_notes_are_summed():
    from retrieval.jobs.search import merge_counted_notes

    notes = ["12 queries reached fewer than 10 candidate gallery rows; searched them again with nprobe 8",
             "7 queries reached fewer than 10 candidate gallery rows; searched them again with nprobe 8",
             "k 3000 is above faiss's GPU limit"]
    assert merge_counted_notes(notes) == (
        "19 queries reached fewer than 10 candidate gallery rows; searched them again with nprobe 8",
        "k 3000 is above faiss's GPU limit")


# -------------------------------------------------------------------------------------- runs

@pytest.fixture(scope="module")
def workspace(sample, tmp_path_factory) -> Path:
    ws = tmp_path_factory.mktemp("ws")
    for name, extra in (("plain", []), ("reranked", ["--rerank", "--ci", "0.95"])):
        assert run(["evaluate", str(sample), "--out", str(ws / name), "--workspace", str(ws), *extra]) == 0
    assert run(["search", str(sample.parent.parent / "flat.index"), str(sample), "--workspace", str(ws)]) == 0
    return ws


def test_runs_filters_by_kind_data_and_last(workspace, capsys):
    every = json.loads(out_of(capsys, ["runs", "-w", str(workspace), "--json"])[0])["runs"]
    assert sorted(r["kind"] for r in every) == ["evaluate", "evaluate", "search"]
    only = json.loads(out_of(capsys, ["runs", "-w", str(workspace), "--json", "--kind", "search"])[0])["runs"]
    assert [r["kind"] for r in only] == ["search"]
    last = json.loads(out_of(capsys, ["runs", "-w", str(workspace), "--json", "--last", "2"])[0])["runs"]
    assert [r["run_id"] for r in last] == [r["run_id"] for r in every[-2:]]
    prefix = every[0]["content_hash"][:8]
    by_hash = json.loads(out_of(capsys, ["runs", "-w", str(workspace), "--json", "--data", prefix])[0])["runs"]
    assert by_hash and [r["run_id"] for r in by_hash] == [r["run_id"] for r in every if r["content_hash"].startswith(prefix)]
    by_name = json.loads(out_of(capsys, ["runs", "-w", str(workspace), "--json", "--data", "embeddings.parquet"])[0])
    assert len(by_name["runs"]) == 3
    _, err = out_of(capsys, ["runs", "-w", str(workspace), "--kind", "evalute"])
    assert "did you mean --kind evaluate?" in err
    _, err = out_of(capsys, ["runs", "-w", str(workspace), "--last", "0"], code=2)
    assert "invalid value for --last: must be at least 1, got 0" in err


def test_runs_fits_the_terminal_and_keeps_whole_lines_in_pipes(workspace, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "120")
    fitted = out_of(capsys, ["runs", "-w", str(workspace)])[0].splitlines()
    assert max(len(line) for line in fitted) <= 120 and any(line.endswith("…") for line in fitted)
    monkeypatch.delenv("COLUMNS")
    whole = out_of(capsys, ["runs", "-w", str(workspace)])[0].splitlines()
    assert max(len(line) for line in whole) > 120 and not any(line.endswith("…") for line in whole)


# -------------------------------------------------------------------------------------- tune

def test_tune_compares_with_a_flat_scan(sample, capsys):
    from retrieval.indexes.tuning import TuneResult

    slower = TuneResult("nprobe", 10, 0.95, [], {"nprobe": 8, "recall": 0.96, "qps": 194.0}, flat_qps=371.0)
    faster = TuneResult("nprobe", 10, 0.95, [], {"nprobe": 8, "recall": 0.96, "qps": 900.0}, flat_qps=371.0)
    missed = TuneResult("nprobe", 10, 0.95, [], None, flat_qps=371.0)
    assert (slower.beats_flat, faster.beats_flat, missed.beats_flat) == (False, True, False)
    assert slower.to_dict()["recommendation"] == "flat" and faster.to_dict()["recommendation"] is None
    payload = json.loads(out_of(capsys, ["tune", str(sample.parent.parent / "ivf.index"), str(sample),
                                         "--no-save", "--json"])[0])
    assert payload["flat_qps"] > 0 and payload["beats_flat"] in (True, False)
    assert payload["recommendation"] == ("flat" if payload["beats_flat"] is False else None)


def test_tune_says_when_flat_is_faster(sample, capsys, monkeypatch):
    import retrieval.indexes.tuning as tuning

    exact = tuning.exact_truth
    monkeypatch.setattr(tuning, "exact_truth", lambda *a: (exact(*a)[0], 1e-7))  # a flat scan "in no time"
    out, err = out_of(capsys, ["tune", str(sample.parent.parent / "ivf.index"), str(sample), "--no-save"])
    assert "flat scan" in out
    assert "no nprobe setting beats a flat scan at recall@10 ≥ 0.95" in err and "--kind flat" in err


# -------------------------------------------------------------------------- evaluate, compare

def test_top_k_evaluation_names_its_ap_convention_in_the_table(sample, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    for convention in ("in-list", "min-r-k"):
        out, _ = out_of(capsys, ["evaluate", str(sample), "--index", str(sample.parent.parent / "flat.index"),
                                 "--k", "50", "--topk-ap", convention, "--workspace", str(tmp_path)])
        text = one_line(out)
        assert f"mAP@50 ({convention})" in text and "not the full-ranking mAP" in text


def test_compare_uses_percent_and_points_throughout(workspace, capsys):
    out, _ = out_of(capsys, ["compare", "plain", "reranked", "-w", str(workspace)])
    payload = json.loads(out_of(capsys, ["compare", "plain", "reranked", "-w", str(workspace), "--json"])[0])
    assert "percentage points (pp)" in out
    stored = {m["metric"]: m for m in payload["metrics"]}
    line = next(line for line in out.splitlines() if line.startswith("mAP_at_R "))
    assert line.split() == ["mAP_at_R", f"{100 * stored['mAP_at_R']['a']:.2f}", f"{100 * stored['mAP_at_R']['b']:.2f}",
                            f"{100 * stored['mAP_at_R']['delta']:+.2f}"]
    gain = payload["largest_gains"][0]
    assert f"{100 * gain['delta']:+.2f}" in out and f"{gain['delta']:+.4f}" not in out


# ---------------------------------------------------------------------- info, splits, --k 0

def test_info_prints_the_whole_content_hash_on_a_narrow_terminal(sample, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    out, _ = out_of(capsys, ["info", str(sample)])
    digest = json.loads(out_of(capsys, ["info", str(sample), "--json"])[0])["content_hash"]
    assert len(digest) == 64 and f"content hash {digest}" in out.splitlines()


@pytest.mark.parametrize("argv", [
    ["evaluate", "{emb}", "--gallery-split", "galery"],
    ["build-index", "{emb}", "--split", "galery", "--out", "{tmp}/x.index"],
    ["verify", "{emb}", "--trials", "query-gallery", "--gallery-split", "galery"],
])
def test_a_split_typo_suggests_the_closest_split(argv, sample, capsys, tmp_path):
    argv = [a.format(emb=sample, tmp=tmp_path) for a in argv]
    _, err = out_of(capsys, argv, code=1)
    assert "split 'galery' is empty (splits present: gallery, query); did you mean 'gallery'?" in err


def test_k_zero_has_one_wording_everywhere(sample, capsys, tmp_path):
    index = str(sample.parent.parent / "flat.index")
    for argv in (["evaluate", str(sample), "--index", index, "--k", "0"],
                 ["search", index, str(sample), "--k", "0"],
                 ["tune", str(sample.parent.parent / "ivf.index"), str(sample), "--k", "0"]):
        _, err = out_of(capsys, argv + ["--workspace", str(tmp_path)] if argv[0] != "tune" else argv, code=2)
        assert err.strip() == "retrieve: usage error: invalid value for --k: must be at least 1, got 0", argv
