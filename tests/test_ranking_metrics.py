"""Ranking metrics: golden vectors, hand-computed cases, and a brute-force full stable sort."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial.distance import cdist

from retrieval.eval.distances import EmbeddingDistances, PrecomputedDistances
from retrieval.eval.errors import EvaluationError
from retrieval.eval.evaluate import evaluate_ranking, evaluate_topk
from retrieval.eval.ranking import top_k_columns
from _gpu import requires_cuda

GOLDEN = Path(__file__).parent / "data" / "reid_small"


# ----------------------------------------------------------------------------- golden vectors


@pytest.fixture(scope="module")
def reid_small():
    table = pq.read_table(GOLDEN / "embeddings.parquet").to_pydict()
    split = np.array(table["split"])
    vectors = np.array(table["embedding"], dtype=np.float32)
    pid = np.array(table["pid"], dtype=np.int64)
    camid = np.array(table["camid"], dtype=np.int64)
    ids = np.array(table["id"], dtype=object)
    q, g = split == "query", split == "gallery"
    return dict(
        qv=vectors[q], gv=vectors[g], qp=pid[q], gp=pid[g], qc=camid[q], gc=camid[g], qi=ids[q], gi=ids[g]
    )


def _golden_eval(d, ap_variant="standard", **kw):
    return evaluate_ranking(
        EmbeddingDistances(d["qv"], d["gv"]), d["qp"], d["gp"], d["qc"], d["gc"],
        ap_variant=ap_variant, query_ids=d["qi"], gallery_ids=d["gi"], **kw,
    )


def test_golden_reid_small_aggregates(reid_small):
    expected = json.loads((GOLDEN / "expected.json").read_text())
    standard = _golden_eval(reid_small)
    market = _golden_eval(reid_small, ap_variant="market")
    assert standard.num_queries == expected["num_queries"]
    assert standard.num_gallery == expected["num_gallery"]
    assert standard.num_valid_queries == expected["num_valid_queries"]
    assert standard.mAP == pytest.approx(expected["mAP_standard"], abs=1e-6)
    assert standard.mINP == pytest.approx(expected["mINP"], abs=1e-6)
    assert market.mAP == pytest.approx(expected["mAP_market_trapezoid"], abs=1e-6)
    for k, value in expected["cmc_standard"].items():
        assert standard.rank(int(k)) == pytest.approx(value, abs=1e-6)
        assert market.rank(int(k)) == pytest.approx(value, abs=1e-6)  # CMC does not depend on the AP variant


def test_golden_reid_small_per_query(reid_small):
    expected = pq.read_table(GOLDEN / "expected_per_query.parquet").to_pydict()
    standard = _golden_eval(reid_small).per_query.to_pydict()
    market = _golden_eval(reid_small, ap_variant="market").per_query.to_pydict()
    by_id = {q: i for i, q in enumerate(standard["query_id"])}
    rows = [by_id[q] for q in expected["query_id"]]
    np.testing.assert_allclose(np.array(standard["ap"])[rows], expected["ap_standard"], atol=1e-6)
    np.testing.assert_allclose(np.array(standard["inp"])[rows], expected["inp"], atol=1e-6)
    np.testing.assert_allclose(np.array(market["ap"])[rows], expected["ap_market_trapezoid"], atol=1e-6)


def test_golden_same_result_for_any_block_size(reid_small):
    whole = _golden_eval(reid_small)
    blocked = _golden_eval(reid_small, block_rows=7)
    assert blocked.mAP == whole.mAP and blocked.mINP == whole.mINP
    np.testing.assert_array_equal(blocked.cmc, whole.cmc)
    assert blocked.rankings.equals(whole.rankings)


# ----------------------------------------------------------------------------- hand-computed cases


def _one_query(distances, gallery_pid, gallery_camid, *, query_pid=1, query_camid=1, **kw):
    return evaluate_ranking(
        PrecomputedDistances(np.array([distances], dtype=np.float64)),
        np.array([query_pid]), np.array(gallery_pid), np.array([query_camid]), np.array(gallery_camid), **kw,
    )


# Kept order: g0 (other pid), g1 (match), g3 (other pid), g4 (match); g2 same pid & same camera
# and g5 pid -1 are junk. True matches at kept ranks 2 and 4, R = 2.
HAND = dict(
    distances=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6], gallery_pid=[2, 1, 1, 3, 1, -1], gallery_camid=[1, 2, 1, 1, 3, 2]
)


def test_hand_standard_ap_inp_r_precision_map_at_r_and_cmc():
    result = _one_query(**HAND)
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert result.mINP == pytest.approx(2 / 4)
    assert result.R_precision == pytest.approx(1 / 2)  # one of the first R = 2 kept items is a match
    assert result.mAP_at_R == pytest.approx((1 / 2) / 2)  # only the match at rank 2 is within R
    assert list(result.cmc[:5]) == [0, 1, 1, 1, 1]
    row = result.per_query.to_pylist()[0]
    assert row["first_match_rank"] == 2 and row["num_matches"] == 2 and row["valid"]


def test_hand_market_trapezoid_ap():
    result = _one_query(**HAND, ap_variant="market")
    # j=1 at r=2: P_prev = 0/1, P = 1/2; j=2 at r=4: P_prev = 1/3, P = 2/4
    expected = ((0 + 1 / 2) / 2 + (1 / 3 + 2 / 4) / 2) / 2
    assert result.mAP == pytest.approx(expected)


def test_hand_market_trapezoid_first_rank_uses_one():
    result = _one_query([0.1, 0.2, 0.3], [1, 2, 1], [2, 2, 2], ap_variant="market")
    # j=1 at r=1: P_prev taken as 1, P = 1; j=2 at r=3: P_prev = 1/2, P = 2/3
    assert result.mAP == pytest.approx(((1 + 1) / 2 + (1 / 2 + 2 / 3) / 2) / 2)


def test_hand_ties_follow_gallery_row_order():
    # all at the same distance: the match at column 1 comes after column 0, before column 2
    result = _one_query([0.5, 0.5, 0.5], [2, 1, 3], [1, 2, 1])
    assert result.per_query.column("first_match_rank").to_pylist() == [2]
    assert result.rankings.column("gallery_id").to_pylist() == ["g0", "g1", "g2"]


def test_hand_no_camera_keeps_same_camera_match():
    result = _one_query(**HAND, protocol="no-camera")
    # g2 (same pid, same camera) is now a match at kept rank 3: ranks 2, 3, 5 (g5 pid -1 still junk)
    assert result.mAP == pytest.approx((1 / 2 + 2 / 3 + 3 / 5) / 3)
    assert result.mINP == pytest.approx(3 / 5)


def test_hand_junk_pids_configurable():
    result = _one_query(**HAND, junk_pids=())
    # g5 (pid -1) is now an ordinary negative after the last match: nothing changes but the count
    assert result.mAP == pytest.approx((1 / 2 + 2 / 4) / 2)
    result = _one_query(**HAND, junk_pids=(2,))
    # g0 (pid 2) is junk now: matches at kept ranks 1 and 3; g5 (pid -1) a negative
    assert result.mAP == pytest.approx((1 + 2 / 3) / 2)


def test_leave_one_out_removes_only_the_item_itself():
    vectors = np.array([[0.0], [0.1], [1.0], [1.1], [0.05]], dtype=np.float32)
    pid = np.array([1, 1, 2, 2, 2])
    ids = np.array(["a", "b", "c", "d", "e"], dtype=object)
    result = evaluate_ranking(
        EmbeddingDistances(vectors, vectors), pid, pid, protocol="leave-one-out", query_ids=ids, gallery_ids=ids
    )
    rows = {r["query_id"]: r for r in result.per_query.to_pylist()}
    # a (at 0): kept order e(0.05, pid 2), b(0.1, match) -> rank 2
    assert rows["a"]["first_match_rank"] == 2 and rows["a"]["ap"] == pytest.approx(1 / 2)
    # e (at 0.05): a(0.05), b(0.05) tie by row order, then c(0.95), d(1.05): matches c, d at ranks 3, 4
    assert rows["e"]["ap"] == pytest.approx((1 / 3 + 2 / 4) / 2)
    assert result.num_valid_queries == 5


def test_query_without_match_is_skipped_and_counted():
    d = np.array([[0.1, 0.2], [0.3, 0.1]])
    result = evaluate_ranking(PrecomputedDistances(d), np.array([1, 9]), np.array([1, 2]), protocol="no-camera")
    assert result.num_queries == 2 and result.num_valid_queries == 1
    assert result.mAP == 1.0
    row = result.per_query.to_pylist()[1]
    assert row["valid"] is False and row["ap"] is None and row["first_match_rank"] is None


def test_no_valid_query_is_an_error():
    d = np.array([[0.1, 0.2]])
    with pytest.raises(EvaluationError, match="no valid query"):
        evaluate_ranking(PrecomputedDistances(d), np.array([1]), np.array([-1, 2]), protocol="no-camera")
    with pytest.raises(EvaluationError, match="no valid query"):  # the only match is junk (same camera)
        evaluate_ranking(PrecomputedDistances(d), np.array([1]), np.array([1, 2]), np.array([3]), np.array([3, 4]))


def test_market_protocol_needs_cameras():
    with pytest.raises(EvaluationError, match="--protocol no-camera"):
        evaluate_ranking(PrecomputedDistances(np.zeros((1, 2))), np.array([1]), np.array([1, 2]))


def test_nan_distance_matrix_is_an_error():
    with pytest.raises(EvaluationError, match="NaN"):
        PrecomputedDistances(np.array([[0.1, np.nan]]))


def test_embedding_distances_equal_scipy_for_every_metric():
    rng = np.random.default_rng(0)
    q, g = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(11, 5)).astype(np.float32)
    for metric, scipy_name in [("euclidean", "euclidean"), ("sqeuclidean", "sqeuclidean"), ("cosine", "cosine")]:
        source = EmbeddingDistances(q, g, metric=metric)
        approx = np.vstack([source.to_distance(b.values) for b in source.blocks(3)])
        exact = source.to_distance(source.exact(np.repeat(np.arange(7), 11), np.tile(np.arange(11), 7))).reshape(7, 11)
        np.testing.assert_allclose(approx, cdist(q, g, scipy_name), atol=1e-5)
        np.testing.assert_allclose(exact, cdist(q, g, scipy_name), rtol=1e-6, atol=1e-7)


def test_dimension_mismatch_is_an_error():
    with pytest.raises(EvaluationError, match="dimension mismatch"):
        EmbeddingDistances(np.zeros((2, 3), np.float32), np.zeros((2, 4), np.float32))


def test_single_gallery_shot_equals_multi_shot_with_one_image_per_identity():
    rng = np.random.default_rng(1)
    d = rng.random((6, 8))
    qpid, gpid = np.array([0, 1, 2, 3, 4, 5]), np.arange(8)
    multi = evaluate_ranking(PrecomputedDistances(d), qpid, gpid, protocol="no-camera", junk_pids=())
    single = evaluate_ranking(
        PrecomputedDistances(d), qpid, gpid, protocol="no-camera", junk_pids=(), cmc_mode="single-gallery-shot"
    )
    np.testing.assert_allclose(single.cmc, multi.cmc)


def test_single_gallery_shot_is_seeded_and_block_independent():
    rng = np.random.default_rng(2)
    d = rng.random((9, 30))
    qpid, gpid = rng.integers(0, 4, 9), rng.integers(0, 4, 30)
    run = lambda **kw: evaluate_ranking(  # noqa: E731
        PrecomputedDistances(d), qpid, gpid, protocol="no-camera", cmc_mode="single-gallery-shot", repeats=5, **kw
    ).cmc
    np.testing.assert_array_equal(run(seed=3), run(seed=3, block_rows=2))
    assert not np.array_equal(run(seed=3)[:3], run(seed=4)[:3]) or np.all(run(seed=3)[:3] == 1)
    # each identity sampled once: 4 identities, so the first match is within rank 4 (3 others + itself)
    assert run(seed=3)[3] == 1.0


# ----------------------------------------------------------------------------- brute force (hypothesis)


def brute_force(distances, qpid, gpid, qcam, gcam, protocol, junk, qids, gids):
    """A naive full stable sort and the textbook definitions, one query at a time."""
    out = []
    for i in range(len(qpid)):
        order = sorted(range(len(gpid)), key=lambda c: (distances[i][c], c))
        kept, rel = [], []
        for c in order:
            same_person = gpid[c] == qpid[i] and qpid[i] != 0  # distractors (pid 0) match nothing
            is_junk = gpid[c] in junk
            if protocol == "market" and same_person and gcam[c] == qcam[i]:
                is_junk = True
            if protocol == "leave-one-out" and gids[c] == qids[i]:
                is_junk = True
            if not is_junk:
                kept.append(c)
                rel.append(same_person)
        R = sum(rel)
        if R == 0:
            out.append(None)
            continue
        hits = [r + 1 for r, x in enumerate(rel) if x]
        ap = sum((j + 1) / r for j, r in enumerate(hits)) / R
        trap = sum(((j / (r - 1) if r > 1 else 1.0) + (j + 1) / r) / 2 for j, r in enumerate(hits)) / R
        out.append(
            dict(
                ap=ap, trap=trap, inp=R / hits[-1], first=hits[0], R=R,
                rprec=sum(1 for r in hits if r <= R) / R,
                map_r=sum((j + 1) / r for j, r in enumerate(hits) if r <= R) / R,
            )
        )
    return out


@st.composite
def ranking_cases(draw):
    Q = draw(st.integers(1, 6))
    G = draw(st.integers(1, 14))
    levels = draw(st.integers(1, 5))  # few distinct distances -> many ties
    distances = np.array(draw(st.lists(st.integers(0, levels), min_size=Q * G, max_size=Q * G)), float).reshape(Q, G)
    qpid = np.array(draw(st.lists(st.integers(-1, 3), min_size=Q, max_size=Q)))
    gpid = np.array(draw(st.lists(st.integers(-1, 3), min_size=G, max_size=G)))
    qcam = np.array(draw(st.lists(st.integers(0, 2), min_size=Q, max_size=Q)))
    gcam = np.array(draw(st.lists(st.integers(0, 2), min_size=G, max_size=G)))
    protocol = draw(st.sampled_from(["market", "no-camera", "leave-one-out"]))
    junk = tuple(draw(st.sets(st.integers(-1, 3), max_size=2)))
    gids = np.array([f"id{c}" for c in range(G)], dtype=object)
    # leave-one-out: queries are gallery items (by id), possibly not all of them
    qids = np.array([f"id{draw(st.integers(0, G - 1))}" if protocol == "leave-one-out" else f"q{i}" for i in range(Q)], dtype=object)
    block_rows = draw(st.integers(1, Q))
    keep_top = draw(st.integers(0, G + 2))
    return distances, qpid, gpid, qcam, gcam, protocol, junk, qids, gids, block_rows, keep_top


@settings(max_examples=300, deadline=None)
@given(ranking_cases())
def test_sort_free_ranking_equals_full_stable_sort(case):
    distances, qpid, gpid, qcam, gcam, protocol, junk, qids, gids, block_rows, keep_top = case
    expected = brute_force(distances, qpid, gpid, qcam, gcam, protocol, junk, qids, gids)
    valid = [e for e in expected if e is not None]
    kwargs = dict(protocol=protocol, junk_pids=junk, query_ids=qids, gallery_ids=gids, max_rank=5)
    if not valid:
        with pytest.raises(EvaluationError, match="no valid query"):
            evaluate_ranking(PrecomputedDistances(distances), qpid, gpid, qcam, gcam, **kwargs)
        return
    standard = evaluate_ranking(
        PrecomputedDistances(distances), qpid, gpid, qcam, gcam, block_rows=block_rows, keep_top=keep_top, **kwargs
    )
    market = evaluate_ranking(PrecomputedDistances(distances), qpid, gpid, qcam, gcam, ap_variant="market", **kwargs)
    rows = standard.per_query.to_pylist()
    for e, row, trap in zip(expected, rows, market.per_query.column("ap").to_pylist()):
        if e is None:
            assert row["valid"] is False and row["ap"] is None
            continue
        assert row["ap"] == pytest.approx(e["ap"]) and trap == pytest.approx(e["trap"])
        assert row["inp"] == pytest.approx(e["inp"]) and row["first_match_rank"] == e["first"]
        assert row["num_matches"] == e["R"] and row["r_precision"] == pytest.approx(e["rprec"])
    assert standard.num_valid_queries == len(valid)
    assert standard.mAP == pytest.approx(np.mean([e["ap"] for e in valid]))
    assert standard.mINP == pytest.approx(np.mean([e["inp"] for e in valid]))
    assert standard.mAP_at_R == pytest.approx(np.mean([e["map_r"] for e in valid]))
    for k in range(1, 6):
        assert standard.rank(k) == pytest.approx(np.mean([e["first"] <= k for e in valid]))
    # rankings: the first keep_top items of a stable sort, junk included
    if keep_top:
        table = standard.rankings.to_pydict()
        top = min(keep_top, len(gpid))
        for i in range(len(qpid)):
            order = sorted(range(len(gpid)), key=lambda c: (distances[i][c], c))[:top]
            got = [g for q, g in zip(table["query_id"], table["gallery_id"]) if q == qids[i]]
            if protocol != "leave-one-out" or len(set(qids)) == len(qids):
                assert got == [gids[c] for c in order]


@settings(max_examples=150, deadline=None)
@given(ranking_cases(), st.integers(1, 16), st.sampled_from(["in-list", "min-r-k"]))
def test_topk_mode_equals_brute_force_on_the_list(case, k, topk_ap):
    distances, qpid, gpid, qcam, gcam, protocol, junk, qids, gids, _, _ = case
    expected = brute_force(distances, qpid, gpid, qcam, gcam, protocol, junk, qids, gids)
    if not any(e is not None for e in expected):
        return
    k = min(k, len(gpid))
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]

    def junk_item(i, c):
        return gpid[c] in junk or (protocol == "market" and gpid[c] == qpid[i] and gcam[c] == qcam[i]) or (
            protocol == "leave-one-out" and gids[c] == qids[i]
        )

    run = lambda: evaluate_topk(  # noqa: E731
        order, np.take_along_axis(distances, order, axis=1), qpid, gpid, qcam, gcam,
        protocol=protocol, junk_pids=junk, query_ids=qids, gallery_ids=gids, topk_ap=topk_ap,
    )
    if any(e is not None and all(junk_item(i, c) for c in order[i]) for i, e in enumerate(expected)):
        with pytest.raises(EvaluationError, match="only junk"):
            run()
        return
    result = run()
    assert result.topk == k and "mAP@k" in result.to_dict() and "mAP" not in result.to_dict()
    assert result.to_dict()["topk_ap"] == topk_ap
    aps, firsts = [], []
    for i, e in enumerate(expected):
        if e is None:
            continue
        # kept ranks of the matches among the first k raw items
        kept_rank, ap_sum, j = 0, 0.0, 0
        firsts.append(None)
        for c in order[i]:
            if junk_item(i, c):
                continue
            kept_rank += 1
            if gpid[c] == qpid[i]:
                j += 1
                ap_sum += j / kept_rank
                firsts[-1] = firsts[-1] or kept_rank
        # in-list: AP of the returned list as a ranking (0 without a match); min-r-k: / min(R, k)
        aps.append(ap_sum / (max(j, 1) if topk_ap == "in-list" else min(e["R"], k)))
    assert result.mAP == pytest.approx(np.mean(aps))
    assert 1 <= len(result.cmc) <= k
    for r in range(1, len(result.cmc) + 1):
        assert result.rank(r) == pytest.approx(np.mean([f is not None and f <= r for f in firsts]))
    if k == len(gpid):  # the whole gallery returned: top-k mode equals full evaluation
        full = evaluate_ranking(
            PrecomputedDistances(distances), qpid, gpid, qcam, gcam,
            protocol=protocol, junk_pids=junk, query_ids=qids, gallery_ids=gids,
        )
        assert result.mAP == pytest.approx(full.mAP) and result.mINP == pytest.approx(full.mINP)
        np.testing.assert_allclose(result.cmc, full.cmc[: len(result.cmc)])


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 5), st.integers(1, 30), st.integers(1, 35), st.integers(0, 1000))
def test_top_k_columns_equals_stable_argsort(rows, cols, k, seed):
    distances = np.random.default_rng(seed).integers(0, 4, size=(rows, cols)).astype(np.float32)
    got_cols, got_dist = top_k_columns(distances, k)
    want = np.argsort(distances, axis=1, kind="stable")[:, :k]
    np.testing.assert_array_equal(got_cols, want)
    np.testing.assert_array_equal(got_dist, np.take_along_axis(distances, want, axis=1))


# ----------------------------------------------------------------------------- GPU


def test_torch_path_equals_numpy_path_on_cpu():
    """The GPU code path, run with torch on the CPU: the same distances as the BLAS path."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    q, g = rng.normal(size=(9, 6)).astype(np.float32), rng.normal(size=(13, 6)).astype(np.float32)
    for metric in ("euclidean", "sqeuclidean", "cosine"):
        source = EmbeddingDistances(q, g, metric=metric)
        numpy_blocks = list(source.blocks(4))
        torch_blocks = list(source.torch_blocks(4, "cpu"))
        for n, t in zip(numpy_blocks, torch_blocks):
            assert n.start == t.start
            np.testing.assert_array_equal(n.bound, t.bound)
            assert np.all(np.abs(t.values - n.values) <= 2 * n.bound[:, None])


@requires_cuda
def test_gpu_equals_cpu(reid_small):
    """On CUDA the blocks stay on the GPU (ranking selects there): identical metrics and tables."""
    d = reid_small
    for metric in ("euclidean", "cosine"):
        cpu, gpu = (
            evaluate_ranking(EmbeddingDistances(d["qv"], d["gv"], metric=metric, device=device),
                             d["qp"], d["gp"], d["qc"], d["gc"], keep_top=20, block_rows=7)
            for device in ("cpu", "cuda")
        )
        assert gpu.to_dict() == cpu.to_dict()
        assert gpu.per_query.equals(cpu.per_query) and gpu.rankings.equals(cpu.rankings)


def test_topk_ap_denominators_by_hand():
    # one query (pid 1); its top-3 list holds pids 2, 1, 3: one true match, at rank 2.
    # The gallery holds R = 3 true matches. Σ P(r)·rel(r) = 1/2.
    rows = np.array([[0, 1, 2]])
    distances = np.array([[0.1, 0.2, 0.3]])
    gallery_pid = np.array([2, 1, 3, 1, 1])
    common = dict(protocol="no-camera", junk_pids=())
    in_list = evaluate_topk(rows, distances, np.array([1]), gallery_pid, **common)
    assert in_list.mAP == pytest.approx(0.5)  # / 1 match found in the list
    min_r_k = evaluate_topk(rows, distances, np.array([1]), gallery_pid, topk_ap="min-r-k", **common)
    assert min_r_k.mAP == pytest.approx(0.5 / 3)  # / min(R = 3, k = 3)
    # a list without any true match scores 0 under both conventions
    miss = evaluate_topk(np.array([[0, 2]]), np.array([[0.1, 0.3]]), np.array([1]), gallery_pid, **common)
    assert miss.mAP == 0.0
    with pytest.raises(EvaluationError, match="top-k AP denominator"):
        evaluate_topk(rows, distances, np.array([1]), gallery_pid, topk_ap="bogus", **common)


# ----------------------------------------------------------------------------- protocol edge cases


@pytest.mark.parametrize("protocol", ["market", "no-camera", "leave-one-out"])
def test_distractors_are_nobodys_match(protocol):
    # items 0..2 are distractors (pid 0), 3..4 one person; as queries, distractors have no valid match
    pid = np.array([0, 0, 0, 5, 5])
    cam = np.array([1, 2, 3, 1, 2])
    ids = np.array([f"i{i}" for i in range(5)], dtype=object)
    d = np.abs(np.arange(5)[:, None] - np.arange(5)[None, :]).astype(float)
    result = evaluate_ranking(
        PrecomputedDistances(d), pid, pid, cam, cam, protocol=protocol, query_ids=ids, gallery_ids=ids,
    )
    valid = result.per_query.column("valid").to_pylist()
    assert valid[:3] == [False, False, False]
    assert result.num_valid_queries == 2
    # query 3 (pid 5): the distractor at row 2 ties its match at row 4 (distance 1) and, earlier in
    # gallery order, comes first: an ordinary negative. Under no-camera the item itself is kept.
    assert result.per_query.column("first_match_rank").to_pylist()[3] == (1 if protocol == "no-camera" else 2)


def test_rank_outside_the_curve_is_an_error():
    result = _one_query(**HAND)
    assert result.rank(1) == 0.0 and result.rank(2) == 1.0
    with pytest.raises(EvaluationError, match="rank-0"):
        result.rank(0)
    with pytest.raises(EvaluationError, match="rank-51"):
        result.rank(51)


def test_a_junk_heavy_list_does_not_cut_the_other_queries_curve():
    # query 0: its top-4 list holds one match at rank 1; query 1: three junk items and a miss,
    # so only its rank-1 is known... unless it found a match. Here query 1 finds none.
    gallery_pid = np.array([1, -1, -1, -1, 2, 3, 2, 1, 2])
    rows = np.array([[0, 4, 5, 8], [1, 2, 3, 5]])
    distances = np.tile([0.1, 0.2, 0.3, 0.4], (2, 1))
    result = evaluate_topk(rows, distances, np.array([1, 2]), gallery_pid, protocol="no-camera", max_rank=50)
    # query 1 keeps one item (pid 3): a miss known up to rank 1 only, so the curve stops there
    assert len(result.cmc) == 1
    # when every valid query found its match, the whole list length is known
    found = evaluate_topk(rows[:1], distances[:1], np.array([1]), gallery_pid, protocol="no-camera", max_rank=50)
    assert len(found.cmc) == 4 and found.rank(4) == 1.0
    # a query that found its match early does not limit the curve, whatever its list holds
    junk_first = evaluate_topk(np.array([[1, 2, 0, 5]]), distances[:1], np.array([1]), gallery_pid,
                               protocol="no-camera", max_rank=50)
    assert len(junk_first.cmc) == 4 and junk_first.rank(1) == 1.0
