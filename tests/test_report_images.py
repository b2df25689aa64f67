"""Reports a newcomer can read (issue 11 §4, §5): the sample carries images, a report finds them
from any folder and says once when they are missing; percent, one rank numbering, the --ci
intervals and both stages of the AP histogram."""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from retrieval.catalogue import resolve_run
from retrieval.cli import run
from retrieval.data import SAMPLE_EMBEDDINGS
from retrieval.data.sample import install_sample, sample_image
from retrieval.data.store import read_embeddings
from retrieval.plots import RankedItem, kept_ranks
from retrieval.report import _ap_series, render_html, report_figures, worst_query_strips
from retrieval.runs import read_run_table


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project folder: the sample with images, and a re-ranked run with intervals, made from inside it
    with relative paths (as a user types them)."""
    root = tmp_path_factory.mktemp("project")
    install_sample(root / "sample")
    here = Path.cwd()
    os.chdir(root)
    try:
        assert run(["evaluate", "sample/embeddings.parquet", "--rerank", "--ci", "0.95", "--out", "runs/reranked",
                    "--workspace", "runs"]) == 0
    finally:
        os.chdir(here)
    return root


def test_the_installed_sample_has_one_readable_image_per_row(project):
    table = pq.read_table(project / "sample" / "embeddings.parquet")
    paths = table.column("path").to_pylist()
    assert len(paths) == 2_300 and all(p == f"images/{i}.png" for p, i in zip(paths, table.column("id").to_pylist()))
    assert read_embeddings(project / "sample" / "embeddings.parquet").content_hash() == \
        read_embeddings(SAMPLE_EMBEDDINGS).content_hash()
    with Image.open(project / "sample" / paths[0]) as image:
        assert image.size == (64, 128) and image.mode == "RGB"
    assert len(list((project / "sample" / "images").iterdir())) == 2_300


def test_images_are_seeded_and_show_the_identity(project):
    table = pq.read_table(project / "sample" / "embeddings.parquet", columns=["id", "pid", "camid"])
    ids, pid, camid = (table.column(c).to_pylist() for c in ("id", "pid", "camid"))
    for row in range(0, 2_300, 97):
        assert sample_image(pid[row], camid[row], row) == (project / "sample" / "images" / f"{ids[row]}.png").read_bytes()
    # two images of one identity: the same shirt colour at the torso's centre, whatever the pose
    pid = np.array(pid)
    first, second = np.flatnonzero(pid == int(pid[pid > 0][0]))[:2]
    colours = []
    for row in (first, second):
        with Image.open(project / "sample" / "images" / f"{ids[row]}.png") as image:
            colours.append(image.getpixel((32, 52)))
    assert colours[0] == colours[1]


def test_a_report_from_another_folder_finds_the_images(project, tmp_path):
    here = Path.cwd()
    os.chdir(tmp_path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "images not found"
            strips = worst_query_strips(resolve_run(project / "runs" / "reranked"))
    finally:
        os.chdir(here)
    named = [s.query_image for s in strips] + [item.image for s in strips for item in s.items]
    assert strips and all(path and Path(path).is_file() for path in named)


def test_missing_images_are_said_once(project, tmp_path, capsys):
    copy = tmp_path / "copy"
    shutil.copytree(project, copy)
    shutil.rmtree(copy / "sample" / "images")
    os.rename(copy / "runs", tmp_path / "moved-runs")  # the run's absolute path to the sample is the original's
    run_dir = tmp_path / "moved-runs" / "reranked"
    record = (run_dir / "run.json").read_text().replace(str(project), str(copy))
    (run_dir / "run.json").write_text(record)
    assert run(["report", str(run_dir), "--out", str(tmp_path / "r.html")]) == 0
    warnings_printed = [line for line in capsys.readouterr().err.splitlines() if line.startswith("retrieve: warning:")]
    assert len(warnings_printed) == 1 and "images" in warnings_printed[0] and "were not found" in warnings_printed[0]


def test_tiles_are_numbered_by_the_protocols_rank(project):
    run_folder = resolve_run(project / "runs" / "reranked")
    rankings = {(r["query_id"], r["gallery_id"]): r for r in read_run_table(run_folder.path, "rankings").to_pylist()}
    per_query = {r["query_id"]: r for r in read_run_table(run_folder.path, "per_query").to_pylist()}
    junk_seen = False
    for strip in worst_query_strips(run_folder):
        ranks = kept_ranks(strip.items)
        for item, rank in zip(strip.items, ranks):
            assert rank == rankings[(strip.query_id, item.item_id)]["kept_rank"]
            junk_seen |= rank is None
        first = per_query[strip.query_id]["first_match_rank"]
        matches = [rank for item, rank in zip(strip.items, ranks) if item.status == "match"]
        if matches:
            assert min(matches) == first  # the caption's "first match #r" is the first green tile's number
        assert f"first match #{first}" in strip.caption and "%" in strip.caption
    assert junk_seen, "the sample's worst queries have junk in their top 10 (same camera, pid -1)"


def test_kept_ranks_without_stored_ranks_skip_junk():
    items = [RankedItem("a", 0.1, "junk"), RankedItem("b", 0.2, "non-match"), RankedItem("c", 0.3, "junk"),
             RankedItem("d", 0.4, "match")]
    assert kept_ranks(items) == [None, 1, None, 2]


def test_report_shows_percent_intervals_and_both_stages(project):
    run_folder = resolve_run(project / "runs" / "reranked")
    metrics = {(r["metric"], r["stage"]): r["value"] for r in read_run_table(run_folder.path, "metrics").to_pylist()}
    page = render_html([run_folder], [])
    assert f"<td>{100 * metrics[('mAP', 'rerank')]:.2f}</td>" in page
    assert f"<td>{100 * metrics[('mAP', 'plain')]:.2f}</td>" in page
    assert "95% CI (rerank)" in page
    low, high = run_folder.record["result"]["ci"]["mAP"]
    assert f"{100 * low:.2f} – {100 * high:.2f}" in page
    series = _ap_series(read_run_table(run_folder.path, "per_query"), "r")
    assert [label for label, _ in series] == ["r (plain)", "r (rerank)"]
    assert not np.array_equal(series[0][1], series[1][1])
    titles = [figure.title for figure in report_figures([run_folder])]
    assert any("each stage" in title for title in titles)
