"""Evaluation over gallery shards (eval.shards) equals evaluation over the whole gallery, bit for bit.

Run in one process here (the Ray tests run the same kernels on a cluster): any cut of the gallery
into shards, with ties, duplicates at different rows, distractors (pid 0) and junk (pid -1).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from retrieval.eval import shards as S
from retrieval.eval.distances import DistanceBlock, EmbeddingDistances, PrecomputedDistances
from retrieval.eval.evaluate import evaluate_from_ranks, evaluate_ranking, rankings_table
from retrieval.eval.protocol import RankingLabels
from retrieval.eval.ranking import block_top_k, count_before_exact, match_ranks
from retrieval.eval.rerank import RerankedDistances, build_graph
from retrieval.eval.trials import (
    binner_over,
    count_trials,
    first_block_range,
    hot_bins,
    hot_trials,
    query_gallery_verification,
    trial_block_rows,
    verification_from_counts,
)


def _labels(data, a=0, b=None, protocol="market"):
    qp, gp, qc, gc, qi, gi = data["labels"]
    b = len(gp) if b is None else b
    return RankingLabels(qp, gp[a:b], qc if protocol == "market" else None, gc[a:b] if protocol == "market" else None,
                         protocol=protocol, query_ids=qi, gallery_ids=gi[a:b])


def sharded_result(data, cuts, source_for, protocol="market", keep_top=7, block_rows=3, metric="euclidean",
                   to_distance=lambda v: v):
    """The whole evaluation done shard by shard, as the Ray driver does it."""
    edges = [0, *cuts, len(data["labels"][1])]
    shards = [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    matches = S.gather_matches([S.first_pass(source_for(a, b), _labels(data, a, b, protocol), a) for a, b in shards])
    seconds = [S.second_pass(source_for(a, b), _labels(data, a, b, protocol), matches, a, keep_top, block_rows)
               for a, b in shards]
    query, rank = S.match_ranks_from_counts(matches, [s.before for s in seconds])
    qp, gp, qc, gc, qi, gi = data["labels"]
    k = min(keep_top, len(gp))
    kept = None
    for i in np.random.default_rng(len(shards)).permutation(len(seconds)):  # as results arrive, in any order
        kept = S.reduce_candidates(kept, seconds[i].top, len(qp), k)
    part_of = np.searchsorted([a for a, _ in shards], kept.col, side="right") - 1
    top_q, top_c = kept.query, kept.col
    top_v = np.empty(len(top_q), np.float64)
    for i, (a, b) in enumerate(shards):
        which = part_of == i
        top_v[which] = source_for(a, b).exact(top_q[which], top_c[which] - a)
    order = S.top_from_exact(top_q, top_c, top_v, len(qp), k)
    whole = _labels(data, protocol=protocol)
    rows = np.repeat(np.arange(len(qp)), k)
    cols = top_c[order].ravel()
    table = rankings_table(qi[rows], np.tile(np.arange(1, k + 1), len(qp)), gi[cols],
                           to_distance(top_v[order]).ravel(), whole.is_match(rows, cols), whole.is_junk(rows, cols))
    return evaluate_from_ranks(query, rank, qp, qc if protocol == "market" else None, num_gallery=len(gp),
                               protocol=protocol, query_ids=qi, metric=metric, rankings=table)


def _assert_same(a, b) -> None:
    assert a.to_dict() == b.to_dict()
    assert a.per_query.equals(b.per_query)
    assert a.rankings.equals(b.rankings)


@st.composite
def datasets(draw):
    num_q, num_g, dim = draw(st.integers(1, 6)), draw(st.integers(2, 30)), draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    # small integers: many exact ties; a few gallery rows copied (duplicates at other rows) and queries in the gallery
    gallery = rng.integers(-2, 3, size=(num_g, dim)).astype(np.float32)
    copies = rng.integers(0, num_g, size=num_g // 3)
    gallery[rng.integers(0, num_g, size=len(copies))] = gallery[copies]
    queries = rng.integers(-2, 3, size=(num_q, dim)).astype(np.float32)
    queries[: num_q // 2] = gallery[rng.integers(0, num_g, size=num_q // 2)]
    gp = rng.integers(-1, 4, num_g)  # junk -1, distractors 0
    qp = rng.integers(1, 4, num_q)
    labels = (qp, gp, rng.integers(0, 2, num_q), rng.integers(0, 2, num_g),
              np.array([f"q{i}" for i in range(num_q)], object), np.array([f"g{i}" for i in range(num_g)], object))
    cuts = sorted(draw(st.lists(st.integers(1, num_g - 1), max_size=4, unique=True)))
    return {"q": queries, "g": gallery, "labels": labels}, cuts


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(datasets(), st.sampled_from(["euclidean", "sqeuclidean"]), st.sampled_from(["market", "no-camera"]))
def test_shards_give_the_whole_gallery_result(case, metric, protocol) -> None:
    data, cuts = case
    if not np.any(data["labels"][0][:, None] == data["labels"][1][None, :]):
        return  # no valid query: both refuse (tested below)
    qp, gp, qc, gc, qi, gi = data["labels"]
    whole = EmbeddingDistances(data["q"], data["g"], metric)
    try:
        expected = evaluate_ranking(whole, qp, gp, qc if protocol == "market" else None,
                                    gc if protocol == "market" else None, protocol=protocol, query_ids=qi,
                                    gallery_ids=gi, keep_top=7, block_rows=2, metric=metric)
    except Exception as error:  # noqa: BLE001 - e.g. no valid query after junk: the sharded run must refuse too
        with pytest.raises(type(error)):
            sharded_result(data, cuts, lambda a, b: EmbeddingDistances(data["q"], data["g"][a:b], metric), protocol,
                           metric=metric, to_distance=whole.to_distance)
        return
    got = sharded_result(data, cuts, lambda a, b: EmbeddingDistances(data["q"], data["g"][a:b], metric), protocol,
                         metric=metric, to_distance=whole.to_distance)
    _assert_same(got, expected)


def test_hand_computed_counts_across_two_shards() -> None:
    # one query; gallery values 1 2 2 3 (exact), columns 0..3; matches at 1 and 3; junk none
    values = np.array([[1.0, 2.0, 2.0, 3.0]])
    labels = RankingLabels(np.array([7]), np.array([5, 7, 5, 7]), protocol="no-camera")
    # the match at column 1 (value 2) has column 0 before it; the tie at column 2 comes after it (higher column)
    whole = match_ranks(DistanceBlock.exact_values(0, values), labels)
    assert whole.rank.tolist() == [2, 4]
    left = RankingLabels(np.array([7]), np.array([5, 7]), protocol="no-camera")
    right = RankingLabels(np.array([7]), np.array([5, 7]), protocol="no-camera")
    matches = S.MatchList(np.array([0, 0]), np.array([2.0, 3.0]), np.array([1, 3]))
    before_left = count_before_exact(DistanceBlock.exact_values(0, values[:, :2]), left, matches.query,
                                     matches.value, matches.col, 0)
    before_right = count_before_exact(DistanceBlock.exact_values(0, values[:, 2:]), right, matches.query,
                                      matches.value, matches.col, 2)
    assert before_left.tolist() == [1, 1] and before_right.tolist() == [0, 1]
    query, rank = S.match_ranks_from_counts(matches, [before_left, before_right])
    assert query.tolist() == [0, 0] and rank.tolist() == [2, 4]


def test_block_top_k_is_match_ranks_top() -> None:
    rng = np.random.default_rng(3)
    q, g = rng.normal(size=(9, 5)).astype(np.float32), rng.normal(size=(40, 5)).astype(np.float32)
    g[5] = g[6]
    block = next(EmbeddingDistances(q, g).blocks(9))
    labels = RankingLabels(np.ones(9, int), rng.integers(0, 3, 40), protocol="no-camera")
    full = match_ranks(block, labels, keep_top=12)
    cols, values = block_top_k(block, 12)
    assert np.array_equal(cols, full.top_cols) and np.array_equal(values, full.top_values)


def test_reranked_shards_equal_the_whole_reranked_gallery() -> None:
    rng = np.random.default_rng(5)
    q, g = rng.normal(size=(12, 6)).astype(np.float32), rng.normal(size=(50, 6)).astype(np.float32)
    g[7] = g[30]
    labels = (rng.integers(1, 6, 12), rng.integers(0, 6, 50), rng.integers(0, 2, 12), rng.integers(0, 2, 50),
              np.array([f"q{i}" for i in range(12)], object), np.array([f"g{i}" for i in range(50)], object))
    data = {"q": q, "g": g, "labels": labels}
    whole = RerankedDistances(q, g, k1=6, k2=3, lambda_=0.3)
    qp, gp, qc, gc, qi, gi = labels
    expected = evaluate_ranking(whole, qp, gp, qc, gc, query_ids=qi, gallery_ids=gi, keep_top=7, block_rows=5)
    graph = build_graph(np.concatenate([q, g]), 6, 3)

    def shard(a, b):
        return RerankedDistances.from_graph_rows(q, g[a:b], graph.v[:12], graph.v[12 + a:12 + b], graph.row_max[:12],
                                                 lambda_=0.3)

    got = sharded_result(data, [13, 14, 40], shard, metric=expected.metric)
    _assert_same(got, expected)


def test_precomputed_shards_keep_exact_values() -> None:
    rng = np.random.default_rng(1)
    matrix = rng.integers(0, 4, size=(5, 20)).astype(np.float64)  # many ties
    labels = (rng.integers(1, 4, 5), rng.integers(0, 4, 20), None, None,
              np.array([f"q{i}" for i in range(5)], object), np.array([f"g{i}" for i in range(20)], object))
    data = {"labels": labels}
    qp, gp, _, _, qi, gi = labels
    expected = evaluate_ranking(PrecomputedDistances(matrix), qp, gp, protocol="no-camera", query_ids=qi,
                                gallery_ids=gi, keep_top=7)
    got = sharded_result(data, [3, 11], lambda a, b: PrecomputedDistances(matrix[:, a:b]), "no-camera",
                         metric="precomputed")
    _assert_same(got, expected)


def test_verification_passes_over_shards_equal_one_pass() -> None:
    rng = np.random.default_rng(2)
    q, g = rng.normal(size=(30, 4)).astype(np.float32), rng.normal(size=(90, 4)).astype(np.float32)
    qp, gp = rng.integers(1, 8, 30), rng.integers(-1, 8, 90)
    qc, gc = rng.integers(0, 3, 30), rng.integers(0, 3, 90)
    whole_labels = RankingLabels(qp, gp, qc, gc)
    expected = query_gallery_verification(EmbeddingDistances(q, g, "sqeuclidean"), whole_labels, distance="sqeuclidean",
                                          block_rows=7)
    shards = [(0, 20), (20, 21), (21, 90)]
    parts = [(EmbeddingDistances(q, g[a:b], "sqeuclidean"), RankingLabels(qp, gp[a:b], qc, gc[a:b])) for a, b in shards]
    binner = binner_over([first_block_range(s, l, 7) for s, l in parts])
    passed = [count_trials(s, l, binner, trial_block_rows(s.num_gallery)) for s, l in parts]
    counts = np.sum([p.counts for p in passed], axis=0)
    genuine = np.sort(np.concatenate([p.genuine for p in passed]))
    hot = hot_bins(genuine, counts, binner, [1e-1, 1e-2, 1e-3])
    seconds = [hot_trials(s, l, binner, hot, 5) for s, l in parts]
    got = verification_from_counts(genuine, counts, [k for k, _ in seconds], np.sum([h for _, h in seconds], axis=0),
                                   hot, binner, [1e-1, 1e-2, 1e-3], "sqeuclidean", whole_labels)
    assert got.to_dict() == expected.to_dict()
    assert np.array_equal(got.roc.curve.far, expected.roc.curve.far)


def test_reranked_pair_values_equal_the_blocks_exact_values() -> None:
    rng = np.random.default_rng(8)
    q, g = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(30, 5)).astype(np.float32)
    for distance in ("squared", "toolkit"):
        source = RerankedDistances(q, g, k1=5, k2=3, lambda_=0.2, distance=distance)
        dense = source.dense(block_rows=3)
        rows, cols = np.nonzero(np.ones(dense.shape, bool))
        assert np.array_equal(source.exact(rows, cols), dense[rows, cols])
