"""One engine behind two doors: the same evaluation through the CLI and the notebook API writes the
same run folder, file by file (only the time, the command line and the timings may differ)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrieval import Gallery, evaluate
from retrieval.cli import run
from retrieval.data.store import read_embeddings
from retrieval.run_schema import VOLATILE_FIELDS

EMB = Path(__file__).parent / "data" / "reid_small" / "embeddings.parquet"


def _record(run_dir: Path) -> dict:
    record = json.loads((run_dir / "run.json").read_text())
    return {key: value for key, value in record.items() if key not in VOLATILE_FIELDS}


def _files(run_dir: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(run_dir.iterdir()) if path.suffix == ".parquet"}


CASES = {
    "plain": ([], {}),
    "rerank": (["--rerank", "--k1", "12", "--k2", "4", "--lambda", "0.25"],
               {"rerank": True, "k1": 12, "k2": 4, "lambda_": 0.25}),
    "no-camera, market AP, junk none, CI": (
        ["--protocol", "no-camera", "--ap", "market", "--junk-pids", "none", "--ci", "0.9", "--seed", "4"],
        {"protocol": "no-camera", "ap_variant": "market", "junk_pids": (), "ci": 0.9, "seed": 4}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_and_gallery_write_the_same_run_folder(tmp_path: Path, monkeypatch, case: str):
    cli_args, api_args = CASES[case]
    monkeypatch.chdir(tmp_path)
    given = str(EMB)
    out = tmp_path / "runs" / "same-name"
    assert run(["evaluate", given, "--out", str(out), "--device", "cpu", "--json", *cli_args]) == 0
    cli_dir = out.rename(tmp_path / "runs" / "cli")

    result = Gallery.from_parquet(given).evaluate("query", device="cpu", **{"protocol": "market", **api_args})
    api_dir = result.save(run_dir=out)

    assert _record(api_dir) == _record(cli_dir)
    assert _files(api_dir) == _files(cli_dir)  # every table, byte for byte
    assert sorted(p.name for p in api_dir.iterdir()) == sorted(p.name for p in cli_dir.iterdir())
    record = _record(api_dir)
    assert record["result"]["rerank"] is (None if "rerank" not in api_args else record["result"]["rerank"])
    assert record["inputs"]["embeddings"] == str(EMB.absolute()) and record["inputs"]["embeddings_as_given"] == given
    assert {"retrieve", "python", "numpy", "pyarrow"} <= set(record["versions"])


def test_the_functional_form_gives_the_same_tables(tmp_path: Path):
    """retrieval.evaluate on Embeddings objects: the same numbers and tables (inputs name the file, no splits)."""
    data = read_embeddings(EMB)
    assert run(["evaluate", str(EMB), "--out", str(tmp_path / "cli"), "--device", "cpu", "--rerank"]) == 0
    api_dir = evaluate(data.by_split("query"), data.by_split("gallery"), protocol="market", device="cpu",
                       rerank=True).save(run_dir=tmp_path / "api")
    assert _files(api_dir) == _files(tmp_path / "cli")
    cli, api = _record(tmp_path / "cli"), _record(api_dir)
    assert api["result"] == cli["result"] | {"run_dir": str(api_dir)}
    assert api["inputs"]["embeddings"] == str(EMB) and api["inputs"]["content_hash"] is None


def test_metric_rows_that_cannot_be_stated_are_left_out_by_both_doors(tmp_path: Path):
    """Top-k mode with short lists: mAP@R is unknown (NaN); neither door writes a NaN metric row."""
    index = tmp_path / "idx"
    assert run(["build-index", str(EMB), "--out", str(index), "--kind", "flat", "--split", "gallery"]) == 0
    assert run(["evaluate", str(EMB), "--index", str(index), "--k", "10", "--out", str(tmp_path / "cli")]) == 0
    from retrieval.runs import read_run_table

    metrics = read_run_table(tmp_path / "cli", "metrics").to_pylist()
    assert "mAP_at_R" not in {row["metric"] for row in metrics}
    data = read_embeddings(EMB)
    hidden = tmp_path / "elsewhere.parquet"  # the index's source not at hand: the gallery is the index's lists
    result = Gallery.from_index(index, embeddings=hidden).evaluate(data.by_split("query"), k=10, protocol="market")
    rows = result.metrics()
    assert all(row["value"] == row["value"] for row in rows) and "mAP_at_R" not in {r["metric"] for r in rows}
    assert result.final.metric == "euclidean (index l2, exact)"


def test_the_notebook_door_has_the_cli_defaults_and_passes_the_device_to_every_stage(monkeypatch):
    from retrieval.errors import RetrieveError
    from retrieval.eval import rerank

    g = Gallery.from_parquet(EMB)
    assert g.evaluate("query").rerank is None  # re-ranking is off unless asked, as in the CLI
    seen = []
    original = rerank.RerankedDistances.__init__

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("device"))
        original(self, *args, **kwargs)

    monkeypatch.setattr(rerank.RerankedDistances, "__init__", spy)
    data = read_embeddings(EMB)
    result = evaluate(data.by_split("query"), data.by_split("gallery"), rerank=True, k1=10, k2=3, device="cpu")
    assert seen == ["cpu"] and result.parameters["compute_device"] == "cpu"
    with pytest.raises(RetrieveError, match="k2 must not exceed k1"):
        g.evaluate("query", rerank=True, k1=3, k2=4)
