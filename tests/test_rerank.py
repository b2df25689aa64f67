"""k-reciprocal re-ranking: golden values, and the sparse engine against a dense reference.

The dense reference below is written straight from protocols.md §3 (eight steps, N × N arrays,
Python loops); the engine must give the same distances on small random cases with ties and
duplicate vectors. Small integer coordinates make every distance exact in float32 and float64,
so both sides see the same ties.
"""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from retrieval.eval.errors import EvaluationError
from retrieval.eval.rerank import (
    RerankedDistances,
    build_graph,
    half_k,
    jaccard_distance,
)
from _gpu import requires_cuda

DATA = Path(__file__).parent / "data" / "reid_small"


from _rerank_reference import dense_rerank  # noqa: E402


# ---------------------------------------------------------------- metrics from protocol §1

def protocol_metrics(dist, q_pid, g_pid, q_cam, g_cam, ranks=(1, 5, 10, 20, 50)):
    """Market protocol, non-interpolated AP, mINP, CMC; ties by gallery order (stable sort)."""
    aps, inps, hits = [], [], []
    for q in range(len(dist)):
        order = np.argsort(dist[q], kind="stable")
        junk = ((g_pid[order] == q_pid[q]) & (g_cam[order] == q_cam[q])) | (g_pid[order] == -1)
        rel = (g_pid[order] == q_pid[q])[~junk]
        if not rel.any():
            continue
        positions = np.flatnonzero(rel) + 1
        aps.append(np.mean(np.arange(1, len(positions) + 1) / positions))
        inps.append(len(positions) / positions[-1])
        hits.append([positions[0] <= r for r in ranks])
    return np.mean(aps), np.mean(inps), dict(zip(ranks, np.mean(hits, axis=0)))


@pytest.fixture(scope="module")
def reid_small():
    table = pq.read_table(DATA / "embeddings.parquet").to_pandas()
    vectors = np.stack(table["embedding"].to_numpy()).astype(np.float32)
    is_query = (table["split"] == "query").to_numpy()
    pid = table["pid"].to_numpy().astype(np.int64)
    cam = table["camid"].to_numpy().astype(np.int64)
    expected = json.loads((DATA / "expected.json").read_text())["rerank"]
    return vectors, is_query, pid, cam, expected


@pytest.fixture(scope="module")
def reid_small_reranked(reid_small):
    vectors, is_query, *_ = reid_small
    return RerankedDistances(vectors[is_query], vectors[~is_query])


# ---------------------------------------------------------------- golden values

def test_golden_first_20_rows(reid_small_reranked):
    expected = np.load(DATA / "expected_rerank_dist_first20.npy")
    got = reid_small_reranked.dense()[:20]
    assert got.shape == expected.shape == (20, 1500)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_golden_metrics_from_protocol_definitions(reid_small, reid_small_reranked):
    vectors, is_query, pid, cam, expected = reid_small
    assert (expected["k1"], expected["k2"], expected["lambda"]) == (20, 6, 0.3)
    mAP, mINP, cmc = protocol_metrics(
        reid_small_reranked.dense(), pid[is_query], pid[~is_query], cam[is_query], cam[~is_query]
    )
    assert mAP == pytest.approx(expected["mAP_standard"], abs=1e-6)
    assert mINP == pytest.approx(expected["mINP"], abs=1e-6)
    for rank, value in expected["cmc_standard"].items():
        assert cmc[int(rank)] == pytest.approx(value, abs=1e-6)


def test_golden_metrics_through_the_evaluator(reid_small, reid_small_reranked):
    evaluate = pytest.importorskip("retrieval.eval.evaluate")
    vectors, is_query, pid, cam, expected = reid_small
    result = evaluate.evaluate_ranking(
        reid_small_reranked, pid[is_query], pid[~is_query], cam[is_query], cam[~is_query], block_rows=37
    )
    assert result.mAP == pytest.approx(expected["mAP_standard"], abs=1e-6)
    assert result.mINP == pytest.approx(expected["mINP"], abs=1e-6)
    for rank, value in expected["cmc_standard"].items():
        assert result.rank(int(rank)) == pytest.approx(value, abs=1e-6)


def test_blocks_do_not_depend_on_block_size(reid_small, reid_small_reranked):
    whole = reid_small_reranked.dense(block_rows=200)
    starts = []
    for block in reid_small_reranked.blocks(7):
        starts.append(block.start)
        rows, cols = np.indices(block.values.shape).reshape(2, -1)
        exact = block.exact(rows, cols).reshape(block.values.shape)
        np.testing.assert_array_equal(exact, whole[block.start:block.stop])
        assert np.all(np.abs(block.values - exact) <= block.bound[:, None])  # the bound holds
    assert starts == list(range(0, 200, 7))


def test_toolkit_distance_squares_the_squared_distance(reid_small):
    vectors, is_query, *_ = reid_small
    q, g = vectors[is_query][:30], vectors[~is_query][:170]
    got = RerankedDistances(q, g, distance="toolkit").dense()
    want = dense_rerank(q, g, 20, 6, 0.3, toolkit=True)
    np.testing.assert_allclose(got, want, atol=1e-6)
    assert not np.allclose(got, dense_rerank(q, g, 20, 6, 0.3), atol=1e-3)
    assert RerankedDistances(q, g, distance="toolkit").params == {
        "k1": 20, "k2": 6, "lambda": 0.3, "distance": "toolkit",
    }


# ---------------------------------------------------------------- engine vs dense reference

@st.composite
def small_cases(draw):
    n_q = draw(st.integers(1, 6))
    n_g = draw(st.integers(2, 24))
    dim = draw(st.integers(1, 4))
    spread = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**32 - 1))
    x = np.random.default_rng(seed).integers(-spread, spread + 1, size=(n_q + n_g, dim)).astype(np.float32)
    if draw(st.booleans()):  # explicit duplicates across the query / gallery boundary
        x[n_q] = x[0]
    k1 = draw(st.integers(1, min(12, n_q + n_g - 1)))
    k2 = draw(st.integers(1, k1))
    lam = draw(st.sampled_from([0.0, 0.3, 1.0]) | st.floats(0.0, 1.0))
    toolkit = draw(st.booleans())
    return x[:n_q], x[n_q:], k1, k2, lam, toolkit


@settings(max_examples=80, deadline=None)
@given(small_cases())
def test_sparse_engine_equals_dense_reference(case):
    query, gallery, k1, k2, lam, toolkit = case
    x = np.concatenate([query, gallery])
    assume((((x[:, None] - x[None]) ** 2).sum(-1).max(axis=1) > 0).all())  # not all items identical
    got = RerankedDistances(
        query, gallery, k1=k1, k2=k2, lambda_=lam, distance="toolkit" if toolkit else "squared"
    ).dense(block_rows=4)
    want = dense_rerank(query, gallery, k1, k2, lam, toolkit=toolkit)
    np.testing.assert_allclose(got, want, atol=1e-9, rtol=0)


@pytest.mark.parametrize("k1", [1, 3, 5, 7, 9])
def test_odd_k1_uses_round_half_to_even(k1):
    assert half_k(k1) == {1: 0, 3: 2, 5: 2, 7: 4, 9: 4}[k1]
    rng = np.random.default_rng(k1)
    x = rng.integers(-2, 3, size=(40, 3)).astype(np.float32)
    got = RerankedDistances(x[:8], x[8:], k1=k1, k2=1).dense()
    np.testing.assert_allclose(got, dense_rerank(x[:8], x[8:], k1, 1, 0.3), atol=1e-9)


def test_jaccard_short_form_equals_min_max_form():
    x = np.random.default_rng(5).standard_normal((60, 6)).astype(np.float32)
    v = build_graph(x, 8, 3).v
    dense_v = v.toarray()
    np.testing.assert_allclose(dense_v.sum(axis=1), 1.0, atol=1e-12)
    got = jaccard_distance(v[:10], v[10:].tocsc())
    a, b = dense_v[:10, None, :], dense_v[None, 10:, :]
    want = 1.0 - np.minimum(a, b).sum(-1) / np.maximum(a, b).sum(-1)
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert (got[want == 1.0] == 1.0).all()  # no shared support: d_J is exactly 1


def test_cosine_metric_is_squared_euclidean_of_unit_rows():
    x = np.random.default_rng(6).standard_normal((50, 5)).astype(np.float32) * 3
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    got = RerankedDistances(x[:5], x[5:], k1=6, k2=3, metric="cosine").dense()
    want = RerankedDistances(unit[:5], unit[5:], k1=6, k2=3).dense()
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_excluded_items_leave_the_graph():
    rng = np.random.default_rng(7)
    x = rng.integers(-3, 4, size=(36, 3)).astype(np.float32)
    query, gallery = x[:6], x[6:]
    exclude = np.zeros(36, dtype=bool)
    exclude[[2, 10, 11, 30]] = True  # one query, three gallery items
    got = RerankedDistances(query, gallery, k1=5, k2=2, exclude_from_graph=exclude).dense()
    keep_q, keep_g = ~exclude[:6], ~exclude[6:]
    # for the remaining items: the result of re-ranking without the excluded ones
    want = dense_rerank(query[keep_q], gallery[keep_g], 5, 2, 0.3)
    np.testing.assert_allclose(got[np.ix_(keep_q, keep_g)], want, atol=1e-9)
    # to an excluded item: d_J = 1, and d normalised by the row max over the graph's items
    members = x[~exclude].astype(np.float64)
    sq = ((query[:, None].astype(np.float64) - gallery[None]) ** 2).sum(-1)
    row_max = ((query[:, None].astype(np.float64) - members[None]) ** 2).sum(-1).max(axis=1)
    expected_out = 0.7 + 0.3 * sq / row_max[:, None]
    np.testing.assert_allclose(got[:, ~keep_g], expected_out[:, ~keep_g], atol=1e-9)
    np.testing.assert_allclose(got[~keep_q], expected_out[~keep_q], atol=1e-9)


def test_default_graph_includes_junk_like_the_references():
    x = np.random.default_rng(8).integers(-3, 4, size=(30, 3)).astype(np.float32)
    none_excluded = RerankedDistances(x[:5], x[5:], k1=5, k2=2, exclude_from_graph=np.zeros(30, bool))
    np.testing.assert_array_equal(none_excluded.dense(), RerankedDistances(x[:5], x[5:], k1=5, k2=2).dense())


def test_progress_reports_the_stages():
    seen = []
    x = np.random.default_rng(9).standard_normal((40, 4)).astype(np.float32)
    RerankedDistances(x[:10], x[10:], k1=5, k2=2, progress=lambda *a: seen.append(a)).dense(block_rows=4)
    stages = [s for s, _, _ in seen]
    assert [s for i, s in enumerate(stages) if s not in stages[:i]] == ["neighbours", "sets", "expansion", "jaccard"]
    assert seen[-1] == ("jaccard", 10, 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"k1": 0}, "k1"),
        ({"k2": 0}, "k2"),
        ({"k1": 5, "k2": 6}, "k2 must not exceed k1"),
        ({"k1": 30, "k2": 2}, "k1 must be smaller"),
        ({"lambda_": -0.1}, "lambda"),
        ({"lambda_": 1.5}, "lambda"),
        ({"distance": "cubed"}, "distance"),
        ({"metric": "manhattan"}, "metric"),
        ({"exclude_from_graph": np.zeros(29, bool)}, "exclude_from_graph"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_parameter_errors(kwargs, message):
    x = np.random.default_rng(0).standard_normal((30, 3)).astype(np.float32)
    with pytest.raises(EvaluationError, match=message):
        RerankedDistances(x[:5], x[5:], **{"k1": 4, "k2": 2, **kwargs})


def test_k1_counts_only_graph_items():
    x = np.random.default_rng(0).standard_normal((30, 3)).astype(np.float32)
    exclude = np.zeros(30, bool)
    exclude[:10] = True
    with pytest.raises(EvaluationError, match=r"\(20\)"):
        RerankedDistances(x[:5], x[5:], k1=20, k2=2, exclude_from_graph=exclude)


def test_chunked_steps_give_the_same_result(monkeypatch):
    import retrieval.eval.rerank as rerank

    x = np.random.default_rng(11).standard_normal((120, 6)).astype(np.float32)
    whole = RerankedDistances(x[:20], x[20:], k1=10, k2=4).dense()
    monkeypatch.setattr(rerank, "_TRIPLES_PER_CHUNK", 50)
    monkeypatch.setattr(rerank, "_BLOCK_BYTES", 16 * 100 * 3)  # 3 query rows per block
    chunked = RerankedDistances(x[:20], x[20:], k1=10, k2=4)
    assert [b.values.shape[0] for b in chunked.blocks(256)][:2] == [3, 3]
    np.testing.assert_array_equal(chunked.dense(), whole)


def test_is_a_distance_source():
    from retrieval.eval.distances import DistanceSource

    x = np.random.default_rng(0).standard_normal((30, 3)).astype(np.float32)
    source = RerankedDistances(x[:5], x[5:], k1=4, k2=2)
    assert isinstance(source, DistanceSource)
    assert (source.num_queries, source.num_gallery) == (5, 25)


@requires_cuda
def test_cuda_gives_the_cpu_result(reid_small, reid_small_reranked):
    vectors, is_query, *_ = reid_small
    gpu = RerankedDistances(vectors[is_query], vectors[~is_query], device="cuda").dense()
    np.testing.assert_array_equal(gpu, reid_small_reranked.dense())  # exact on every device


def test_kept_query_gallery_distances_equal_recomputed(monkeypatch):
    import retrieval.eval.rerank as rerank

    x = np.random.default_rng(12).standard_normal((300, 8)).astype(np.float32)
    kept = RerankedDistances(x[:40], x[40:], k1=10, k2=4)
    assert kept.graph.query_gallery is not None
    monkeypatch.setattr(rerank, "_KEEP_QUERY_GALLERY_BYTES", 0)
    recomputed = RerankedDistances(x[:40], x[40:], k1=10, k2=4)
    assert recomputed.graph.query_gallery is None
    np.testing.assert_array_equal(kept.dense(), recomputed.dense())
