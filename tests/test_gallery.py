"""The notebook API: Gallery, retrieval.evaluate, and the example notebook."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from retrieval.data.store import read_embeddings, write_embeddings
from retrieval import Gallery, evaluate
from retrieval.errors import RetrieveError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> Path:
    """8 identities, 2 cameras: 8 queries (cam 1) and 24 gallery items (cams 1 and 2), plus junk."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(8, 16))
    rows = []
    for pid in range(8):
        rows.append((f"q{pid}", pid + 1, 1, "query"))
        for j in range(3):
            rows.append((f"g{pid}_{j}", pid + 1, 1 + (j % 2), "gallery"))
    rows.append(("junk0", -1, 2, "gallery"))
    ids = [r[0] for r in rows]
    pid = np.array([r[1] for r in rows])
    vectors = np.stack([centres[max(p, 1) - 1] + 0.6 * rng.normal(size=16) for p in pid]).astype(np.float32)
    path = tmp_path_factory.mktemp("gallery") / "emb.parquet"
    write_embeddings(path, ids, vectors, pid=pid, camid=np.array([r[2] for r in rows]), split=[r[3] for r in rows],
                     paths=[f"img/{i}.png" for i in ids])
    return path


def _brute_force(query: np.ndarray, gallery: np.ndarray, k: int, metric: str):
    if metric == "cosine":
        qn = query / np.linalg.norm(query)
        gn = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        distance = 1.0 - gn @ qn
    else:
        distance = np.sqrt(((gallery - query) ** 2).sum(axis=1))
    order = np.argsort(distance, kind="stable")[:k]
    return order, distance[order]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_search_matches_brute_force(small_file: Path, metric: str):
    g = Gallery.from_parquet(small_file, metric=metric)
    data = read_embeddings(small_file)
    gallery = data.by_split("gallery")
    hits = g.search_table(["q3", "q5"], k=4)
    assert hits.column_names == ["query_id", "rank", "gallery_id", "distance", "pid", "camid", "path"]
    for query_id in ("q3", "q5"):
        vector = data.vectors[data.ids.tolist().index(query_id)]
        order, distance = _brute_force(vector, gallery.vectors, 4, metric)
        rows = [r for r in hits.to_pylist() if r["query_id"] == query_id]
        assert [r["rank"] for r in rows] == [1, 2, 3, 4]
        assert [r["gallery_id"] for r in rows] == gallery.ids[order].tolist()
        assert np.allclose([r["distance"] for r in rows], distance, atol=1e-4)
        assert [r["pid"] for r in rows] == gallery.pid[order].tolist()
        assert [r["path"] for r in rows] == [f"img/{i}.png" for i in gallery.ids[order]]


def test_search_takes_vectors_and_returns_a_dataframe(small_file: Path):
    g = Gallery.from_parquet(small_file)
    data = read_embeddings(small_file)
    frame = g.search(data.vectors[0], k=3)
    assert type(frame).__name__ == "DataFrame"
    assert frame["query_id"].tolist() == ["q0"] * 3
    by_id = g.search("q0", k=3)
    assert frame["gallery_id"].tolist() == by_id["gallery_id"].tolist()


def test_search_without_pandas_returns_arrow(small_file: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas -> ImportError
    table = Gallery.from_parquet(small_file).search(["q1"], k=2)
    assert isinstance(table, pa.Table) and table.num_rows == 2


def test_unknown_query_id_and_bad_k_are_clear_errors(small_file: Path):
    g = Gallery.from_parquet(small_file)
    with pytest.raises(RetrieveError, match="no item with id 'nope'"):
        g.search(["q1", "nope"])
    with pytest.raises(RetrieveError, match="k must be between 1 and the gallery size"):
        g.search("q1", k=1000)


def test_gallery_evaluate_equals_the_evaluator(small_file: Path):
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.evaluate import evaluate_ranking
    from retrieval.eval.rerank import RerankedDistances

    data = read_embeddings(small_file)
    q, gal = data.by_split("query"), data.by_split("gallery")
    result = Gallery.from_parquet(small_file).evaluate("query", rerank=True, k1=6, k2=3)
    labels = (q.pid, gal.pid, q.camid, gal.camid)
    plain = evaluate_ranking(EmbeddingDistances(q.vectors, gal.vectors), *labels, protocol="market",
                             query_ids=q.ids, gallery_ids=gal.ids)
    reranked = evaluate_ranking(RerankedDistances(q.vectors, gal.vectors, k1=6, k2=3), *labels, protocol="market",
                                query_ids=q.ids, gallery_ids=gal.ids)
    assert result.plain.mAP == pytest.approx(plain.mAP)
    assert result.final.mAP == pytest.approx(reranked.mAP)
    assert np.allclose(result.final.cmc, reranked.cmc)
    frame = result.per_query
    assert list(frame["query_id"]) == q.ids.tolist()
    assert np.allclose(frame["ap"], reranked.per_query["ap"].to_numpy(zero_copy_only=False))
    assert np.allclose(frame["ap_before_rerank"], plain.per_query["ap"].to_numpy(zero_copy_only=False))
    html = result._repr_html_()
    assert f"{100 * reranked.mAP:.2f}" in html and f"{100 * plain.mAP:.2f}" in html and "protocol market" in html
    figure = result.plot_cmc()
    assert len(figure.axes[0].lines) == 2
    assert figure._repr_png_().startswith(b"\x89PNG")


def test_functional_evaluate_on_a_hand_computed_case():
    # One query (pid 1); gallery distances along a line: 1 (pid 2), 2 (pid 1), 3 (pid 2), 4 (pid 1).
    query = np.zeros((1, 2), np.float32)
    gallery = np.array([[1, 0], [2, 0], [3, 0], [4, 0]], np.float32)
    result = evaluate(query, gallery, query_pid=[1], gallery_pid=[2, 1, 2, 1], protocol="no-camera", max_rank=4)
    # Matches at ranks 2 and 4: AP = (1/2 + 2/4) / 2 = 0.5; INP = 2/4; rank-1 = 0, rank-2 = 1.
    assert result.mAP == pytest.approx(0.5)
    assert result.final.mINP == pytest.approx(0.5)
    assert result.final.cmc.tolist() == [0.0, 1.0, 1.0, 1.0]
    # to_dict() is the `retrieve evaluate --json` object: "rerank" is null when not re-ranked
    assert result.rerank is None and result.to_dict()["rerank"] is None and "before_rerank" not in result.to_dict()
    with pytest.raises(RetrieveError, match="needs identities"):
        evaluate(query, gallery)


def test_default_protocol_follows_the_data():
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(6, 4)).astype(np.float32)
    pid = np.array([1, 1, 2, 2, 3, 3])
    same_set = evaluate(vectors, vectors, query_pid=pid, gallery_pid=pid, query_ids=list("abcdef"),
                        gallery_ids=list("abcdef"))
    assert same_set.final.protocol == "leave-one-out"
    cams = np.array([1, 2, 1, 2, 1, 2])
    assert evaluate(vectors, vectors, pid, pid, cams, cams).final.protocol == "market"


def test_show_marks_match_nonmatch_and_junk_and_draws_images(small_file: Path, tmp_path: Path):
    from PIL import Image

    from retrieval.plots import strip_mosaic

    g = Gallery.from_parquet(small_file)
    strip = g.ranked_strip("q2", k=6)
    hits = g.search_table("q2", k=6).to_pylist()
    expected = []
    for hit in hits:
        if hit["pid"] == -1:
            expected.append("junk")
        elif hit["pid"] != 3:
            expected.append("non-match")
        else:
            expected.append("junk" if hit["camid"] == 1 else "match")  # query q2 is pid 3, camera 1
    assert [item.status for item in strip.items] == expected
    assert [item.item_id for item in strip.items] == [hit["gallery_id"] for hit in hits]
    assert strip.caption == "pid 3, cam 1"
    figure = g.show("q2", k=6)
    texts = [text.get_text() for text in figure.axes[0].texts]
    assert texts.count("query") == 1 and sum(t.endswith(("match", "junk")) for t in texts) == 6
    assert strip_mosaic(strip, 7)[1] == [False] * 7  # the image files do not exist: ids and distances
    # With the images present, they are drawn into the tiles.
    images = tmp_path / "img"
    images.mkdir()
    data = read_embeddings(small_file)
    for item_id in data.ids:
        Image.new("RGB", (8, 16), (10, 200, 10)).save(images / f"{item_id}.png")
    absolute = tmp_path / "abs.parquet"
    write_embeddings(absolute, data.ids, data.vectors, pid=data.pid, camid=data.camid, split=data.split,
                     paths=[str(images / f"{i}.png") for i in data.ids])
    strip = Gallery.from_parquet(absolute).ranked_strip("q2", k=3)
    mosaic, has_image = strip_mosaic(strip, 4)
    assert has_image == [True] * 4
    assert (mosaic == np.array([10, 200, 10], np.uint8)).all(axis=2).sum() == 4 * 8 * 16


def test_from_index_searches_like_the_exact_gallery(small_file: Path, tmp_path: Path):
    from retrieval.indexes.store import build_index

    gallery = read_embeddings(small_file).by_split("gallery")
    build_index(tmp_path / "index", gallery, kind="flat", metric="l2", content_hash=gallery.content_hash(),
                split="gallery", source_path=str(small_file))
    indexed = Gallery.from_index(tmp_path / "index")
    exact = Gallery.from_parquet(small_file)
    a, b = indexed.search_table(["q0", "q4"], k=5), exact.search_table(["q0", "q4"], k=5)
    assert a["gallery_id"].to_pylist() == b["gallery_id"].to_pylist()
    assert np.allclose(a["distance"].to_numpy(), b["distance"].to_numpy(), atol=1e-4)
    assert indexed.evaluate("query", rerank=False).mAP == pytest.approx(exact.evaluate("query", rerank=False).mAP)


def test_saved_result_is_a_run_the_catalogue_sees(small_file: Path, tmp_path: Path):
    from retrieval import connect

    result = Gallery.from_parquet(small_file).evaluate("query", rerank=False)
    run_dir = result.save(workspace=tmp_path / "ws")
    row = connect(tmp_path / "ws").execute("SELECT run_id, kind, mAP FROM runs").fetchone()
    assert row == (run_dir.name, "evaluate", pytest.approx(result.mAP))


def test_example_notebook_runs_top_to_bottom(tmp_path: Path, monkeypatch):
    notebook = json.loads((REPO / "examples" / "quickstart.ipynb").read_text())
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for number, cell in enumerate(notebook["cells"]):
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"quickstart.ipynb cell {number}", "exec"), namespace)
    assert (tmp_path / "quickstart-output" / "report.html").is_file()
    assert namespace["result"].final.mAP > namespace["plain"].final.mAP  # re-ranking helps on this data
    assert set(namespace["comparison"]["counts"]) >= {"improved", "worsened", "unchanged"}


def test_result_interval_is_the_bootstrap_of_the_per_query_values(small_file: Path):
    from retrieval.eval.confidence import bootstrap_mean_interval

    result = Gallery.from_parquet(small_file).evaluate("query", rerank=False)
    per_query = result.final.per_query.to_pylist()
    ap = [row["ap"] for row in per_query if row["valid"]]
    hits = [1.0 if row["first_match_rank"] == 1 else 0.0 for row in per_query if row["valid"]]
    assert result.interval("mAP", seed=3) == bootstrap_mean_interval(ap, seed=3)
    assert result.interval("rank-1", 0.9, seed=1) == bootstrap_mean_interval(hits, 0.9, seed=1)
    low, high = result.interval("mAP")
    assert low <= result.mAP <= high
    with pytest.raises(RetrieveError, match="no per-query values"):
        result.interval("roc_auc")
