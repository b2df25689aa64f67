"""On a real Ray cluster of two nodes on this machine (``ray.cluster_utils.Cluster``, one CPU each):
every job gives the one-process result; faults and bad input.

Ray is in the ``test`` extra. The module starts one cluster for all its tests; its workers inherit
the fault hook's folder from this process's environment (see ``retrieval.distributed.tasks``), so no
runtime environment is needed (one costs each new worker process about a second of CPU). Ray runs
its workers at niceness 15; beside the suite's other processes they would wait for the CPU (a
3-second evaluation took 40 s), so this cluster's workers run at the tests' own priority
(``RAY_worker_niceness=0``). That ``--ray local:N`` starts an instance of its own where another
cluster is reachable is checked by the README's tour (``tests/test_tour.py``).
"""

from __future__ import annotations

import json
import logging
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from retrieval.cli import run
from retrieval.distributed.cluster import connect
from retrieval.distributed.tasks import FAULTS_ENV
from retrieval.jobs.evaluate import EvaluateOptions, IndexOptions, RerankOptions, evaluate_files
from retrieval.jobs.index import BuildOptions, build
from retrieval.jobs.search import SearchOptions, search
from retrieval.jobs.verify import VerifyOptions, verify
from _ray_cases import assert_same_evaluation, assert_same_run_folders, same_search, sample_folder, split_files

# skipped without Ray, which is imported by the cluster fixture (not at collection, in every pytest worker)
pytestmark = [pytest.mark.skipif(find_spec("ray") is None, reason="needs the `ray` extra"), pytest.mark.ray,
              pytest.mark.slow(seconds=45)]


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def cluster(faults):
    import ray
    from ray.cluster_utils import Cluster

    with pytest.MonkeyPatch.context() as env:
        env.setenv(FAULTS_ENV, str(faults))  # the nodes started below, and their workers, inherit these
        env.setenv("RAY_worker_niceness", "0")
        nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
        nodes.add_node(num_cpus=1)
        ray.init(address=nodes.address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
        nodes.wait_for_nodes()
        try:
            yield connect("local:2")  # joins the instance started above (as a notebook's ray.init)
        finally:
            ray.shutdown()
            nodes.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return sample_folder(tmp_path_factory.mktemp("data") / "set")


def test_the_cluster_has_two_nodes(cluster) -> None:
    assert cluster.describe()["nodes"] == 2 and cluster.workers == 2


@pytest.mark.parametrize("options", [
    EvaluateOptions(),
    EvaluateOptions(metric="cosine", protocol="no-camera", junk_pids=(), ap="market"),
    EvaluateOptions(protocol="leave-one-out", keep_top=0, ci=0.9),
    EvaluateOptions(rerank=RerankOptions(k1=8, k2=3)),
    EvaluateOptions(metric="cosine", rerank=RerankOptions(k1=6, k2=2, lambda_=0.5, distance="toolkit",
                                                          exclude_junk=True)),
], ids=["market", "cosine-no-camera", "leave-one-out", "rerank", "rerank-toolkit-exclude-junk"])
def test_evaluate_on_the_cluster_equals_one_process(cluster, data, options) -> None:
    here = evaluate_files(data, None, None, None, options)
    there = evaluate_files(data, None, None, None, options, cluster=cluster)
    assert_same_evaluation(here, there)
    assert there.cluster["cpus"] == 2 and there.cluster["shards"] >= 2


def test_a_gallery_folder_beside_a_queries_file(cluster, data, tmp_path) -> None:
    queries, gallery = split_files(data, tmp_path / "q.parquet", tmp_path / "gallery")
    options = EvaluateOptions(rerank=RerankOptions(k1=5, k2=2))
    assert_same_evaluation(evaluate_files(queries, gallery, None, None, options),
                           evaluate_files(queries, gallery, None, None, options, cluster=cluster))


def test_verify_trials_on_the_cluster_equals_one_process(cluster, data) -> None:
    for options in (VerifyOptions(), VerifyOptions(distance="cosine", protocol="no-camera")):
        here, there = verify(data, options), verify(data, options, cluster=cluster)
        assert here.result.to_dict() == there.result.to_dict()
        assert here.inputs == there.inputs
        for name, table in here.tables().items():
            assert table.equals(there.tables()[name])


def test_sharded_index_built_and_searched_on_the_cluster(cluster, data, faults, tmp_path) -> None:
    """Two shards, one on each node, answer as one flat index, also when a shard actor is
    killed mid-search (Ray restarts it and the search is retried). Each job opens the shards in
    actors of their own (1 to 2 s of CPU each), so the merge for other k and metrics is checked in
    one process by test_sharded_index.py."""
    one = build(data, tmp_path / "one", BuildOptions(device="cpu"), overwrite=False)
    build(data, tmp_path / "two", BuildOptions(device="cpu", shards=2), overwrite=False, cluster=cluster)
    assert one.manifest["content_hash"] == json.loads((tmp_path / "two" / "manifest.json").read_text())["content_hash"]
    marker = faults / "kill-search"
    marker.write_text("")
    a = search(tmp_path / "one", data, SearchOptions(k=25, device="cpu"))
    b = search(tmp_path / "two", data, SearchOptions(k=25, device="cpu"), cluster=cluster)
    assert not marker.exists()  # an actor took the marker and was killed (SIGKILL)
    assert same_search(a.found, b.found) and a.rankings.equals(b.rankings)
    topk = EvaluateOptions(index=IndexOptions(tmp_path / "two", k=30))
    flat = EvaluateOptions(index=IndexOptions(tmp_path / "one", k=30))
    a, b = evaluate_files(data, None, None, None, flat), evaluate_files(data, None, None, None, topk, cluster=cluster)
    assert a.final.to_dict() == b.final.to_dict() and a.final.per_query.equals(b.final.per_query)


def test_workers_killed_mid_run_are_retried_and_the_result_unchanged(cluster, data, faults) -> None:
    """One worker killed in the counting pass of re-ranking and one in the neighbour pass."""
    options = EvaluateOptions(rerank=RerankOptions(k1=5, k2=2))
    expected = evaluate_files(data, None, None, None, options)
    markers = [faults / f"kill-{stage}" for stage in ("count", "neighbours")]
    for marker in markers:
        marker.write_text("")
    got = evaluate_files(data, None, None, None, options, cluster=cluster)
    assert not any(marker.exists() for marker in markers)  # a worker took each marker and was killed (SIGKILL)
    assert_same_evaluation(expected, got)


def test_cli_run_record_names_the_cluster_and_progress_is_one_bar_over_shards(cluster, data, tmp_path) -> None:
    assert run(["evaluate", str(data), "--out", str(tmp_path / "one"), "--json"]) == 0
    assert run(["evaluate", str(data), "--out", str(tmp_path / "ray"), "--json", "--ray", "local:2"]) == 0
    assert_same_run_folders(tmp_path / "one", tmp_path / "ray")
    record = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert record["cluster"]["nodes"] == 2 and record["cluster"]["cpus"] == 2 and record["cluster"]["shards"] >= 2
    assert {"load", "distances_and_rank"} <= set(record["timings"])
    seen: dict[str, list[tuple[int, int]]] = {}
    evaluate_files(data, None, None, None, EvaluateOptions(), cluster=cluster,
                   progress=lambda stage, done, total: seen.setdefault(stage, []).append((done, total)))
    shards = record["cluster"]["shards"]
    assert set(seen) == {f"rank: shards, round {i} of 3" for i in (1, 2, 3)}
    for calls in seen.values():  # one bar per round, advancing shard by shard to its end
        total = calls[0][1]
        assert calls == [(i, total) for i in range(total + 1)] and 1 <= total <= shards


def test_cluster_refusals(cluster, data, tmp_path, capsys) -> None:
    assert run(["evaluate", str(data), "--ray", "local:2", "--cmc-mode", "single-gallery-shot",
                "--out", str(tmp_path / "r")]) == 2
    assert "not available with --ray" in capsys.readouterr().err
    assert run(["verify", str(data), "--pairs", str(tmp_path / "p.txt"), "--ray", "local:2"]) in (1, 2)
    with pytest.raises(Exception, match="split 'nope' is empty|no 'split'"):
        evaluate_files(data, None, None, "nope", EvaluateOptions(), cluster=cluster)
    assert np.isfinite(evaluate_files(data, None, None, None, EvaluateOptions(), cluster=cluster).final.mAP)


def test_notebook_door_on_the_cluster(cluster, data) -> None:
    import retrieval

    here = retrieval.evaluate(data, metric="cosine", rerank=True, k1=6, k2=2)
    there = retrieval.evaluate(str(data), metric="cosine", rerank=True, k1=6, k2=2, ray="local:2")
    assert here.to_dict() == there.to_dict() and here.per_query_table().equals(there.per_query_table())
    with pytest.raises(Exception, match="ray= needs file paths"):
        retrieval.evaluate(np.zeros((2, 3)), np.zeros((2, 3)), [1, 2], [1, 2], ray="local:2")
