"""On a two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``): one-process results."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from retrieval.distributed.cluster import connect
from retrieval.jobs.evaluate import EvaluateOptions, RerankOptions, evaluate_files
from retrieval.jobs.index import BuildOptions, build
from retrieval.jobs.search import SearchOptions, search
from retrieval.jobs.verify import VerifyOptions, verify
from _ray_cases import assert_same_evaluation, same_search, sample_folder

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def cluster():
    import ray
    from ray.cluster_utils import Cluster

    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    nodes.add_node(num_cpus=1)
    ray.init(address=nodes.address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    nodes.wait_for_nodes()
    yield connect(nodes.address)
    ray.shutdown()
    nodes.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return sample_folder(tmp_path_factory.mktemp("data") / "set")


def test_the_cluster_has_two_nodes(cluster) -> None:
    assert cluster.describe()["nodes"] == 2 and cluster.workers == 2


def test_evaluate_with_and_without_rerank_equals_one_process(cluster, data) -> None:
    options = EvaluateOptions(metric="cosine", rerank=RerankOptions(k1=7, k2=3))
    assert_same_evaluation(evaluate_files(data, None, None, None, options),
                           evaluate_files(data, None, None, None, options, cluster=cluster))


def test_verify_trials_equal_one_process(cluster, data) -> None:
    here, there = verify(data, VerifyOptions()), verify(data, VerifyOptions(), cluster=cluster)
    assert here.result.to_dict() == there.result.to_dict()


def test_sharded_flat_index_equals_one_flat_index(cluster, data, tmp_path) -> None:
    build(data, tmp_path / "one", BuildOptions(metric="ip", device="cpu"), overwrite=False)
    build(data, tmp_path / "four", BuildOptions(metric="ip", device="cpu", shards=4), overwrite=False, cluster=cluster)
    a = search(tmp_path / "one", data, SearchOptions(k=25, device="cpu"))
    b = search(tmp_path / "four", data, SearchOptions(k=25, device="cpu"), cluster=cluster)
    assert same_search(a.found, b.found) and a.rankings.equals(b.rankings)


def test_ray_local_starts_its_own_instance_beside_a_running_cluster(cluster, data, tmp_path) -> None:
    """`--ray local:N` never joins a cluster another process started on this machine (it would
    refuse num_cpus there): it starts its own, and the numbers are one process's."""
    import json
    import subprocess
    import sys

    argv = [sys.executable, "-c", "import sys; from retrieval.cli import main; sys.argv[0] = 'retrieve'; main()",
            "evaluate", str(data), "--metric", "cosine", "--ray", "local:1", "--json", "--out", str(tmp_path / "run")]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    here = evaluate_files(data, None, None, None, EvaluateOptions(metric="cosine"))
    assert json.loads(done.stdout)["mAP"] == here.final.mAP
