"""The DuckDB catalogue: views over run folders, `retrieve runs`, `retrieve sql`."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from _catalogue_runs import make_evaluate_run, make_verify_run, snapshot
from retrieval.catalogue import TABLE_COLUMNS, connect
from retrieval.run_schema import VIEW_CONTEXT_COLUMNS, run_context
from retrieval.cli import run
from retrieval.runs import RUN_TABLES, write_run


def _normal(value):
    """Comparable cell values: NaN equals NaN, numpy and Python scalars alike."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float):
        return round(value, 12)
    return value


def _rows(dicts, columns):
    return sorted((tuple(_normal(row.get(c)) for c in columns) for row in dicts), key=repr)


@pytest.fixture()
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "ws"
    make_evaluate_run(ws, "run-a", seed=1, created="2026-01-01T10:00:00+00:00")
    make_evaluate_run(ws, "run-b", seed=2, rerank=True, created="2026-01-02T10:00:00+00:00")
    make_verify_run(ws, "run-v", seed=3)
    return ws


def test_views_return_exactly_the_rows_of_the_run_files(workspace: Path):
    connection = connect(workspace)
    for name in RUN_TABLES:
        for run_dir in sorted(workspace.iterdir()):
            path = run_dir / f"{name}.parquet"
            cursor = connection.execute(f"SELECT * FROM {name} WHERE run_id = ?", [run_dir.name])
            columns = [d[0] for d in cursor.description]
            got = [dict(zip(columns, row)) for row in cursor.fetchall()]
            if not path.exists():
                assert got == [], (name, run_dir.name)
                continue
            expected = pq.read_table(path).to_pylist()
            file_columns = pq.read_schema(path).names
            assert _rows(got, file_columns) == _rows(expected, file_columns), (name, run_dir.name)
            # The run's context (kind, protocol) comes from its run.json, on every row.
            context = run_context(json.loads((run_dir / "run.json").read_text()))
            for column in VIEW_CONTEXT_COLUMNS.get(name, ()):
                assert {row[column] for row in got} == {context[column]}, (name, column)
            # Columns this run lacks but another run has are NULL for it.
            for column in set(columns) - set(file_columns) - {"run_id", *VIEW_CONTEXT_COLUMNS.get(name, ())}:
                assert all(row[column] is None for row in got)
        total = connection.execute(f"SELECT count(*) FROM {name}").fetchone()[0]
        assert total == sum(
            pq.read_metadata(p).num_rows for p in workspace.glob(f"*/{name}.parquet")
        )


def test_train_runs_epochs_view(tmp_path: Path):
    epochs = pa.table({"epoch": [1, 2], "lr": [1e-4, 2e-4], "loss": [2.5, 1.9], "active_fraction": [0.8, 0.6]})
    write_run(tmp_path / "run-t", {"kind": "train", "command": "retrieve train", "parameters": {}}, {"epochs": epochs})
    rows = connect(tmp_path).execute("SELECT run_id, epoch, loss, active_fraction FROM epochs ORDER BY epoch").fetchall()
    assert rows == [("run-t", 1, 2.5, 0.8), ("run-t", 2, 1.9, 0.6)]


def test_documented_columns_come_first_and_extras_are_kept(workspace: Path):
    connection = connect(workspace)
    for name, documented in TABLE_COLUMNS.items():
        columns = [row[0] for row in connection.execute(f"DESCRIBE {name}").fetchall()]
        assert columns[: 1 + len(documented)] == ["run_id"] + [c for c, _ in documented]
    per_query_columns = [row[0] for row in connection.execute("DESCRIBE per_query").fetchall()]
    assert "ap_before_rerank" in per_query_columns


def test_empty_workspace_gives_empty_views_with_the_documented_columns(tmp_path: Path):
    for ws in (tmp_path / "empty", tmp_path / "missing"):
        if ws.name == "empty":
            ws.mkdir()
        connection = connect(ws)
        assert connection.execute("SELECT count(*) FROM runs").fetchone()[0] == 0
        for name, documented in TABLE_COLUMNS.items():
            assert connection.execute(f"SELECT count(*) FROM {name}").fetchone()[0] == 0
            columns = [row[0] for row in connection.execute(f"DESCRIBE {name}").fetchall()]
            assert columns == ["run_id"] + [c for c, _ in documented]


def test_runs_table_has_one_row_per_run_with_final_stage_headlines(workspace: Path):
    connection = connect(workspace)
    rows = connection.execute(
        "SELECT run_id, kind, content_hash, headline_stage, mAP, rank1, accuracy_mean, run_dir FROM runs ORDER BY run_id"
    ).fetchall()
    assert [r[0] for r in rows] == ["run-a", "run-b", "run-v"]
    for run_id, kind, content_hash, stage, m_ap, rank1, accuracy, run_dir in rows:
        record = json.loads((workspace / run_id / "run.json").read_text())
        assert kind == record["kind"] and content_hash == record["inputs"]["content_hash"]
        assert Path(run_dir) == (workspace / run_id).resolve()
        metrics = pq.read_table(workspace / run_id / "metrics.parquet").to_pylist()
        final = "rerank" if any(m["stage"] == "rerank" for m in metrics) else "plain"
        assert stage == final
        by_name = {m["metric"]: m["value"] for m in metrics if m["stage"] == final}
        assert m_ap == by_name.get("mAP") and rank1 == by_name.get("rank-1")
        assert accuracy == by_name.get("accuracy_mean")
    # The re-ranked run's headline is its re-ranked mAP, which differs from its plain one.
    plain = connection.execute(
        "SELECT value FROM metrics WHERE run_id='run-b' AND metric='mAP' AND stage='plain'"
    ).fetchone()[0]
    assert rows[1][4] != plain
    created = connection.execute("SELECT typeof(created) FROM runs LIMIT 1").fetchone()[0]
    assert created.startswith("TIMESTAMP")


def test_embeddings_macro_reads_a_parquet_file(tmp_path: Path):
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), 3)
    path = tmp_path / "emb.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "embedding": embedding, "pid": [1, 1, 2, 2]}), path)
    connection = connect(tmp_path / "no-runs")
    rows = connection.execute(f"SELECT id, pid, embedding FROM embeddings('{path}') ORDER BY id").fetchall()
    assert [r[0] for r in rows] == ["a", "b", "c", "d"]
    assert np.allclose(np.array([r[2] for r in rows], dtype=np.float32), vectors)
    kind = connection.execute(f"SELECT typeof(embedding) FROM embeddings('{path}') LIMIT 1").fetchone()[0]
    # Parquet stores the fixed-size list as a list: DuckDB gives FLOAT[]; CAST(embedding AS FLOAT[3]) gives the array.
    assert kind == "FLOAT[]"
    distance = connection.execute(
        f"SELECT array_distance(CAST(embedding AS FLOAT[3]), [0, 1, 2]::FLOAT[3]) FROM embeddings('{path}') WHERE id = 'b'"
    ).fetchone()[0]
    assert distance == pytest.approx(np.linalg.norm(vectors[1] - vectors[0]))


def test_unreadable_and_newer_runs_are_skipped_with_a_warning(workspace: Path):
    newer = workspace / "run-new"
    newer.mkdir()
    (newer / "run.json").write_text(json.dumps({"format_version": 99, "run_id": "run-new"}))
    (workspace / "not-a-run").mkdir()
    (workspace / ".run-x.tmp").mkdir()
    with pytest.warns(UserWarning, match="newer"):
        connection = connect(workspace)
    ids = [r[0] for r in connection.execute("SELECT run_id FROM runs ORDER BY run_id").fetchall()]
    assert ids == ["run-a", "run-b", "run-v"]


def test_connect_and_queries_never_touch_the_run_files(workspace: Path):
    before = snapshot(workspace)
    connection = connect(workspace)
    for name in ("runs", *RUN_TABLES):
        connection.execute(f"SELECT * FROM {name}").fetchall()
    connection.close()
    assert snapshot(workspace) == before


def test_connect_is_exported_by_the_package(workspace: Path):
    import duckdb

    from retrieval import connect as exported

    assert isinstance(exported(workspace), duckdb.DuckDBPyConnection)


def test_connect_uses_the_environment_workspace(workspace: Path, monkeypatch):
    monkeypatch.setenv("RETRIEVE_WORKSPACE", str(workspace))
    assert connect().execute("SELECT count(*) FROM runs").fetchone()[0] == 3


# ----------------------------------------------------------------------------------------- CLI

WORSE_SQL = """
SELECT a.query_id, a.ap AS ap_a, b.ap AS ap_b, b.ap - a.ap AS delta
FROM per_query a JOIN per_query b USING (query_id)
WHERE a.run_id = 'run-a' AND b.run_id = 'run-b' AND a.valid AND b.valid AND b.ap < a.ap
ORDER BY delta, a.query_id
"""


def test_sql_json_answers_which_queries_got_worse(workspace: Path, capsys):
    code = run(["sql", WORSE_SQL, "--workspace", str(workspace), "--json"])
    out = capsys.readouterr().out
    assert code == 0
    payload = json.loads(out)
    assert payload["columns"] == ["query_id", "ap_a", "ap_b", "delta"]
    a = {r["query_id"]: r for r in pq.read_table(workspace / "run-a" / "per_query.parquet").to_pylist()}
    b = {r["query_id"]: r for r in pq.read_table(workspace / "run-b" / "per_query.parquet").to_pylist()}
    expected = sorted(
        (q for q in a if q in b and a[q]["valid"] and b[q]["valid"] and b[q]["ap"] < a[q]["ap"]),
        key=lambda q: (b[q]["ap"] - a[q]["ap"], q),
    )
    assert [r["query_id"] for r in payload["rows"]] == expected
    assert expected  # the fabricated runs do differ


def test_sql_csv_and_table_output(workspace: Path, capsys):
    assert run(["sql", "SELECT run_id, kind FROM runs ORDER BY run_id", "-w", str(workspace), "--csv"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines() == ["run_id,kind", "run-a,evaluate", "run-b,evaluate", "run-v,verify"]
    assert run(["sql", "SELECT run_id FROM runs ORDER BY run_id", "-w", str(workspace)]) == 0
    captured = capsys.readouterr()
    assert captured.out.split() == ["run_id", "------", "run-a", "run-b", "run-v"]
    assert "(3 rows)" in captured.err


def test_sql_error_is_one_line_and_exit_1(workspace: Path, capsys):
    before = snapshot(workspace)
    code = run(["sql", "SELEC * FROM runs", "-w", str(workspace)])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("retrieve: error: SQL: ") and err.count("\n") == 1
    code = run(["sql", "SELECT nope FROM per_query", "-w", str(workspace)])
    err = capsys.readouterr().err
    assert code == 1 and "nope" in err and err.count("\n") == 1
    assert snapshot(workspace) == before


def test_sql_csv_and_json_together_is_a_usage_error(workspace: Path, capsys):
    assert run(["sql", "SELECT 1", "-w", str(workspace), "--csv", "--json"]) == 2


def test_sql_prompt_reads_statements_until_quit(workspace: Path, capsys, monkeypatch):
    script = "SELECT count(*) AS n\nFROM runs;\nSELECT bad syntax here;\n.quit\nSELECT 'never';\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(script))
    code = run(["sql", "-w", str(workspace), "--csv"])
    captured = capsys.readouterr()
    assert captured.out.splitlines() == ["n", "3"]
    assert "retrieve: error: SQL:" in captured.err
    assert "never" not in captured.out
    assert code == 1  # a statement failed and stdin is not a terminal


def test_sql_prompt_runs_last_statement_at_eof(workspace: Path, capsys, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("SELECT 42 AS answer"))
    assert run(["sql", "-w", str(workspace), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["rows"] == [{"answer": 42}]


def test_runs_command_lists_runs(workspace: Path, capsys):
    assert run(["runs", "--workspace", str(workspace), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert [r["run_id"] for r in payload["runs"]] == ["run-a", "run-b", "run-v"]
    assert payload["runs"][2]["accuracy_mean"] == pytest.approx(0.97)
    assert run(["runs", "--workspace", str(workspace)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["run_id", "created", "kind", "data"]
    assert [line.split()[0] for line in lines[2:]] == ["run-a", "run-b", "run-v"]
    assert "97.00" in lines[4]


def test_runs_command_on_a_missing_workspace_says_so(tmp_path: Path, capsys):
    assert run(["runs", "--workspace", str(tmp_path / "nothing")]) == 0
    captured = capsys.readouterr()
    assert captured.out == "" and "does not exist" in captured.err


def test_runs_command_reports_skipped_runs_on_stderr(workspace: Path, capsys):
    newer = workspace / "run-new"
    newer.mkdir()
    (newer / "run.json").write_text(json.dumps({"format_version": 7, "run_id": "run-new"}))
    assert run(["runs", "--workspace", str(workspace), "--json"]) == 0
    captured = capsys.readouterr()
    payload = json.loads(captured.out)
    assert "run-new" not in [r["run_id"] for r in payload["runs"]]
    assert payload["skipped"] == [str(newer)]
    assert "retrieve: warning: skipped" in captured.err and "newer" in captured.err
