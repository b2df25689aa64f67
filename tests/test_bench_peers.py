"""The peer-benchmark harness (bench/peers): what its tables rest on, checked without the peers.

* a child's peak RSS is its own (a child that touches 200 MB reports ≥ 200 MB, the parent is not counted);
* a child over the address-space cap fails with its own MemoryError, reported as the row's error;
* metric comparison picks the largest difference, CMC rank by rank;
* a peer's module file loads without running its package's ``__init__``.
"""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

PEERS = Path(__file__).resolve().parents[1] / "bench" / "peers"
sys.path.insert(0, str(PEERS))
try:
    import compare
    import harness
    import peerlib
finally:  # the harness's module names (compare, harness, ...) must not shadow anything for other tests
    sys.path.remove(str(PEERS))


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def test_child_peak_rss_is_the_childs_own():
    import numpy as np

    ballast = np.ones(300 * 2**20 // 8)  # the parent is big: a child must not inherit its RSS in ru_maxrss
    small = harness.run_child(_python("pass"))
    capped = harness.run_child(_python("pass"), mem_cap_bytes=4 << 30)
    big = harness.run_child(_python("""
        import numpy as np
        a = np.ones(200 * 2**20 // 8)  # 200 MiB, every page touched
    """))
    assert small.ok and big.ok and capped.ok
    assert big.peak_rss_mb >= 200
    if harness.GNU_TIME.exists():  # without it the harness forks children itself and says so in its docs
        assert small.peak_rss_mb < 100 and capped.peak_rss_mb < 100
    del ballast
    assert big.wall_s > 0


def test_child_over_the_memory_cap_reports_its_memory_error():
    run = harness.run_child(_python("""
        import numpy as np
        a = np.ones(3 * 2**30 // 8)
    """), mem_cap_bytes=1 << 30)
    assert not run.ok
    assert "MemoryError" in run.error_line()


def test_child_report_and_timeout():
    run = harness.run_child(_python("""
        import json, os
        open(os.environ["BENCH_RESULT"], "w").write(json.dumps({"metrics": {"mAP": 0.5}}))
    """))
    assert run.ok and run.report == {"metrics": {"mAP": 0.5}}
    slow = harness.run_child(_python("import time; time.sleep(30)"), timeout_s=0.5)
    assert slow.timed_out and not slow.ok and slow.wall_s < 10


def test_max_difference_takes_the_worst_metric_cmc_rank_by_rank():
    ours = {"mAP": 0.5, "mINP": 0.2, "cmc": [0.8, 0.9, 0.95]}
    peer = {"mAP": 0.5 + 1e-7, "cmc": [0.8, 0.9 - 3e-7, 0.95]}  # no mINP: not compared
    diff, where = compare.max_difference(ours, peer)
    assert where == "cmc2" and diff == pytest.approx(3e-7)
    # rank-1 given as a scalar by one side (PML's precision_at_1) is compared with the other's CMC[0]
    diff, where = compare.max_difference(ours, {"rank1": 0.7})
    assert where == "rank1" and diff == pytest.approx(0.1)
    assert compare.max_difference(ours, None) == (None, None)


def test_explain_names_ties_and_conventions():
    assert compare.explain("fastreid-cy", 0.0, 5) == "identical"
    text = compare.explain("fastreid-py", 2e-7, 3, "mAP")
    assert text.startswith("agrees to 2.0e-07") and "3 queries" in text and "float32" not in text
    assert "investigate" in compare.explain("other", 1e-3, 0, "mAP")


def test_module_file_skips_the_package_init(tmp_path, monkeypatch):
    package = tmp_path / "fakepeer" / "metrics"
    package.mkdir(parents=True)
    (tmp_path / "fakepeer" / "__init__.py").write_text("raise ImportError('needs torchvision')\n")
    (package / "__init__.py").write_text("raise ImportError('needs cv2')\n")
    (package / "helper.py").write_text("VALUE = 41\n")
    (package / "rank.py").write_text("from .helper import VALUE\ndef evaluate_rank():\n    return VALUE + 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("fakepeer")]:
        monkeypatch.delitem(sys.modules, name)
    rank = peerlib.module_file("fakepeer.metrics.rank")
    assert rank.evaluate_rank() == 42
    assert peerlib.module_file("fakepeer.metrics.helper").VALUE == 41  # the second load reuses the stubs
    with pytest.raises(ImportError):
        peerlib.module_file("notinstalled_peer.metrics.rank")


def test_our_side_of_the_benchmarks_runs_on_the_engine_as_it_is(tmp_path):
    """bench/peers/ours.py calls the library directly: a renamed module must fail here, not in a bench run."""
    sys.path.insert(0, str(PEERS))
    try:
        import ours
    finally:
        sys.path.remove(str(PEERS))
    parquet = ours.generate("small", tmp_path / "small.parquet")
    data = ours.read_split(parquet)
    ranking = ours.ranking_metrics(ours.evaluate_library(data))
    assert 0.0 < ranking["mAP"] <= 1.0
    verification = ours.verification_metrics(ours.verify_library(data, [1e-2]))
    assert 0.5 < verification["roc_auc"] <= 1.0 and 0.0 <= verification["tar_at_far"]["1e-2"] <= 1.0
