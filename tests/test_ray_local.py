"""On a real local Ray cluster (2 CPUs): every job gives the one-process result; faults and bad input.

Ray is in the ``test`` extra; the module starts one cluster for all its tests (a worker fault hook
in its environment, see ``retrieval.distributed.tasks``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retrieval.cli import run
from retrieval.distributed.cluster import connect
from retrieval.jobs.evaluate import EvaluateOptions, IndexOptions, RerankOptions, evaluate_files
from retrieval.jobs.index import BuildOptions, build
from retrieval.jobs.search import SearchOptions, search
from retrieval.jobs.verify import VerifyOptions, verify
from _ray_cases import (assert_same_evaluation, assert_same_run_folders, init_ray, same_search, sample_folder,
                        split_files)

pytest.importorskip("ray")
pytestmark = [pytest.mark.ray, pytest.mark.slow]


@pytest.fixture(scope="module")
def faults(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("faults")


@pytest.fixture(scope="module")
def cluster(faults):
    ray = init_ray(faults, num_cpus=2)
    yield connect("local:2")  # joins the instance started above (as a notebook's ray.init)
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return sample_folder(tmp_path_factory.mktemp("data") / "set")


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


def test_sharded_index_built_and_searched_on_the_cluster(cluster, data, tmp_path) -> None:
    one = build(data, tmp_path / "one", BuildOptions(device="cpu"), overwrite=False)
    build(data, tmp_path / "three", BuildOptions(device="cpu", shards=3), overwrite=False, cluster=cluster)
    for k in (1, 10, 200):
        a = search(tmp_path / "one", data, SearchOptions(k=k, device="cpu"))
        b = search(tmp_path / "three", data, SearchOptions(k=k, device="cpu"), cluster=cluster)
        assert same_search(a.found, b.found) and a.rankings.equals(b.rankings)
    assert one.manifest["content_hash"] == json.loads((tmp_path / "three" / "manifest.json").read_text())["content_hash"]
    topk = EvaluateOptions(index=IndexOptions(tmp_path / "three", k=30))
    flat = EvaluateOptions(index=IndexOptions(tmp_path / "one", k=30))
    a, b = evaluate_files(data, None, None, None, flat), evaluate_files(data, None, None, None, topk, cluster=cluster)
    assert a.final.to_dict() == b.final.to_dict() and a.final.per_query.equals(b.final.per_query)


@pytest.mark.parametrize("stage", ["count", "neighbours"])
def test_a_worker_killed_mid_run_is_retried_and_the_result_unchanged(cluster, data, faults, stage) -> None:
    options = EvaluateOptions(rerank=RerankOptions(k1=5, k2=2))
    expected = evaluate_files(data, None, None, None, options)
    marker = faults / f"kill-{stage}"
    marker.write_text("")
    got = evaluate_files(data, None, None, None, options, cluster=cluster)
    assert not marker.exists()  # a worker took the marker and was killed (SIGKILL)
    assert_same_evaluation(expected, got)


def test_a_shard_actor_killed_mid_search_is_restarted(cluster, data, faults, tmp_path) -> None:
    build(data, tmp_path / "idx", BuildOptions(device="cpu", shards=2), overwrite=False, cluster=cluster)
    expected = search(tmp_path / "idx", data, SearchOptions(k=7, device="cpu"))
    marker = faults / "kill-search"
    marker.write_text("")
    got = search(tmp_path / "idx", data, SearchOptions(k=7, device="cpu"), cluster=cluster)
    assert not marker.exists()
    assert same_search(expected.found, got.found)


def test_cli_run_record_names_the_cluster_and_progress_is_one_bar_over_shards(cluster, data, tmp_path) -> None:
    assert run(["evaluate", str(data), "--out", str(tmp_path / "one"), "--json"]) == 0
    assert run(["evaluate", str(data), "--out", str(tmp_path / "ray"), "--json", "--ray", "local:2"]) == 0
    assert_same_run_folders(tmp_path / "one", tmp_path / "ray")
    record = json.loads((tmp_path / "ray" / "run.json").read_text())
    assert record["cluster"]["nodes"] == 1 and record["cluster"]["cpus"] == 2 and record["cluster"]["shards"] >= 2
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
