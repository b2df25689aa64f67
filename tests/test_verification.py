"""Verification metrics (protocols.md §2): hand-computed cases, brute-force definitions, golden pairs."""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from retrieval.eval.distances import DistanceBlock, PrecomputedDistances
from retrieval.eval.errors import EvaluationError
from retrieval.eval.protocol import RankingLabels
from retrieval.eval.kfold import LFW_GRID, best_threshold, candidate_thresholds, fold_bounds, kfold_accuracy
from retrieval.eval.roc import SortedImpostors, eer_at_closest_threshold, far_label, roc_metrics
from retrieval.eval.trials import BinnedImpostors, MonotoneBinner, order_stat_bins, query_gallery_verification
from retrieval.eval.verification import evaluate_pairs, pair_distances
from _gpu import requires_cuda

GOLDEN = Path(__file__).parent / "data" / "verification_pairs"


# ----------------------------------------------------------------------------- brute-force definitions


def brute_curve(distances, is_same):
    """FAR/TAR/threshold at every sorted unique distance, starting at (0, 0)."""
    d = np.asarray(distances, dtype=np.float64)
    same = np.asarray(is_same, bool)
    points = [(0.0, 0.0, -np.inf)]
    for t in np.unique(d):
        points.append((np.mean(d[~same] <= t), np.mean(d[same] <= t), t))
    return points


def brute_auc(distances, is_same):
    """P(d_diff > d_same) + ½ P(tie), over every (same, different) combination."""
    d = np.asarray(distances, dtype=np.float64)
    same = np.asarray(is_same, bool)
    g, i = d[same][:, None], d[~same][None, :]
    return float(np.mean((i > g) + 0.5 * (i == g)))


def brute_eer(distances, is_same):
    points = brute_curve(distances, is_same)
    for (x0, y0, _), (x1, y1, _) in zip(points, points[1:]):
        if x1 >= 1 - y1:
            a = (1 - x0 - y0) / ((x1 - x0) + (y1 - y0))
            return x0 + a * (x1 - x0)
    raise AssertionError("the curve ends at (1, 1), so it always crosses")


def brute_tar_at_far(distances, is_same, far):
    """Scan every curve point: the largest TAR with FAR ≤ far, at the largest such threshold."""
    best = (0.0, 0.0, None)
    n_diff = int(np.sum(~np.asarray(is_same, bool)))
    for x, y, t in brute_curve(distances, is_same)[1:]:
        if Fraction(round(x * n_diff), n_diff) <= Fraction(repr(far)):
            best = (y, x, t)
    return best


def brute_trials(matrix, qpid, gpid, qcam, gcam, protocol, junk, qids=None, gids=None):
    """Every query × gallery pair as a trial, filtered with a plain double loop."""
    scores, labels = [], []
    for q in range(matrix.shape[0]):
        if qpid[q] in junk:
            continue
        for g in range(matrix.shape[1]):
            if gpid[g] in junk:
                continue
            same_person = qpid[q] == gpid[g] and qpid[q] != 0  # distractors (pid 0) match nobody
            if protocol == "market" and same_person and qcam[q] == gcam[g]:
                continue
            if protocol == "leave-one-out" and qids[q] == gids[g]:
                continue
            scores.append(matrix[q, g])
            labels.append(same_person)
    return np.array(scores, dtype=matrix.dtype), np.array(labels, bool)


# ----------------------------------------------------------------------------- hand-computed cases


def test_hand_computed_roc_with_a_tie():
    # same 0.1, 0.4; different 0.2, 0.4 (tied with a same pair), 0.9
    d = np.array([0.1, 0.2, 0.4, 0.4, 0.9])
    same = np.array([True, False, True, False, False])
    m = roc_metrics(d, same, fars=[0.5, 0.1, 0.7])
    # corners: start, step at 0.1, impostor 0.2 alone, the tied step at 0.4, end
    assert m.curve.far.tolist() == pytest.approx([0, 0, 1 / 3, 2 / 3, 1])
    assert m.curve.tar.tolist() == pytest.approx([0, 0.5, 0.5, 1, 1])
    assert m.curve.threshold[0] == -np.inf and m.curve.threshold[-1] == np.inf
    assert m.curve.threshold[1] == 0.1 and np.isnan(m.curve.threshold[2]) and m.curve.threshold[3] == 0.4
    # trapezoids: 0 + 1/3·½ + 1/3·¾ (the tie's diagonal) + 1/3·1 = 3/4 = (3 + 1.5) / 6 pairs
    assert m.roc_auc == 0.75
    # crossing of x + y = 1 on (1/3, ½) → (2/3, 1): a = 1/5, EER = 1/3 + 1/15
    assert m.eer == pytest.approx(0.4, abs=1e-15)
    half = m.tar_at_far["5e-1"]  # k = ⌊1.5⌋ = 1: stop below the 2nd smallest impostor (0.4)
    assert (half.tar, half.far, half.threshold, half.too_few_impostors) == (0.5, 1 / 3, 0.2, False)
    low = m.tar_at_far["1e-1"]  # 3 impostors < 1/0.1: FAR 0 is the best we can say
    assert (low.tar, low.far, low.threshold, low.too_few_impostors) == (0.5, 0.0, 0.1, True)
    high = m.tar_at_far["7e-1"]  # k = 2: below 0.9, everything else accepted
    assert (high.tar, high.far, high.threshold) == (1.0, 2 / 3, 0.4)
    assert len(m.warnings()) == 1 and "1e-1" in m.warnings()[0]


def test_eer_at_closest_threshold_by_hand():
    # same 0.1, 0.3; different 0.2, 0.4, 0.5. Thresholds: none (FAR 0, FRR 1), 0.1 (0, ½),
    # 0.2 (⅓, ½), 0.3 (⅓, 0), ... |FAR − FRR| is smallest (⅙) at t = 0.2: EER ≈ (⅓ + ½)/2 = 5/12
    d = np.array([0.1, 0.2, 0.3, 0.4, 0.5])
    same = np.array([True, False, True, False, False])
    assert eer_at_closest_threshold(d, same) == pytest.approx(5 / 12, abs=1e-15)
    assert eer_at_closest_threshold(np.array([0.1, 0.2, 0.3, 0.4]), np.array([True, True, False, False])) == 0.0


def test_separated_reversed_and_tied_scores():
    same = np.array([True, True, False, False])
    perfect = roc_metrics(np.array([0.1, 0.2, 0.3, 0.4]), same)
    assert (perfect.roc_auc, perfect.eer) == (1.0, 0.0)
    reversed_ = roc_metrics(np.array([0.3, 0.4, 0.1, 0.2]), same)
    assert (reversed_.roc_auc, reversed_.eer) == (0.0, 1.0)
    tied = roc_metrics(np.ones(4), same)
    assert (tied.roc_auc, tied.eer) == (0.5, 0.5)


def test_no_accepted_pair_has_no_threshold():
    # the smallest distance is an impostor and FAR 0.1 of 2 impostors allows none: nothing accepted
    m = roc_metrics(np.array([0.1, 0.5, 0.6, 0.7]), np.array([False, True, True, False]), fars=[0.1])
    point = m.tar_at_far["1e-1"]
    assert (point.tar, point.far, point.threshold, point.too_few_impostors) == (0.0, 0.0, None, True)


def test_missing_class_is_an_error():
    with pytest.raises(EvaluationError, match="no impostor"):
        roc_metrics(np.array([0.1, 0.2]), np.array([True, True]))
    with pytest.raises(EvaluationError, match="no genuine"):
        roc_metrics(np.array([0.1, 0.2]), np.array([False, False]))
    with pytest.raises(EvaluationError, match="between 0 and 1"):
        roc_metrics(np.array([0.1, 0.2]), np.array([True, False]), fars=[1.0])


def test_far_labels():
    assert [far_label(x) for x in (0.1, 0.01, 1e-3, 1e-6, 0.05, 0.025)] == ["1e-1", "1e-2", "1e-3", "1e-6", "5e-2", "2.5e-2"]


def test_pair_distances():
    a = np.array([[1.0, 0.0], [0.0, 2.0]], np.float32)
    b = np.array([[0.0, 1.0], [0.0, 1.0]], np.float32)
    assert pair_distances(a, b, "sqeuclidean").tolist() == [2.0, 1.0]
    assert pair_distances(a, b, "cosine").tolist() == pytest.approx([1.0, 0.0])
    with pytest.raises(EvaluationError, match="zero vectors"):
        pair_distances(np.zeros((1, 2)), b[:1], "cosine")


# ----------------------------------------------------------------------------- brute force (hypothesis)

pair_sets = st.integers(2, 40).flatmap(
    lambda n: st.tuples(
        st.lists(st.integers(0, 6), min_size=n, max_size=n),  # few distinct values: many ties
        st.lists(st.booleans(), min_size=n, max_size=n),
    )
).filter(lambda case: 0 < sum(case[1]) < len(case[1]))


@settings(max_examples=150, deadline=None)
@given(pair_sets, st.sampled_from([0.05, 0.1, 0.25, 0.5, 0.9]))
def test_exact_roc_equals_brute_force(case, far):
    values, labels = case
    d = np.array(values, dtype=np.float64) / 4
    same = np.array(labels, bool)
    m = roc_metrics(d, same, fars=[far])
    assert m.roc_auc == pytest.approx(brute_auc(d, same), abs=1e-12)
    assert m.eer == pytest.approx(brute_eer(d, same), abs=1e-12)
    tar, far_got, threshold = brute_tar_at_far(d, same, far)
    point = m.tar_at_far[far_label(far)]
    assert point.tar == pytest.approx(tar, abs=1e-12)
    assert point.far == pytest.approx(far_got, abs=1e-12)
    assert point.threshold == threshold
    # every brute-force curve point lies on our corner polyline (points inside a straight run dropped)
    xs, ys = m.curve.impostor_accepted, m.curve.genuine_accepted
    n_diff, n_same = int((~same).sum()), int(same.sum())
    for x, y, _ in brute_curve(d, same):
        assert on_polyline(round(x * n_diff), round(y * n_same), xs, ys)


def on_polyline(x, y, xs, ys):
    for x0, y0, x1, y1 in zip(xs[:-1], ys[:-1], xs[1:], ys[1:]):
        inside = x0 <= x <= x1 and y0 <= y <= y1
        if inside and (x - x0) * (y1 - y0) == (y - y0) * (x1 - x0):  # collinear
            return True
    return False


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(-20, 60), min_size=1, max_size=60),
    st.lists(st.integers(-20, 60), min_size=1, max_size=30),
    st.integers(1, 9),
    st.floats(-3, 3),
    st.floats(0.1, 8),
)
def test_binned_counts_equal_sorted_counts(impostor_values, queries, num_bins, lo, width):
    """Any monotone bins give exact counts and order statistics inside the kept bins."""
    imp = np.array(impostor_values, np.float64) / 8
    ask = np.array(queries, np.float64) / 8
    binner = MonotoneBinner(lo, lo + width, num_bins, np.float64)
    counts = np.bincount(binner(imp), minlength=num_bins)
    hot = np.zeros(num_bins + 1, bool)
    hot[binner(ask)] = True
    hot[order_stat_bins(counts, [0.3])] = True
    binned = BinnedImpostors(counts, imp[hot[binner(imp)]], hot, binner)
    exact = SortedImpostors(imp)
    assert binned.num == exact.num
    assert binned.count_less(ask).tolist() == exact.count_less(ask).tolist()
    assert binned.count_leq(ask).tolist() == exact.count_leq(ask).tolist()
    k = int(Fraction("0.3") * len(imp))
    if k < len(imp):
        assert binned.order_stat(k) == exact.order_stat(k)


# ----------------------------------------------------------------------------- k-fold accuracy


def test_fold_bounds_are_contiguous_like_kfold():
    from sklearn.model_selection import KFold

    for n, k in [(6000, 10), (23, 4), (10, 10)]:
        ours = fold_bounds(n, k)
        theirs = [(int(test[0]), int(test[-1]) + 1) for _, test in KFold(n_splits=k, shuffle=False).split(np.zeros(n))]
        assert ours == theirs
    with pytest.raises(EvaluationError):
        fold_bounds(3, 4)


def test_first_best_threshold():
    # "same if d < t": t = 0.5 and t = 0.7 both classify everything right; the first one wins
    d = np.array([0.1, 0.4, 0.8, 0.9])
    same = np.array([True, True, False, False])
    assert best_threshold(d, same, np.array([0.2, 0.5, 0.7, 1.0])) == 0.5
    assert best_threshold(d, same, candidate_thresholds(d, "exact")) == pytest.approx(0.6)


def lfw_script_fold_accuracy(d, same, folds):
    """The classic LFW script, written out: grid 0..3.99, same if d < t, first best on training folds."""
    out = []
    for start, stop in fold_bounds(len(d), folds):
        train = np.ones(len(d), bool)
        train[start:stop] = False
        accs = [np.mean(np.less(d[train], t) == same[train]) for t in LFW_GRID]
        t = LFW_GRID[int(np.argmax(accs))]
        out.append(float(np.mean(np.less(d[~train], t) == same[~train])))
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(2, 5))
def test_lfw_grid_equals_the_script(seed, folds):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(folds, 60))
    same = rng.random(n) < 0.5
    d = np.round(rng.random(n) * 4, 2)  # on-grid values: the d < t edge matters
    ours = kfold_accuracy(d, same, folds=folds, threshold_grid="lfw", fars=[0.5])
    assert ours.fold_accuracy == lfw_script_fold_accuracy(d, same, folds)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 2**31 - 1))
def test_exact_threshold_maximises_training_accuracy(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(6, 50))
    same = rng.random(n) < 0.5
    d = rng.integers(0, 8, n) / 8
    result = kfold_accuracy(d, same, folds=3, threshold_grid="exact", fars=[0.2])
    for fold in result.folds:
        train = np.ones(n, bool)
        train[fold.start : fold.stop] = False
        # brute force: every split "same if d <= u" of the training values, and "nothing same"
        splits = [-np.inf] + sorted(set(d[train].tolist()))
        best = max(np.mean((d[train] <= u) == same[train]) for u in splits)
        assert np.mean((d[train] < fold.threshold) == same[train]) == best
        assert fold.accuracy == np.mean((d[~train] < fold.threshold) == same[~train])


def test_val_at_far_per_fold_uses_training_threshold():
    rng = np.random.default_rng(3)
    same = np.tile([True, False], 50)
    d = np.where(same, rng.random(100), rng.random(100) + 0.5)
    result = kfold_accuracy(d, same, folds=5, fars=[0.1])
    for fold in result.folds:
        train = np.ones(100, bool)
        train[fold.start : fold.stop] = False
        expected = roc_metrics(d[train], same[train], fars=[0.1]).tar_at_far["1e-1"].threshold
        point = fold.val_at_far["1e-1"]
        assert point["threshold"] == expected
        test_same, test_d = same[~train], d[~train]
        assert point["val"] == np.mean(test_d[test_same] <= expected)
        assert point["far"] == np.mean(test_d[~test_same] <= expected)


# ----------------------------------------------------------------------------- golden pairs


def golden_pairs():
    from retrieval.data.pairs import image_rows, parse_pairs_file, resolve_pairs

    table = pq.read_table(GOLDEN / "embeddings.parquet")
    ids = np.array(table.column("id").to_pylist(), dtype=object)
    vectors = table.column("embedding").combine_chunks().values.to_numpy().reshape(len(ids), -1)
    pairs = parse_pairs_file(GOLDEN / "pairs.txt")
    first, second = resolve_pairs(pairs, image_rows(ids, None), "embeddings", GOLDEN / "pairs.txt")
    return vectors[first], vectors[second], pairs.is_same


def test_golden_verification_pairs():
    expected = json.loads((GOLDEN / "expected.json").read_text())
    a, b, same = golden_pairs()
    d = pair_distances(a, b, "sqeuclidean")
    grid = evaluate_pairs(d, same, folds=10, threshold_grid="lfw")
    assert grid.kfold.fold_accuracy == expected["fold_accuracy_grid"]
    assert grid.kfold.accuracy_mean == pytest.approx(expected["accuracy_mean_grid"], abs=1e-12)
    assert grid.kfold.accuracy_std == pytest.approx(expected["accuracy_std_grid"], abs=1e-12)
    assert grid.roc.roc_auc == pytest.approx(expected["roc_auc"], abs=1e-6)
    for label, tar in expected["tar_at_far"].items():
        assert grid.roc.tar_at_far[label].tar == pytest.approx(tar, abs=1e-6)
    # `eer` interpolates the crossing on the exact curve; `eer_approx` is the scripts' curve-point
    # convention ((FAR + FRR)/2 where they are closest), which the reference value follows.
    assert abs(grid.roc.eer - expected["eer_approx"]) <= 1 / grid.roc.num_genuine
    assert grid.eer_approx == pytest.approx(expected["eer_approx"], abs=1e-6)


# ----------------------------------------------------------------------------- query × gallery trials


def random_trial_case(rng, protocol):
    q, g = int(rng.integers(1, 12)), int(rng.integers(2, 30))
    qpid = rng.integers(-1, 4, q)
    gpid = rng.integers(-1, 5, g)
    qcam, gcam = rng.integers(0, 3, q), rng.integers(0, 3, g)
    matrix = (rng.integers(0, 10, (q, g)) / 4).astype(rng.choice([np.float32, np.float64]))
    gids = np.array([f"g{i}" for i in range(g)], dtype=object)
    qids = np.array([f"g{i}" if rng.random() < 0.5 else f"q{i}" for i in range(q)], dtype=object)
    return matrix, qpid, gpid, qcam, gcam, qids, gids


@settings(max_examples=120, deadline=None)
@given(
    st.integers(0, 2**31 - 1),
    st.sampled_from(["market", "no-camera", "leave-one-out"]),
    st.sampled_from([1, 3, 64, 1 << 20]),
    st.booleans(),
    st.integers(1, 5),
)
def test_query_gallery_trials_equal_full_sort(seed, protocol, num_bins, cache, block_rows):
    rng = np.random.default_rng(seed)
    matrix, qpid, gpid, qcam, gcam, qids, gids = random_trial_case(rng, protocol)
    scores, labels = brute_trials(matrix, qpid, gpid, qcam, gcam, protocol, {-1}, qids, gids)
    ranking_labels = RankingLabels(
        qpid, gpid, qcam, gcam, protocol=protocol, junk_pids=(-1,), query_ids=qids, gallery_ids=gids
    )
    fars = [0.05, 0.2, 0.5]
    call = lambda: query_gallery_verification(  # noqa: E731
        PrecomputedDistances(matrix), ranking_labels, fars=fars, block_rows=block_rows,
        cache_bytes=(1 << 30) if cache else 0, num_bins=num_bins,
    )
    if labels.all() or not labels.any():
        with pytest.raises(EvaluationError):
            call()
        return
    ours = call().roc
    full = roc_metrics(scores, labels, fars=fars)  # the all-in-memory sorted path
    assert (ours.num_genuine, ours.num_impostor) == (int(labels.sum()), int((~labels).sum()))
    assert ours.roc_auc == full.roc_auc
    assert ours.eer == full.eer
    assert ours.tar_at_far == full.tar_at_far
    assert ours.curve.impostor_accepted.tolist() == full.curve.impostor_accepted.tolist()
    assert ours.curve.genuine_accepted.tolist() == full.curve.genuine_accepted.tolist()
    assert ours.roc_auc == pytest.approx(brute_auc(scores, labels), abs=1e-12)
    assert ours.eer == pytest.approx(brute_eer(scores, labels), abs=1e-12)
    for far in fars:
        tar, far_got, threshold = brute_tar_at_far(scores, labels, far)
        point = ours.tar_at_far[far_label(far)]
        assert (point.tar, point.far) == pytest.approx((tar, far_got), abs=1e-12)
        assert point.threshold == (None if threshold is None else float(threshold))


def test_query_gallery_trials_on_embeddings_with_junk():
    """Float32 GEMM distances of clustered vectors; junk pid -1 and same-camera junk removed."""
    from retrieval.eval.distances import EmbeddingDistances

    rng = np.random.default_rng(7)
    centres = rng.normal(size=(12, 16))
    qpid, gpid = rng.integers(1, 12, 40), np.concatenate([rng.integers(0, 12, 300), -np.ones(20, int)])
    q = centres[qpid] + 0.6 * rng.normal(size=(40, 16))
    g = centres[np.maximum(gpid, 0)] + 0.6 * rng.normal(size=(320, 16))
    qcam, gcam = rng.integers(0, 4, 40), rng.integers(0, 4, 320)
    source = EmbeddingDistances(q, g, metric="cosine")
    labels = RankingLabels(qpid, gpid, qcam, gcam, protocol="market")
    ours = query_gallery_verification(source, labels, fars=[1e-1, 1e-2, 1e-3], block_rows=7, cache_bytes=0)
    dense = np.concatenate([source.to_distance(block.values) for block in source.exact_blocks(7)])
    scores, same = brute_trials(dense, qpid, gpid, qcam, gcam, "market", {-1})
    full = roc_metrics(scores, same, fars=[1e-1, 1e-2, 1e-3])
    assert (ours.roc.roc_auc, ours.roc.eer, ours.roc.tar_at_far) == (full.roc_auc, full.eer, full.tar_at_far)
    assert ours.to_dict()["num_pairs"] == len(scores)
    assert ours.to_dict()["protocol"] == "market"


def test_trials_shape_mismatch_is_an_error():
    labels = RankingLabels(np.array([1]), np.array([1, 2]), protocol="no-camera")
    with pytest.raises(EvaluationError, match="labels describe"):
        query_gallery_verification(PrecomputedDistances(np.zeros((2, 2))), labels)


@requires_cuda
def test_query_gallery_trials_on_gpu_distances_equal_full_sort():
    """CUDA distance blocks: the counting path is exact on whatever distances the GPU returns."""
    from retrieval.eval.distances import EmbeddingDistances

    rng = np.random.default_rng(11)
    qpid, gpid = rng.integers(0, 20, 64), rng.integers(-1, 20, 500)
    q, g = rng.normal(size=(64, 32)), rng.normal(size=(500, 32))
    qcam, gcam = rng.integers(0, 3, 64), rng.integers(0, 3, 500)
    source = EmbeddingDistances(q, g, metric="sqeuclidean", device="cuda")
    labels = RankingLabels(qpid, gpid, qcam, gcam, protocol="market")
    ours = query_gallery_verification(source, labels, block_rows=16, cache_bytes=0)
    dense = np.concatenate([source.to_distance(block.values) for block in source.exact_blocks(16)])
    scores, same = brute_trials(dense, qpid, gpid, qcam, gcam, "market", {-1})
    full = roc_metrics(scores, same)
    assert (ours.roc.roc_auc, ours.roc.eer, ours.roc.tar_at_far) == (full.roc_auc, full.eer, full.tar_at_far)
    # exact keys: the same on every device (with the same blocks: kept_impostors, a diagnostic of
    # the histogram, follows the first block's range)
    cpu = query_gallery_verification(EmbeddingDistances(q, g, metric="sqeuclidean", device="cpu"), labels,
                                     block_rows=16, cache_bytes=0)
    assert ours.to_dict() == cpu.to_dict()


def test_nan_distances_are_an_error():
    matrix = np.ones((3, 4))
    matrix[2, 1] = np.nan
    labels = RankingLabels(np.array([1, 2, 3]), np.array([1, 2, 3, 4]), protocol="no-camera")

    class Source:  # a source that does not check its own values
        num_queries, num_gallery = 3, 4

        def blocks(self, block_rows):
            yield DistanceBlock.exact_values(0, matrix)

        def to_distance(self, values):
            return values

    with pytest.raises(EvaluationError, match="NaN .query rows 2"):
        query_gallery_verification(Source(), labels)
    with pytest.raises(EvaluationError, match="NaN"):
        roc_metrics(np.array([0.1, np.nan]), np.array([True, False]))


@given(st.integers(0, 2**32 - 1))
@example(427558)  # the first threshold's point lies on the line from the origin: scikit-learn keeps it
@settings(max_examples=200, deadline=None)
def test_eer_approx_equals_the_scripts_recipe_on_sklearn_roc(seed):
    from sklearn.metrics import roc_curve

    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 60))
    d = rng.integers(0, 8, size=n).astype(float) / 4  # many ties
    same = rng.random(n) < 0.5
    same[:2] = [True, False]
    fpr, tpr, _ = roc_curve(same, -d)  # the scripts' recipe: score = -distance, default drop_intermediate
    i = int(np.nanargmin(np.abs((1 - tpr) - fpr)))
    assert eer_at_closest_threshold(d, same) == pytest.approx((fpr[i] + 1 - tpr[i]) / 2, abs=1e-12)


def test_distractor_pairs_are_impostor_trials():
    # queries: a distractor (pid 0) and person 1; gallery: two distractors, person 1
    labels = RankingLabels(np.array([0, 1]), np.array([0, 0, 1]), protocol="no-camera")
    matrix = np.array([[0.1, 0.2, 0.9], [0.8, 0.7, 0.3]])
    result = query_gallery_verification(PrecomputedDistances(matrix), labels, fars=[0.5])
    assert (result.roc.num_genuine, result.roc.num_impostor) == (1, 5)


def test_a_source_that_changes_between_passes_fails_loudly():
    labels = RankingLabels(np.array([1, 2, 3]), np.array([1, 2, 3, 4]), protocol="no-camera")
    rng = np.random.default_rng(0)

    class Drifting:  # each pass over the blocks gives other values: not deterministic
        num_queries, num_gallery, metric = 3, 4, "x"

        def blocks(self, block_rows):
            yield DistanceBlock.exact_values(0, rng.random((3, 4)))

        def to_distance(self, values):
            return values

    with pytest.raises(EvaluationError, match="second pass"):
        query_gallery_verification(Drifting(), labels, cache_bytes=0, num_bins=4)
