"""1:N identification (protocols.md §6) against a plain brute-force reference of the definitions.

The reference below scores every probe against every enrolled identity with exact keys, sorts
the identities, and reads CMC, TPIR@FPIR and the DET curve off the sorted lists, as §6 writes
them. The engine must give the same tables and numbers for any block size, any kernel within
the distance core's bound (the adversary of test_exact_distances) and any probe order.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.eval.errors import EvaluationError
from retrieval.indexes.group_sums import exact_group_sums
from retrieval.eval.identification import (
    identification_task,
    identify,
    score_exhaustive,
    summarise,
)
from retrieval.indexes.distance import Metric, exact_pair_keys, key_to_distance, normalise, prepare
from test_exact_distances import AnyKernel

JUNK = (-1,)


# ----------------------------------------------------------------------------- the reference


def reference_sum(rows: np.ndarray) -> np.ndarray:
    """float32 nearest to the exact sum of each column (Fractions, then the nearest float32)."""
    out = []
    for column in np.asarray(rows, np.float32).T:
        exact = sum((Fraction(float(v)) for v in column), Fraction(0))
        guess = np.float32(float(exact))
        near = [np.nextafter(guess, np.float32(-np.inf)), guess, np.nextafter(guess, np.float32(np.inf))]
        out.append(min(near, key=lambda c: (abs(Fraction(float(c)) - exact), int(np.float32(c).view(np.uint32)) & 1)))
    return np.array(out, np.float32)


def reference(q, g, qpid, gpid, template, metric, fpirs, max_rank=50):
    """§6 written plainly: enrol, score every identity, sort, count."""
    core = Metric(metric)
    enrolled = [r for r in range(len(g)) if gpid[r] not in JUNK]
    first_row: dict = {}
    for r in enrolled:  # identity key: the pid, or the row of a pid-0 item
        first_row.setdefault(("pid", gpid[r]) if gpid[r] > 0 else ("row", r), r)
    identities = sorted(first_row, key=first_row.get)  # numbered by first gallery row
    members = {i: [r for r in enrolled if (("pid", gpid[r]) if gpid[r] > 0 else ("row", r)) == i] for i in identities}
    probes = [p for p in range(len(q)) if qpid[p] not in JUNK]
    qv = q[probes]
    if template == "mean":
        cols = np.stack([normalise(reference_sum(normalise(g[members[i]])).reshape(1, -1))[0] for i in identities])
        if metric == "euclidean":
            qv = normalise(qv)
        col_identity = list(range(len(identities)))
    else:
        cols = g[enrolled]
        col_identity = [identities.index(("pid", gpid[r]) if gpid[r] > 0 else ("row", r)) for r in enrolled]
    a, b = prepare(qv, core), prepare(cols, core)
    rows = []
    for p in range(len(probes)):
        keys = exact_pair_keys(a, np.full(len(b), p), b, np.arange(len(b)), core)
        best = {}
        for c, key in enumerate(keys):  # an identity scores as its best column (lowest column among ties)
            i = col_identity[c]
            if i not in best or key < best[i][0]:
                best[i] = (key, c)
        ranked = sorted(best, key=lambda i: (best[i][0], i))
        pid = int(qpid[probes[p]])
        mate = identities.index(("pid", pid)) if pid > 0 and ("pid", pid) in identities else None
        top = ranked[0]
        rows.append(dict(
            top_key=best[top][0], top_identity=top, top_col=best[top][1], mated=mate is not None,
            mate_rank=ranked.index(mate) + 1 if mate is not None else None,
            mate_key=best[mate][0] if mate is not None else None,
        ))
    mated = [r for r in rows if r["mated"]]
    nonmated = sorted(r["top_key"] for r in rows if not r["mated"])  # best first (keys: smaller = better)
    hits = [r["mate_key"] for r in mated if r["mate_rank"] == 1]
    cmc = [sum(r["mate_rank"] <= k for r in mated) / len(mated) if mated else math.nan for k in range(1, max_rank + 1)]
    points = {}
    if nonmated and mated:
        for f in fpirs:
            m = int(Fraction(repr(f)) * len(nonmated))
            t = nonmated[m]
            points[f] = (sum(h < t for h in hits) / len(mated), sum(s < t for s in nonmated) / len(nonmated), t, m > 0)
    gallery_row = [first_row[i] for i in identities] if template == "mean" else enrolled
    return dict(rows=rows, cmc=cmc, points=points, hits=hits, nonmated=nonmated, probes=probes,
                identities=identities, gallery_row=gallery_row, num_mated=len(mated))


def score_of(keys, metric):
    d = key_to_distance(np.asarray(keys, np.float32), metric).astype(np.float64)
    return 1.0 - d if metric == "cosine" else d


def assert_matches_reference(result, ref, metric, gpid):
    table = result.per_probe.to_pylist()
    assert len(table) == len(ref["rows"])
    for got, want in zip(table, ref["rows"]):
        assert got["mated"] == want["mated"]
        assert got["top1_score"] == score_of([want["top_key"]], metric)[0]
        identity = ref["identities"][want["top_identity"]]
        assert got["top1_identity"] == (identity[1] if identity[0] == "pid" else 0)
        assert got["top1_gallery_id"] == f"g{ref['gallery_row'][want['top_col']]}"
        assert got["mate_rank"] == want["mate_rank"]
        want_mate = None if want["mate_key"] is None else score_of([want["mate_key"]], metric)[0]
        assert got["mate_score"] == want_mate
    if ref["num_mated"]:
        np.testing.assert_array_equal(result.cmc, np.array(ref["cmc"]))
    if ref["points"]:
        for f, (tpir, fpir, t, reachable) in ref["points"].items():
            point = next(p for p in result.tpir_at_fpir.values() if p.target == f)
            assert (point.tpir, point.fpir, point.threshold_key, point.reachable) == (tpir, fpir, float(t), reachable)
    else:
        assert result.tpir_at_fpir is None
    det = result.det
    values = sorted(set(ref["hits"]) | set(ref["nonmated"])) + [np.float32(np.inf)]
    np.testing.assert_array_equal(det.threshold_key, np.array(values, np.float32))
    np.testing.assert_array_equal(det.nonmated_accepted, [sum(s < t for s in ref["nonmated"]) for t in values])
    np.testing.assert_array_equal(det.mated_accepted, [sum(h < t for h in ref["hits"]) for t in values])


# ----------------------------------------------------------------------------- data with ties


@st.composite
def galleries(draw):
    """Small integer vectors (many exact ties and duplicates), junk, unknown people, unenrolled probes."""
    dim = draw(st.integers(2, 4))
    n_g, n_q = draw(st.integers(3, 24)), draw(st.integers(1, 16))
    entries = st.integers(-2, 2)
    g = np.array(draw(st.lists(st.lists(entries, min_size=dim, max_size=dim), min_size=n_g, max_size=n_g)), np.float32)
    q = np.array(draw(st.lists(st.lists(entries, min_size=dim, max_size=dim), min_size=n_q, max_size=n_q)), np.float32)
    g[:, 0] += 5  # no zero vectors (cosine)
    q[:, 0] += 5
    gpid = np.array(draw(st.lists(st.integers(-1, 4), min_size=n_g, max_size=n_g)), np.int64)
    gpid[0] = max(gpid[0], 1)  # at least one identity enrolled
    qpid = np.array(draw(st.lists(st.integers(-1, 6), min_size=n_q, max_size=n_q)), np.int64)
    if (qpid == -1).all():
        qpid[0] = 1
    return q, g, qpid, gpid


FPIRS = (0.1, 0.25, 0.5)


@settings(max_examples=120, deadline=None)
@given(galleries(), st.sampled_from(["item", "mean"]), st.sampled_from(["cosine", "euclidean"]), st.integers(1, 9))
def test_identification_equals_the_brute_force_reference(data, template, metric, block_rows):
    q, g, qpid, gpid = data
    result = identify(q, g, qpid, gpid, template=template, metric=metric, fpirs=FPIRS, block_rows=block_rows)
    assert_matches_reference(result, reference(q, g, qpid, gpid, template, metric, FPIRS), metric, gpid)


@settings(max_examples=40, deadline=None)
@given(galleries(), st.sampled_from(["item", "mean"]), st.sampled_from(["cosine", "euclidean"]),
       st.integers(0, 2**32 - 1), st.booleans())
def test_identification_does_not_depend_on_the_kernel(data, template, metric, seed, edge):
    q, g, qpid, gpid = data
    task = identification_task(q, g, qpid, gpid, template=template, metric=metric)
    reference_result = identify(q, g, qpid, gpid, template=template, metric=metric, fpirs=FPIRS)
    scores = score_exhaustive(AnyKernel(task.source, seed, edge), task.templates.identity,
                              task.enrolment.num_identities, task.mate_identity, block_rows=3)
    result = summarise(task, scores, fpirs=FPIRS)
    assert result.per_probe.equals(reference_result.per_probe)
    assert result.to_dict() == reference_result.to_dict()


class TorchPath:
    """The GPU path's blocks (torch, full float32) computed on the CPU."""

    def __init__(self, source):
        self.source = source
        self.num_queries, self.num_gallery, self.metric = source.num_queries, source.num_gallery, source.metric

    def blocks(self, block_rows):
        return self.source.torch_blocks(block_rows, "cpu")


@pytest.mark.parametrize("template", ["item", "mean"])
def test_the_gpu_code_path_gives_the_same_result(template):
    pytest.importorskip("torch")
    q, g, qpid, gpid = float_faces(11)
    task = identification_task(q, g, qpid, gpid, template=template)
    scores = score_exhaustive(TorchPath(task.source), task.templates.identity, task.enrolment.num_identities,
                              task.mate_identity, block_rows=9)
    reference = identify(q, g, qpid, gpid, template=template)
    assert summarise(task, scores).per_probe.equals(reference.per_probe)


def float_faces(seed, n_ids=30, per_id=4, n_probes=80, dim=24, noise=0.6):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_ids + 10, dim))
    gpid = np.repeat(np.arange(1, n_ids + 1), per_id)
    gpid[rng.random(len(gpid)) < 0.1] = 0
    gpid[rng.random(len(gpid)) < 0.05] = -1
    g = (centres[np.maximum(gpid, 0)] + noise * rng.standard_normal((len(gpid), dim))).astype(np.float32)
    qpid = rng.integers(0, n_ids + 10, n_probes)
    q = (centres[qpid] + noise * rng.standard_normal((n_probes, dim))).astype(np.float32)
    g[5] = q[3]  # a probe identical to a gallery item
    return q, g, qpid, gpid


@pytest.mark.parametrize("template", ["item", "mean"])
def test_probe_order_changes_nothing_and_gallery_order_only_ties(template):
    q, g, qpid, gpid = float_faces(1)
    ids = np.array([f"g{i}" for i in range(len(g))], dtype=object)
    pids = np.array([f"p{i}" for i in range(len(q))], dtype=object)
    base = identify(q, g, qpid, gpid, template=template, gallery_ids=ids, probe_ids=pids, block_rows=7)
    perm_q = np.random.default_rng(2).permutation(len(q))
    perm_g = np.random.default_rng(3).permutation(len(g))
    other = identify(q[perm_q], g[perm_g], qpid[perm_q], gpid[perm_g], template=template, gallery_ids=ids[perm_g],
                     probe_ids=pids[perm_q], block_rows=13)
    # float data: no exact ties, so the gallery order cannot matter (except which item stands for a mean template:
    # its identity's first gallery row)
    drop = ["top1_gallery_id"] if template == "mean" else []
    by_probe = lambda r: sorted(r.per_probe.drop(drop).to_pylist(), key=lambda row: row["probe_id"])  # noqa: E731
    assert by_probe(base) == by_probe(other)
    assert base.to_dict() == other.to_dict()


def test_mean_templates_are_the_same_bits_for_any_gallery_order():
    q, g, qpid, gpid = float_faces(4, per_id=9)
    perm = np.random.default_rng(0).permutation(len(g))
    a = identification_task(q, g, qpid, gpid, template="mean")
    b = identification_task(q, g[perm], qpid, gpid[perm], template="mean")
    pid_a = a.enrolment.identity_pid
    pid_b = b.enrolment.identity_pid
    for pid in (p for p in np.unique(pid_a) if p > 0):
        np.testing.assert_array_equal(a.templates.vectors[pid_a == pid], b.templates.vectors[pid_b == pid])


floats32 = st.floats(min_value=-2.0**40, max_value=2.0**40, width=32, allow_nan=False, allow_subnormal=True)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(floats32, min_size=2, max_size=2), min_size=1, max_size=12), st.integers(0, 2**32 - 1))
def test_group_sums_are_the_correctly_rounded_exact_sums(rows, seed):
    x = np.array(rows, np.float32)
    groups = np.random.default_rng(seed).integers(0, 3, len(x))
    got = exact_group_sums(x, groups, 4)
    for k in range(4):
        want = reference_sum(x[groups == k]) if (groups == k).any() else np.zeros(2, np.float32)
        np.testing.assert_array_equal(got[k], want)


def test_group_sums_settle_cancellation_exactly():
    x = np.array([[2.0**30], [1.0], [-(2.0**30)], [2.0**-20]], np.float32)  # float32 sums in order lose the 1
    assert exact_group_sums(x, np.zeros(4, np.int64), 1)[0, 0] == np.float32(1.0 + 2.0**-20)


# ----------------------------------------------------------------------------- a case worked by hand


def test_hand_computed_case():
    """Euclidean, 1-D: identities at 0, 10, 20; the worked numbers of §6."""
    g = np.array([[0.0], [10.0], [20.0]], np.float32)
    gpid = np.array([1, 2, 3])
    q = np.array([[1.0], [12.0], [16.0], [5.0], [30.0], [7.0]], np.float32)
    qpid = np.array([1, 2, 2, 9, 0, -1])  # mated ×3, non-mated ×2 (pid 9 not enrolled, pid 0), junk dropped
    r = identify(q, g, qpid, gpid, metric="euclidean", fpirs=(0.1, 0.5), ranks=(1, 2))
    assert (r.num_probes, r.num_mated, r.num_nonmated, r.num_dropped_probes) == (5, 3, 2, 1)
    table = r.per_probe.to_pydict()
    assert table["mate_rank"] == [1, 1, 2, None, None]  # probe 16: identity 3 (d 4) beats its mate (d 6)
    assert table["top1_identity"] == [1, 2, 3, 1, 3]  # probe 5: identities 1 and 2 tie at 5: the first row wins
    assert table["top1_score"] == [1.0, 2.0, 4.0, 5.0, 10.0]
    assert r.to_dict()["cmc"] == {"1": 2 / 3, "2": 1.0}
    half = r.tpir_at_fpir["5e-1"]  # m = 1: t = 10, accept d < 10
    assert (half.tpir, half.fpir, half.threshold, half.reachable) == (2 / 3, 0.5, 10.0, True)
    tenth = r.tpir_at_fpir["1e-1"]  # m = 0: t = 5; 2 non-mated probes cannot resolve 1e-1
    assert (tenth.tpir, tenth.fpir, tenth.threshold, tenth.reachable) == (2 / 3, 0.0, 5.0, False)
    assert any("1e-1" in w and "unreachable" in w for w in r.warnings)
    np.testing.assert_array_equal(r.det.threshold, [1.0, 2.0, 5.0, 10.0, np.inf])
    np.testing.assert_array_equal(r.det.fpir, [0.0, 0.0, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(r.det.fnir, [1.0, 2 / 3, 1 / 3, 1 / 3, 1 / 3])


def test_cosine_scores_are_similarities_accepted_above_the_threshold():
    g = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    q = np.array([[1.0, 0.1], [0.6, 0.8], [1.0, 1.0]], np.float32)
    r = identify(q, g, np.array([1, 2, 0]), np.array([1, 2]), fpirs=(0.5,))
    top = r.per_probe.column("top1_score").to_pylist()
    assert top[0] == pytest.approx(1 / math.sqrt(1.01), abs=1e-6)
    assert top[1] == pytest.approx(0.8, abs=1e-6)
    point = r.tpir_at_fpir["5e-1"]  # one non-mated probe: m = 0, t = its score cos 45°
    assert point.threshold == pytest.approx(math.sqrt(0.5), abs=1e-6)
    assert (point.tpir, point.fpir) == (1.0, 0.0)  # both mates score above cos 45°


# ----------------------------------------------------------------------------- index candidate lists


def test_candidate_lists_holding_the_whole_gallery_equal_the_exhaustive_result():
    q, g, qpid, gpid = float_faces(5)
    rng = np.random.default_rng(0)
    lists = np.stack([rng.permutation(len(g)) for _ in range(len(q))])  # any order, junk included
    exhaustive = identify(q, g, qpid, gpid)
    listed = identify(q, g, qpid, gpid, candidate_rows=lists)
    assert listed.candidates == f"index top-k (k={len(g)})"
    assert listed.per_probe.equals(exhaustive.per_probe)
    assert listed.to_dict()["tpir_at_fpir"] == exhaustive.to_dict()["tpir_at_fpir"]


def test_short_candidate_lists_keep_the_top_and_count_unlisted_mates_as_misses():
    q, g, qpid, gpid = float_faces(6, noise=1.2)
    exhaustive = identify(q, g, qpid, gpid, metric="euclidean")
    from retrieval.indexes.knn import exact_knn_between

    _, lists = exact_knn_between(q, g, 2, metric="euclidean")
    listed = identify(q, g, qpid, gpid, metric="euclidean", candidate_rows=lists)
    a, b = exhaustive.per_probe.to_pydict(), listed.per_probe.to_pydict()
    keep_top = [gpid[row[0]] != -1 for row in lists]  # lists whose first item is enrolled keep the true top
    for i, ok in enumerate(keep_top):
        if ok:
            assert (a["top1_gallery_id"][i], a["top1_score"][i]) == (b["top1_gallery_id"][i], b["top1_score"][i])
        if b["mate_rank"][i] is not None:
            assert b["mate_rank"][i] <= a["mate_rank"][i] and b["mate_score"][i] == a["mate_score"][i]
    unlisted = sum(m and rank is None for m, rank in zip(b["mated"], b["mate_rank"]))
    assert unlisted > 0 and f"{unlisted} mated probes' mates are not in their top-k" in " ".join(listed.notes)


def test_candidate_lists_need_the_item_template_and_real_rows():
    q, g, qpid, gpid = float_faces(7)
    lists = np.zeros((len(q), 2), np.int64)
    with pytest.raises(EvaluationError, match="item template"):
        identify(q, g, qpid, gpid, template="mean", candidate_rows=lists)
    with pytest.raises(EvaluationError, match="outside"):
        identify(q, g, qpid, gpid, candidate_rows=lists - 1)


# ----------------------------------------------------------------------------- bad input


def test_probes_without_pids_give_candidates_and_a_note():
    q, g, _, gpid = float_faces(8)
    r = identify(q, g, None, gpid)
    d = r.to_dict()
    assert d["cmc"] is None and d["tpir_at_fpir"] is None and d["num_mated"] is None
    assert any("no pid" in note for note in d["notes"])
    assert r.per_probe.column("top1_score").null_count == 0


def test_no_nonmated_probes_gives_null_tpir_with_the_reason():
    q, g, qpid, gpid = float_faces(9)
    enrolled = np.unique(gpid[gpid > 0])
    qpid = enrolled[np.arange(len(qpid)) % len(enrolled)]
    d = identify(q, g, qpid, gpid).to_dict()
    assert d["tpir_at_fpir"] is None and d["num_nonmated"] == 0
    assert any("no non-mated probes" in note for note in d["notes"])


def test_bad_arguments_are_one_line_errors():
    q, g, qpid, gpid = float_faces(10)
    with pytest.raises(EvaluationError, match="FPIR targets"):
        identify(q, g, qpid, gpid, fpirs=(0.0,))
    with pytest.raises(EvaluationError, match="unknown template"):
        identify(q, g, qpid, gpid, template="median")
    with pytest.raises(EvaluationError, match="unknown identification metric"):
        identify(q, g, qpid, gpid, metric="ip")
    with pytest.raises(EvaluationError, match="every gallery item has a junk pid"):
        identify(q, g, qpid, np.full(len(g), -1))
    with pytest.raises(EvaluationError, match=r"gallery pid -3 \(rows 2\)"):
        identify(q, g, qpid, np.where(np.arange(len(g)) == 2, -3, gpid))
    with pytest.raises(EvaluationError, match="CMC ranks"):
        identify(q, g, qpid, gpid, ranks=(0,))


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(1, 30), count=st.integers(1, 12), spread=st.integers(0, 60), seed=st.integers(0, 2**31))
def test_group_sums_on_short_values_whose_sums_sit_on_midpoints(bits, count, spread, seed):
    """Values with few significant bits make exact sums halfway between float32 values (the float64
    sum is exact there and decides it) and, with a wide exponent spread, sums float64 cannot hold."""
    rng = np.random.default_rng(seed)
    mantissa = rng.integers(-(2**bits), 2**bits, (count * 3, 2))
    x = np.ldexp(mantissa.astype(np.float64), rng.integers(-spread, spread + 1, (count * 3, 2)) - bits).astype(np.float32)
    groups = np.repeat(np.arange(3), count)
    got = exact_group_sums(x, groups, 3)
    for k in range(3):
        np.testing.assert_array_equal(got[k], reference_sum(x[groups == k]))
