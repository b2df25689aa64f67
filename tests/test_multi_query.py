"""Multi-query pooling (Market-1501 gt_query style): groups, mean/max, order independence, evaluation."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.eval.distances import EmbeddingDistances
from retrieval.eval.errors import EvaluationError
from retrieval.eval.evaluate import evaluate_ranking
from retrieval.eval.multi_query import pool_queries

VECTORS = np.array([[1.0, 0.0], [3.0, 2.0], [0.5, 4.0], [2.0, 2.0], [9.0, 9.0], [7.0, 1.0]], np.float32)
PID = np.array([5, 5, 5, 6, -1, -1])
CAMID = np.array([1, 1, 2, 1, 1, 1])
IDS = np.array(["a", "b", "c", "d", "e", "f"], dtype=object)


def test_mean_and_max_pool_over_identity_and_camera():
    mean = pool_queries(VECTORS, PID, CAMID, IDS, mode="mean")
    # a and b share pid 5, camera 1: both get (2, 1); c is alone in camera 2; junk is never pooled
    np.testing.assert_array_equal(mean.vectors, [[2, 1], [2, 1], [0.5, 4], [2, 2], [9, 9], [7, 1]])
    np.testing.assert_array_equal(mean.ids, IDS)
    np.testing.assert_array_equal(mean.group_sizes, [2, 1, 1, 1, 1])
    assert mean.name == "multi-query: mean"
    top = pool_queries(VECTORS, PID, CAMID, IDS, mode="max")
    np.testing.assert_array_equal(top.vectors[:2], [[3, 2], [3, 2]])


def test_one_query_per_group_named_by_its_first_member():
    pooled = pool_queries(VECTORS, PID, CAMID, IDS, mode="mean", per="group")
    assert pooled.ids.tolist() == ["a", "c", "d", "e", "f"]
    assert pooled.pid.tolist() == [5, 5, 6, -1, -1]
    assert pooled.camid.tolist() == [1, 2, 1, 1, 1]
    assert pooled.to_dict()["groups"] == 5


def test_without_cameras_groups_by_identity():
    pooled = pool_queries(VECTORS, PID, None, IDS, mode="max", per="group")
    assert pooled.ids.tolist() == ["a", "d", "e", "f"]
    np.testing.assert_array_equal(pooled.vectors[0], [3, 4])
    assert pooled.to_dict()["grouped_by"] == "pid"


def test_row_order_changes_no_bit():
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((200, 32)).astype(np.float32) * np.float32(1e3)
    vectors[::7] *= np.float32(1e-4)  # magnitudes far apart: a float64 sum in another order would differ
    pid, camid = rng.integers(1, 12, 200), rng.integers(1, 3, 200)
    ids = np.array([f"img{i:04d}" for i in range(200)], dtype=object)
    reference = pool_queries(vectors, pid, camid, ids)
    perm = rng.permutation(200)
    shuffled = pool_queries(vectors[perm], pid[perm], camid[perm], ids[perm])
    np.testing.assert_array_equal(shuffled.vectors, reference.vectors[perm])
    grouped = pool_queries(vectors[perm], pid[perm], camid[perm], ids[perm], per="group")
    np.testing.assert_array_equal(grouped.vectors, pool_queries(vectors, pid, camid, ids, per="group").vectors)


def test_mean_is_the_float64_mean_rounded_once():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((9, 5)).astype(np.float32)
    pooled = pool_queries(vectors, np.full(9, 3), np.full(9, 1), mode="mean", per="group")
    np.testing.assert_array_equal(pooled.vectors[0], vectors.astype(np.float64).mean(axis=0).astype(np.float32))


def test_singleton_groups_evaluate_as_single_queries():
    rng = np.random.default_rng(2)
    gallery = rng.standard_normal((80, 16)).astype(np.float32)
    gpid, gcam = rng.integers(1, 10, 80), rng.integers(1, 4, 80)
    queries = rng.standard_normal((9, 16)).astype(np.float32)
    qpid, qcam = np.arange(1, 10), np.ones(9, np.int64)  # every (pid, camera) once
    pooled = pool_queries(queries, qpid, qcam, mode="mean")
    plain = evaluate_ranking(EmbeddingDistances(queries, gallery), qpid, gpid, qcam, gcam)
    multi = evaluate_ranking(EmbeddingDistances(pooled.vectors, gallery), pooled.pid, gpid, pooled.camid, gcam)
    assert plain.to_dict() == multi.to_dict()


def test_pooling_a_group_changes_its_ranks():
    # two query images of pid 1 in camera 1: one right by its match, one far off; pooled, both sit between
    gallery = np.array([[0.0, 0.0], [10.0, 0.0], [4.0, 0.0]], np.float32)
    gpid, gcam = np.array([1, 2, 3]), np.array([2, 2, 2])
    queries = np.array([[0.5, 0.0], [9.0, 0.0]], np.float32)
    qpid, qcam = np.array([1, 1]), np.array([1, 1])
    single = evaluate_ranking(EmbeddingDistances(queries, gallery), qpid, gpid, qcam, gcam)
    pooled = pool_queries(queries, qpid, qcam, mode="mean")  # both become (4.75, 0): nearest is pid 3
    multi = evaluate_ranking(EmbeddingDistances(pooled.vectors, gallery), pooled.pid, gpid, pooled.camid, gcam)
    assert single.per_query.column("first_match_rank").to_pylist() == [1, 3]
    assert multi.per_query.column("first_match_rank").to_pylist() == [2, 2]


@pytest.mark.parametrize("kwargs, message", [
    (dict(mode="median"), "unknown multi-query pooling 'median'"),
    (dict(per="camera"), "unknown multi-query output 'camera'"),
    (dict(ids=np.array(["a", "a", "b", "c", "d", "e"], dtype=object)), "query ids must be unique: 'a'"),
    (dict(ids=np.array(["a"], dtype=object)), "1 query ids given for 6 queries"),
])
def test_bad_arguments_are_named(kwargs, message):
    with pytest.raises(EvaluationError, match=message):
        pool_queries(VECTORS, PID, CAMID, **kwargs)
    with pytest.raises(EvaluationError, match="query camid has 2 entries"):
        pool_queries(VECTORS, PID, CAMID[:2])
