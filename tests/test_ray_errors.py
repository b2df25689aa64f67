"""--ray values and failures that never need a running cluster: one clear line, fast."""

from __future__ import annotations

import subprocess
import sys
import time
from importlib.util import find_spec
from pathlib import Path

import pytest

from retrieval.cli import run
from retrieval.data import SAMPLE_EMBEDDINGS
from retrieval.distributed import cluster as cluster_module
from retrieval.distributed.cluster import connect, parse_ray_spec, probe
from retrieval.errors import OptionError, RetrieveError

RETRIEVE = Path(sys.executable).with_name("retrieve")


@pytest.mark.parametrize("text, local, cpus, address", [
    ("local", True, None, None), ("local:3", True, 3, None), ("auto", False, None, "auto"),
    ("10.0.0.5:6379", False, None, "10.0.0.5:6379"), ("ray://head:10001", False, None, "ray://head:10001"),
])
def test_ray_values(text, local, cpus, address) -> None:
    spec = parse_ray_spec(text)
    assert (spec.local, spec.cpus, spec.address) == (local, cpus, address)


@pytest.mark.parametrize("text", ["local:0", "local:x", "", "head", "head:port"])
def test_bad_ray_values_are_usage_errors(text) -> None:
    with pytest.raises(OptionError):
        parse_ray_spec(text)


def test_ray_not_installed_names_the_extra(monkeypatch, tmp_path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    code = run(["evaluate", str(SAMPLE_EMBEDDINGS), "--ray", "local:2", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 1 and len(err.splitlines()) == 1 and 'install retrieve[ray] (pip install "retrieve[ray]")' in err
    assert not (tmp_path / "r").exists()


@pytest.mark.skipif(find_spec("ray") is None, reason="without the ray extra the error names the extra (above)")
def test_an_unreachable_address_fails_in_a_few_seconds_with_one_line(tmp_path) -> None:
    started = time.monotonic()
    done = subprocess.run([str(RETRIEVE), "evaluate", str(SAMPLE_EMBEDDINGS), "--ray", "127.0.0.1:1",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "retrieve: error: cannot reach the Ray cluster at 127.0.0.1:1: Connection refused"]
    assert time.monotonic() - started < 30  # the interpreter's start included; the probe itself is ≤ 3 s


def test_probe_times_out_on_a_silent_address() -> None:
    started = time.monotonic()
    with pytest.raises(RetrieveError, match="cannot reach the Ray cluster at 192.0.2.123:6379"):
        probe("192.0.2.123:6379", timeout=0.5)  # TEST-NET-1: nothing answers
    assert time.monotonic() - started < 5


def test_auto_without_a_cluster_says_so(monkeypatch, tmp_path) -> None:
    ray = pytest.importorskip("ray")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(cluster_module, "CURRENT_CLUSTER_FILE", str(tmp_path / "none"))
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with pytest.raises(RetrieveError, match="no Ray cluster found"):
        connect("auto")
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(RetrieveError, match="cannot reach the Ray cluster at 127.0.0.1:1"):
        connect("auto")
