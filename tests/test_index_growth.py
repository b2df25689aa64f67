"""add-to-index / remove-from-index: a search after an add or a removal equals a rebuild (Flat: the
same answers; IVF: the same inverted lists as the same trained quantizer fed the final rows), HNSW
removal refused, ids unique, the manifest's sources."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest

from retrieval.cli import run
from retrieval.data.store import write_embeddings
from retrieval.indexes.errors import FaissIndexError
from retrieval.indexes.grow import add_rows, remove_rows
from retrieval.indexes.search import ivf_of
from retrieval.indexes.store import ArrayBatch, build_index, load_index


def data(n=600, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dim)).astype(np.float32)
    x[40] = x[7]  # a duplicate vector: ties ordered by row
    return x, np.array([f"g{i:04d}" for i in range(n)], dtype=object)


def batch(x, ids, pid=None):
    """Rows with a pid derived from the id, so any slice carries the same labels."""
    return ArrayBatch(ids, x, pid=np.array([int(i[1:]) % 7 for i in ids]) if pid is None else pid)


def lists_of(index):
    """Every inverted list's (ids, codes)."""
    ivf = ivf_of(index)
    out = []
    for number in range(ivf.nlist):
        size = ivf.invlists.list_size(number)
        ids = faiss.rev_swig_ptr(ivf.invlists.get_ids(number), size).copy() if size else np.empty(0, np.int64)
        codes = (faiss.rev_swig_ptr(ivf.invlists.get_codes(number), size * ivf.code_size).copy()
                 if size else np.empty(0, np.uint8))
        out.append((ids, codes))
    return out


def same_trained_fed(handle, x):
    """The index's trained quantizer, emptied and fed ``x`` in one add: what a rebuild would hold."""
    fresh = faiss.clone_index(handle.index)
    fresh.reset()
    fresh.add(x)
    return fresh


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_flat_add_and_remove_equal_a_rebuild(tmp_path, metric):
    x, ids = data()
    queries = np.random.default_rng(1).standard_normal((25, 16)).astype(np.float32)
    build_index(tmp_path / "grown", batch(x[:400], ids[:400]), kind="flat", metric=metric)
    add_rows(tmp_path / "grown", batch(x[400:], ids[400:]), source_path="b.parquet", content_hash="h-b")
    union = build_index(tmp_path / "union", batch(x, ids), kind="flat", metric=metric).handle
    grown = load_index(tmp_path / "grown", device="cpu")
    for k in (1, 10, 50):
        d1, r1 = grown.search(queries, k)
        d2, r2 = union.search(queries, k)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(d1, d2)
    assert grown.rows.equals(union.rows)
    gone = [ids[i] for i in (0, 7, 123, 401, 599)]
    remove_rows(tmp_path / "grown", gone)
    keep = ~np.isin(ids, gone)
    rest = build_index(tmp_path / "rest", batch(x[keep], ids[keep]), kind="flat", metric=metric).handle
    shrunk = load_index(tmp_path / "grown", device="cpu")
    d1, r1 = shrunk.search(queries, 30)
    d2, r2 = rest.search(queries, 30)
    np.testing.assert_array_equal(shrunk.row_ids(r1), rest.row_ids(r2))
    np.testing.assert_array_equal(d1, d2)
    assert shrunk.rows.equals(rest.rows)


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_ivf_lists_equal_the_trained_quantizer_fed_the_final_rows(tmp_path, kind):
    x, ids = data(n=1200, dim=16)
    extra = dict(nlist=8) if kind == "ivf" else dict(nlist=8, pq_m=4, pq_bits=4)
    build_index(tmp_path / "i", batch(x[:900], ids[:900]), kind=kind, **extra)
    grown = add_rows(tmp_path / "i", batch(x[900:], ids[900:]), source_path="b", content_hash="h")
    want = same_trained_fed(grown, x)
    for (ids_a, codes_a), (ids_b, codes_b) in zip(lists_of(load_index(tmp_path / "i").index), lists_of(want)):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(codes_a, codes_b)
    gone = ids[[3, 17, 450, 899, 900, 1199]].tolist()
    shrunk = remove_rows(tmp_path / "i", gone)
    keep = ~np.isin(ids, gone)
    want = same_trained_fed(shrunk, x[keep])
    reopened = load_index(tmp_path / "i", device="cpu")
    for (ids_a, codes_a), (ids_b, codes_b) in zip(lists_of(reopened.index), lists_of(want)):
        np.testing.assert_array_equal(ids_a, ids_b)
        np.testing.assert_array_equal(codes_a, codes_b)
    assert reopened.count == keep.sum() and reopened.row_ids(np.arange(reopened.count)).tolist() == ids[keep].tolist()
    queries = x[:20] + np.float32(0.01)
    _, rows = reopened.search(queries, 5, nprobe=8)
    assert not set(reopened.row_ids(rows).ravel().tolist()) & set(gone)


def test_hnsw_adds_and_refuses_removal_with_the_reason(tmp_path):
    x, ids = data(n=300)
    build_index(tmp_path / "h", batch(x[:200], ids[:200]), kind="hnsw")
    assert add_rows(tmp_path / "h", batch(x[200:], ids[200:]), source_path="b", content_hash="h").count == 300
    with pytest.raises(FaissIndexError, match="faiss cannot delete nodes from an HNSW graph"):
        remove_rows(tmp_path / "h", [ids[0]])
    assert load_index(tmp_path / "h").count == 300


def test_ids_stay_unique_and_unknown_ids_are_named(tmp_path):
    x, ids = data(n=100)
    build_index(tmp_path / "f", batch(x[:60], ids[:60]), kind="flat")
    with pytest.raises(FaissIndexError, match="2 id\\(s\\) of the new rows are already in the index: 'g0058', 'g0059'"):
        add_rows(tmp_path / "f", batch(x[58:], ids[58:]), source_path="b", content_hash="h")
    with pytest.raises(FaissIndexError, match="the new rows repeat ids: 'g0070'"):
        add_rows(tmp_path / "f", batch(x[60:62], np.array(["g0070", "g0070"], dtype=object)), source_path="b",
                 content_hash="h")
    with pytest.raises(FaissIndexError, match="not in the index: 'nope'"):
        remove_rows(tmp_path / "f", ["g0001", "nope"])
    with pytest.raises(FaissIndexError, match="would leave an empty index"):
        remove_rows(tmp_path / "f", ids[:60].tolist())
    assert load_index(tmp_path / "f").count == 60  # every refusal left the folder as it was


def test_cli_keeps_the_sources_in_the_manifest(tmp_path, capsys):
    x, ids = data(n=120)
    pid = np.arange(120) % 5
    write_embeddings(tmp_path / "a.parquet", ids[:80], x[:80], pid=pid[:80])
    write_embeddings(tmp_path / "b.parquet", ids[80:], x[80:], pid=pid[80:])
    (tmp_path / "gone.txt").write_text("g0003\ng0090\n")
    assert run(["build-index", str(tmp_path / "a.parquet"), "--out", str(tmp_path / "idx")]) == 0
    assert run(["add-to-index", str(tmp_path / "idx"), str(tmp_path / "b.parquet"), "--json"]) == 0
    added = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert (added["op"], added["rows"], added["count"]) == ("add", 40, 120)
    assert run(["remove-from-index", str(tmp_path / "idx"), "--ids", str(tmp_path / "gone.txt"), "--json"]) == 0
    removed = json.loads(capsys.readouterr().out)
    manifest = json.loads((tmp_path / "idx" / "manifest.json").read_text())
    assert manifest["count"] == removed["count"] == 118 and manifest["content_hash"] is None
    assert [s["op"] for s in manifest["sources"]] == ["build", "add", "remove"]
    assert [s["rows"] for s in manifest["sources"]] == [80, 40, 2]
    from retrieval.data.store import read_embeddings

    assert manifest["sources"][1]["content_hash"] == read_embeddings(tmp_path / "b.parquet").content_hash()
    assert run(["add-to-index", str(tmp_path / "idx"), str(tmp_path / "b.parquet")]) == 1
    assert "already in the index" in capsys.readouterr().err
    # evaluating against one file cannot be checked any more, and says why
    assert run(["evaluate", str(tmp_path / "a.parquet"), "--index", str(tmp_path / "idx"), "--query-split", "gallery",
                "--protocol", "no-camera"]) != 0
