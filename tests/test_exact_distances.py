"""The exactness rule: keys are correctly rounded, approximations stay within their bound, and
ranks and metrics do not depend on the arithmetic that produced the approximations.

"Any CPU kernel or device" is simulated by an adversary: it replaces every approximate value by
the exact one moved anywhere within the stated bound (to its very edge, too). Ranks, metrics and
rankings must come out bit-identical. Data: floats with duplicates at different rows,
near-duplicates a few ulps apart, junk and distractors.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.eval.distances import DistanceBlock, EmbeddingDistances
from retrieval.eval.evaluate import evaluate_ranking
from retrieval.eval.rerank import RerankedDistances
from retrieval.indexes.distance import KeySpace, Metric, exact_pair_keys, round_scaled_integer
from retrieval.indexes.knn import exact_knn, exact_knn_between

from _torch import requires_torch

# ----------------------------------------------------------------------------- keys


def reference_key(a: np.ndarray, b: np.ndarray, metric: Metric) -> np.float32:
    """The exact rational value, rounded to the nearest float32 (ties to even), by brute force."""
    fa = [Fraction(float(x)) for x in a]
    fb = [Fraction(float(x)) for x in b]
    exact = sum((x - y) ** 2 for x, y in zip(fa, fb)) if metric.squared else -sum(x * y for x, y in zip(fa, fb))
    guess = np.float32(float(exact))
    candidates = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
    return min(candidates, key=lambda c: (abs(Fraction(float(c)) - exact), int(np.float32(c).view(np.uint32)) & 1))


floats32 = st.floats(min_value=-2.0**50, max_value=2.0**50, width=32, allow_nan=False, allow_subnormal=True)


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 6).flatmap(lambda d: st.tuples(st.lists(floats32, min_size=d, max_size=d),
                                                     st.lists(floats32, min_size=d, max_size=d))),
       st.sampled_from([Metric.SQEUCLIDEAN, Metric.INNER_PRODUCT]))
def test_keys_are_the_correctly_rounded_exact_values(pair, metric):
    a = np.array([pair[0]], dtype=np.float32)
    b = np.array([pair[1]], dtype=np.float32)
    got = exact_pair_keys(a, [0], b, [0], metric)[0]
    assert got == reference_key(a[0], b[0], metric)


def test_keys_of_float_data_in_high_dimension_equal_the_reference():
    rng = np.random.default_rng(3)
    a = rng.standard_normal((40, 300)).astype(np.float32)
    b = (a + rng.standard_normal((40, 300)).astype(np.float32) * np.float32(1e-4)).astype(np.float32)
    rows = np.arange(40)
    for metric in (Metric.SQEUCLIDEAN, Metric.INNER_PRODUCT):
        got = exact_pair_keys(a, rows, b, rows, metric)
        want = [reference_key(a[i], b[i], metric) for i in rows]
        np.testing.assert_array_equal(got, np.array(want, np.float32))


def test_round_scaled_integer_rounds_half_to_even():
    assert round_scaled_integer((1 << 24) + 1, 0) == np.float32(1 << 24)  # halfway: down to even
    assert round_scaled_integer((1 << 24) + 3, 0) == np.float32((1 << 24) + 4)  # halfway: up to even
    assert round_scaled_integer(3, -1) == np.float32(1.5)
    assert round_scaled_integer(1, -149) == np.float32(2.0**-149)  # the smallest subnormal
    assert round_scaled_integer(1, -151) == np.float32(0.0)  # below half of it


def test_identical_vectors_are_exact_ties_at_any_row():
    rng = np.random.default_rng(0)
    gallery = rng.standard_normal((50, 64)).astype(np.float32)
    gallery[[7, 31, 49]] = gallery[3]
    query = rng.standard_normal((5, 64)).astype(np.float32)
    space = KeySpace(query, gallery, Metric.EUCLIDEAN)
    for q in range(5):
        keys = space.exact(np.full(4, q), np.array([3, 7, 31, 49]))
        assert len(set(keys.tolist())) == 1


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from([3, 64, 512]), st.sampled_from(["euclidean", "cosine", "ip"]))
def test_float32_blocks_lie_within_their_bound(seed, dim, metric):
    rng = np.random.default_rng(seed)
    scale = rng.choice([1e-3, 1.0, 30.0], size=(1, 1))
    q = (rng.standard_normal((17, dim)) * scale * rng.uniform(0.1, 3, (17, 1))).astype(np.float32)
    g = (rng.standard_normal((29, dim)) * scale * rng.uniform(0.1, 3, (29, 1))).astype(np.float32)
    g[5] = q[2]  # a duplicate: exact key 0
    space = KeySpace(q, g, metric)
    rows, cols = np.indices((17, 29)).reshape(2, -1)
    exact = space.exact(rows, cols).reshape(17, 29).astype(np.float64)
    for start, block in space.approx_blocks(5):
        bound = space.bounds.rows(start, start + len(block))
        assert np.all(np.abs(block - exact[start:start + len(block)]) <= bound[:, None])


# ----------------------------------------------------------------------------- the adversary


class AnyKernel:
    """A distance source whose approximate values are the exact ones moved within the bound."""

    def __init__(self, source, seed: int, edge: bool = False):
        self.source, self.rng, self.edge = source, np.random.default_rng(seed), edge
        self.num_queries, self.num_gallery, self.metric = source.num_queries, source.num_gallery, source.metric

    def to_distance(self, values):
        return self.source.to_distance(values)

    def __getattr__(self, name):
        if name == "gallery_subset" and hasattr(self.source, "gallery_subset"):
            def gallery_subset(cols):
                subset = AnyKernel(self.source.gallery_subset(cols), 0, self.edge)
                subset.rng = self.rng
                return subset

            return gallery_subset
        raise AttributeError(name)

    def blocks(self, block_rows):
        for block in self.source.blocks(block_rows):
            rows, cols = np.indices(block.values.shape).reshape(2, -1)
            exact = block.exact(rows, cols).reshape(block.values.shape).astype(np.float64)
            if self.edge:
                shift = self.rng.choice([-1.0, 1.0], size=exact.shape)
            else:
                shift = self.rng.uniform(-1.0, 1.0, size=exact.shape)
            inside = block.bound[:, None] * (1.0 - 2.0**-40)  # at the edge, after rounding too
            yield DistanceBlock(block.start, exact + shift * inside, block.bound, block.exact_fn)


def clustered_data(seed: int, n_query=40, n_gallery=260, dim=48):
    """Identities as clusters, duplicates at other rows, near-duplicates, junk and distractors."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, dim))
    gpid = rng.integers(1, 12, n_gallery)
    gpid[rng.random(n_gallery) < 0.08] = -1
    gpid[rng.random(n_gallery) < 0.08] = 0
    qpid = rng.integers(1, 12, n_query)
    g = centres[np.maximum(gpid, 0)] + 0.7 * rng.standard_normal((n_gallery, dim))
    q = centres[qpid] + 0.7 * rng.standard_normal((n_query, dim))
    g = g.astype(np.float32)
    for src, dst in rng.integers(0, n_gallery, (15, 2)):  # exact duplicates at other rows
        g[dst], gpid[dst] = g[src], gpid[src]
    for src, dst in rng.integers(0, n_gallery, (10, 2)):  # near-duplicates: one ulp apart
        g[dst] = np.nextafter(g[src], np.float32(np.inf))
    q[:3] = g[:3]  # queries identical to gallery items
    qpid[:3] = np.maximum(gpid[:3], 1)
    return dict(q=q.astype(np.float32), g=g, qpid=qpid, gpid=gpid,
                qcam=rng.integers(0, 3, n_query), gcam=rng.integers(0, 3, n_gallery))


def evaluate(source, d, **kw):
    return evaluate_ranking(source, d["qpid"], d["gpid"], d["qcam"], d["gcam"], keep_top=12, **kw)


def same_result(a, b):
    assert a.to_dict() == b.to_dict()
    assert a.per_query.equals(b.per_query)
    assert a.rankings.equals(b.rankings)


@pytest.mark.parametrize("metric", ["euclidean", "cosine", "sqeuclidean"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ranks_and_metrics_do_not_depend_on_the_kernel(metric, seed):
    d = clustered_data(seed)
    base = EmbeddingDistances(d["q"], d["g"], metric=metric)
    reference = evaluate(base, d)
    for trial, edge in [(seed, False), (seed + 100, True)]:
        same_result(evaluate(AnyKernel(base, trial, edge), d, block_rows=7), reference)


def test_single_gallery_shot_does_not_depend_on_the_kernel():
    d = clustered_data(4)
    base = EmbeddingDistances(d["q"], d["g"])
    kw = dict(cmc_mode="single-gallery-shot", repeats=4)
    reference = evaluate(base, d, **kw)
    same_result(evaluate(AnyKernel(base, 9, edge=True), d, block_rows=5, **kw), reference)


def test_reranked_ranks_do_not_depend_on_the_kernel():
    d = clustered_data(5, n_query=30, n_gallery=150)
    reranked = RerankedDistances(d["q"], d["g"], k1=8, k2=3)
    reference = evaluate(reranked, d)
    same_result(evaluate(AnyKernel(reranked, 3, edge=True), d, block_rows=4), reference)


def test_removing_junk_rows_changes_no_metric():
    d = clustered_data(6)
    keep = d["gpid"] != -1
    full = evaluate(EmbeddingDistances(d["q"], d["g"]), d)
    pruned = dict(d, g=d["g"][keep], gpid=d["gpid"][keep], gcam=d["gcam"][keep])
    without = evaluate(EmbeddingDistances(pruned["q"], pruned["g"]), pruned)
    assert full.per_query.equals(without.per_query)
    assert (full.mAP, full.mINP) == (without.mAP, without.mINP)
    np.testing.assert_array_equal(full.cmc, without.cmc)


def test_query_order_and_block_size_change_nothing():
    d = clustered_data(7)
    perm = np.random.default_rng(0).permutation(len(d["q"]))
    ids = np.array([f"q{i}" for i in range(len(d["q"]))], dtype=object)
    first = evaluate(EmbeddingDistances(d["q"], d["g"]), d, query_ids=ids, block_rows=3)
    shuffled = dict(d, q=d["q"][perm], qpid=d["qpid"][perm], qcam=d["qcam"][perm])
    second = evaluate(EmbeddingDistances(shuffled["q"], shuffled["g"]), shuffled, query_ids=ids[perm], block_rows=11)
    by_id = lambda t: sorted(t.to_pylist(), key=lambda r: (r["query_id"], r.get("rank", 0)))  # noqa: E731
    assert by_id(first.per_query) == by_id(second.per_query)
    assert by_id(first.rankings) == by_id(second.rankings)


def test_duplicates_are_ranked_consecutively_by_row():
    d = clustered_data(8)
    result = evaluate(EmbeddingDistances(d["q"], d["g"]), d)
    table = result.rankings.to_pydict()
    for query in set(table["query_id"]):
        rows = [(g, dist) for q, g, dist in zip(table["query_id"], table["gallery_id"], table["distance"]) if q == query]
        for (g1, d1), (g2, d2) in zip(rows, rows[1:]):
            assert d1 <= d2
            if d1 == d2:
                assert int(g1[1:]) < int(g2[1:])  # ties by gallery row


# ----------------------------------------------------------------------------- k-NN


def brute_knn(x, base, k, metric=Metric.SQEUCLIDEAN):
    rows, cols = np.indices((len(x), len(base))).reshape(2, -1)
    keys = exact_pair_keys(x, rows, base, cols, metric).reshape(len(x), len(base))
    order = np.argsort(keys, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(keys, order, axis=1), order, keys.max(axis=1)


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 12), st.integers(1, 40))
def test_exact_knn_on_float_data_with_duplicates(seed, k, block_rows):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((70, 24)).astype(np.float32)
    x[rng.integers(0, 70, 12)] = x[rng.integers(0, 70, 12)]
    x[5] = np.nextafter(x[4], np.float32(0))
    dist, idx, row_max = exact_knn(x, k, block_rows=block_rows, with_row_max=True)
    want_d, want_i, want_max = brute_knn(x, x, k)
    np.testing.assert_array_equal(idx, want_i)
    np.testing.assert_array_equal(dist, want_d)
    np.testing.assert_array_equal(row_max, want_max)
    d2, i2 = exact_knn_between(x[:9], x, k, block_rows=block_rows)
    np.testing.assert_array_equal(i2, want_i[:9])


@pytest.mark.parametrize("metric", ["l2", "cosine", "ip"])
def test_flat_index_search_equals_brute_force_over_exact_keys(tmp_path, metric):
    from retrieval.indexes.distance import key_to_distance, metric_from_name, prepare
    from retrieval.indexes.store import build_index

    d = clustered_data(9)
    handle = build_index(tmp_path / "flat", d["g"], kind="flat", metric=metric).handle
    distances, rows = handle.search(d["q"], 25)
    core = metric_from_name(metric)
    g, q = prepare(d["g"], core), prepare(d["q"], core)
    rr, cc = np.indices((len(q), len(g))).reshape(2, -1)
    keys = exact_pair_keys(q, rr, g, cc, core).reshape(len(q), len(g))
    order = np.argsort(keys, axis=1, kind="stable")[:, :25]
    np.testing.assert_array_equal(rows, order)
    np.testing.assert_array_equal(distances, key_to_distance(np.take_along_axis(keys, order, axis=1), core))


def test_rows_split_by_the_candidate_budget_give_the_same_result(monkeypatch):
    import retrieval.eval.ranking as ranking

    d = clustered_data(10)
    source = EmbeddingDistances(d["q"], d["g"])
    reference = evaluate(source, d)
    monkeypatch.setattr(ranking, "CANDIDATE_BUDGET", 60)  # a few rows per group, single rows too
    same_result(evaluate(source, d, block_rows=16), reference)
    same_result(evaluate(AnyKernel(source, 5, edge=True), d, block_rows=16), reference)


@requires_torch
@pytest.mark.parametrize("metric", ["euclidean", "cosine", "sqeuclidean"])
def test_values_left_on_the_device_give_the_same_result(metric, monkeypatch):
    """The GPU path keeps each block on the device and selects there (``eval.device_values``);
    run here with torch on the CPU: the same ranks, tables and metrics as host blocks."""
    import retrieval.eval.evaluate as evaluate_module
    import retrieval.eval.ranking as ranking
    from retrieval.eval.device_values import DeviceValues

    monkeypatch.setattr(evaluate_module, "DROP_JUNK_COLUMNS", True)  # the subset keeps the device
    default_budget = ranking.CANDIDATE_BUDGET
    wide = clustered_data(13, n_query=12, n_gallery=9000, dim=8)  # wider than twice the top-k sample
    for d, budget in [(clustered_data(12), None), (clustered_data(14), 60), (wide, None)]:
        host = EmbeddingDistances(d["q"], d["g"], metric=metric)
        reference = evaluate(host, d)
        on_device = EmbeddingDistances(d["q"], d["g"], metric=metric)
        on_device.ranking_device = "cpu"
        assert isinstance(next(on_device.ranking_blocks(5)).values, DeviceValues)
        if budget:  # row groups of a few rows, single rows too
            monkeypatch.setattr(ranking, "CANDIDATE_BUDGET", budget)
        same_result(evaluate(on_device, d, block_rows=9), reference)
        monkeypatch.setattr(ranking, "CANDIDATE_BUDGET", default_budget)


def test_dropping_junk_columns_from_the_computation_changes_no_rank(monkeypatch):
    import retrieval.eval.evaluate as evaluate_module

    d = clustered_data(11)
    source = EmbeddingDistances(d["q"], d["g"])
    full = evaluate(source, d)
    monkeypatch.setattr(evaluate_module, "DROP_JUNK_COLUMNS", True)
    dropped = evaluate(source, d)
    assert dropped.to_dict() == full.to_dict() and dropped.per_query.equals(full.per_query)
    junk_ids = {f"g{i}" for i in np.flatnonzero(d["gpid"] == -1)}
    kept = [row for row in full.rankings.to_pylist() if row["gallery_id"] not in junk_ids]
    by_query = {}
    for row in kept:
        by_query.setdefault(row["query_id"], []).append(row["gallery_id"])
    for row in dropped.rankings.to_pylist():  # the same order, junk-pid items left out
        assert row["gallery_id"] not in junk_ids
    for query, ids in by_query.items():
        got = [r["gallery_id"] for r in dropped.rankings.to_pylist() if r["query_id"] == query]
        assert got[:len(ids)] == ids[:len(got)]
