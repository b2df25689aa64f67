"""The embeddings Parquet format: round trips, content hash, streaming, and every validation error."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from retrieval.data.errors import DataError
from retrieval.data.store import (
    ContentHasher,
    iter_embedding_batches,
    read_embeddings,
    write_embeddings,
)
from retrieval.cli import run


def unit_rows(n: int, d: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def sample(tmp_path):
    vectors = unit_rows(12, 8)
    path = write_embeddings(
        tmp_path / "e.parquet",
        ids=[f"item{i}" for i in range(12)],
        vectors=vectors,
        pid=np.arange(12) // 3,
        camid=np.arange(12) % 2 + 1,
        split=["query"] * 4 + ["gallery"] * 8,
        paths=[f"img/{i}.jpg" for i in range(12)],
        extra={"score": np.arange(12, dtype=np.float64)},
        model="unit-test-model",
    )
    return path, vectors


def write_raw(path, columns: dict, schema: pa.Schema | None = None):
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def fixed(vectors: np.ndarray, value_type=pa.float32()) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), type=value_type), vectors.shape[1])


# --------------------------------------------------------------------------- round trips


def test_round_trip_keeps_every_column_and_metadata(sample):
    path, vectors = sample
    emb = read_embeddings(path)
    assert emb.vectors.dtype == np.float32 and emb.vectors.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(emb.vectors, vectors)
    assert emb.ids.tolist() == [f"item{i}" for i in range(12)]
    assert emb.pid.tolist() == (np.arange(12) // 3).tolist()
    assert emb.camid.tolist() == (np.arange(12) % 2 + 1).tolist()
    assert emb.path[3] == "img/3.jpg"
    assert emb.extra.column_names == ["score"]
    assert emb.metadata["retrieve.dim"] == "8"
    assert emb.metadata["retrieve.normalized"] == "true"
    assert emb.metadata["retrieve.model"] == "unit-test-model"
    assert emb.metadata["retrieve.format_version"] == "1"
    assert emb.normalized and emb.dim == 8 and len(emb) == 12


def test_schema_types_on_disk(sample):
    path, _ = sample
    arrow_schema = pq.read_schema(path)
    assert arrow_schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert arrow_schema.field("pid").type == pa.int64()
    assert arrow_schema.field("camid").type == pa.int32()


def test_duckdb_reads_the_file_and_sees_fixed_size_floats(sample):
    path, vectors = sample
    con = duckdb.connect()
    # DuckDB's Parquet reader returns FLOAT[] (it drops the fixed size); through Arrow it sees FLOAT[8].
    con.register("emb", ds.dataset(path))
    (kind,) = con.execute("SELECT DISTINCT typeof(embedding) FROM emb").fetchone()
    assert kind == "FLOAT[8]"
    (first,) = con.execute("SELECT embedding FROM emb WHERE id = 'item0'").fetchone()
    np.testing.assert_allclose(first, vectors[0])
    (rows,) = con.execute(f"SELECT count(*) FROM read_parquet('{path}') WHERE len(embedding) = 8").fetchone()
    assert rows == 12


def test_select_splits_and_columns(sample):
    path, _ = sample
    query = read_embeddings(path, splits="query")
    assert query.ids.tolist() == ["item0", "item1", "item2", "item3"]
    assert set(read_embeddings(path, splits=["query", "gallery"]).split) == {"query", "gallery"}
    assert read_embeddings(path, columns=[]).extra.num_columns == 0
    emb = read_embeddings(path)
    assert emb.by_split("gallery").ids[0] == "item4"
    picked = emb.select(np.array([5, 1]))
    assert picked.ids.tolist() == ["item5", "item1"] and picked.extra.column("score").to_pylist() == [5.0, 1.0]


def test_content_hash_is_stable_across_row_groups_and_batches(tmp_path, sample):
    path, vectors = sample
    emb = read_embeddings(path)
    other = write_embeddings(tmp_path / "small_groups.parquet", emb.ids, emb.vectors, pid=emb.pid, row_group_rows=5)
    assert pq.ParquetFile(other).num_row_groups == 3
    assert read_embeddings(other).content_hash() == emb.content_hash()
    hasher = ContentHasher()
    for batch in iter_embedding_batches(other, batch_rows=4):
        hasher.update(batch.ids, batch.vectors)
    assert hasher.hexdigest() == emb.content_hash()
    changed = emb.vectors.copy()
    changed[7, 3] += 1e-6
    assert read_embeddings(
        write_embeddings(tmp_path / "changed.parquet", emb.ids, changed)
    ).content_hash() != emb.content_hash()


def test_streaming_reads_small_row_groups_in_order(tmp_path):
    vectors = unit_rows(1000, 4, seed=1)
    path = write_embeddings(tmp_path / "big.parquet", [f"r{i}" for i in range(1000)], vectors,
                            split=["gallery"] * 1000, row_group_rows=64)
    batches = list(iter_embedding_batches(path, batch_rows=100))
    assert all(len(b) <= 100 for b in batches)
    np.testing.assert_array_equal(np.concatenate([b.vectors for b in batches]), vectors)


def test_float64_and_float16_are_converted_with_a_note(tmp_path):
    vectors = unit_rows(3, 4)
    for value_type in (pa.float64(), pa.float16()):
        path = write_raw(tmp_path / f"{value_type}.parquet",
                         {"id": ["a", "b", "c"], "embedding": fixed(vectors.astype(value_type.to_pandas_dtype()), value_type)})
        emb = read_embeddings(path)
        assert emb.vectors.dtype == np.float32
        assert any("converted to float32" in n for n in emb.notes)
        np.testing.assert_allclose(emb.vectors, vectors, atol=1e-3)


def test_variable_length_lists_of_one_length_are_read(tmp_path):
    path = write_raw(tmp_path / "v.parquet", {"id": ["a", "b"], "embedding": [[1.0, 0.0], [0.0, 1.0]]})
    emb = read_embeddings(path)
    assert emb.dim == 2 and any("variable-length" in n for n in emb.notes)


# --------------------------------------------------------------------------- validation errors


@pytest.mark.parametrize(
    "columns, message",
    [
        ({"embedding": [[1.0, 0.0]]}, "missing required column 'id'"),
        ({"id": ["a"]}, "missing required column 'embedding'"),
        ({"id": ["a", "b", "c"], "embedding": [[1.0, 0.0], [1.0], [0.0, 1.0]]}, "mixed dimensions [1, 2]; 1 row(s) differ from 2 (first ids: b)"),
        ({"id": ["a", "b"], "embedding": [[1, 0], [0, 1]]}, "must hold floats, got list of int64"),
        ({"id": ["a", "b"], "embedding": ["x", "y"]}, "must be a list of floats"),
        ({"id": ["a", "b", "c"], "embedding": [[1.0, float("nan")], [1.0, 0.0], [float("inf"), 0.0]]},
         "NaN or Inf in 2 row(s) (first ids: a, c)"),
        ({"id": ["a", "b", "a", "b", "c"], "embedding": [[1.0]] * 5}, "2 duplicated value(s) (first: a, b)"),
        ({"id": ["a"], "embedding": [[1.0]], "pid": [1.5]}, "column 'pid' must hold integers, got double"),
        ({"id": ["a"], "embedding": [[1.0]], "split": ["test"]}, "column 'split' has unknown value(s) 'test'"),
        ({"id": ["a", None], "embedding": [[1.0], [2.0]]}, "column 'id' has 1 null value(s)"),
    ],
)
def test_validation_errors_name_the_problem(tmp_path, columns, message):
    path = write_raw(tmp_path / "bad.parquet", columns)
    with pytest.raises(DataError) as caught:
        read_embeddings(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)


def test_empty_file_and_empty_split(tmp_path, sample):
    empty = write_raw(tmp_path / "empty.parquet", {"id": pa.array([], pa.string()),
                                                   "embedding": pa.array([], pa.list_(pa.float32(), 2))})
    with pytest.raises(DataError, match="has no rows"):
        read_embeddings(empty)
    path, _ = sample
    with pytest.raises(DataError, match=r"split 'train' is empty \(splits present: gallery, query\)"):
        read_embeddings(path, splits="train")


def test_not_parquet(tmp_path):
    path = tmp_path / "notes.parquet"
    path.write_text("hello")
    with pytest.raises(DataError, match="not a Parquet file"):
        read_embeddings(path)


def test_streaming_finds_duplicates_across_batches(tmp_path):
    path = write_raw(tmp_path / "dup.parquet", {"id": ["a", "b", "c", "a"], "embedding": [[1.0]] * 4})
    with pytest.raises(DataError, match="duplicated value"):
        list(iter_embedding_batches(path, batch_rows=2))


def test_a_bad_write_leaves_no_file(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(DataError, match="NaN"):
        write_embeddings(target, ["a"], np.array([[np.nan, 1.0]], dtype=np.float32))
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- through the CLI


@pytest.mark.parametrize(
    "columns, fragment",
    [
        ({"embedding": [[1.0, 0.0]]}, "missing required column 'id'"),
        ({"id": ["a", "b"], "embedding": [[1.0, float("nan")], [1.0, 0.0]]}, "NaN or Inf in 1 row(s) (first ids: a)"),
        ({"id": ["a", "a"], "embedding": [[1.0], [1.0]]}, "duplicated value(s) (first: a)"),
        ({"id": ["a"], "embedding": [[1.0]], "pid": ["x"]}, "column 'pid' must hold integers"),
        ({"id": ["a", "b"], "embedding": [[1.0], [1.0, 2.0]]}, "mixed dimensions"),
    ],
)
def test_info_reports_a_broken_file_in_one_line(tmp_path, capsys, columns, fragment):
    path = write_raw(tmp_path / "bad.parquet", columns)
    assert run(["info", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("retrieve: error: ") and err.count("\n") == 1
    assert fragment in err and str(path) in err


def test_info_json_describes_the_file(capsys, sample):
    path, _ = sample
    assert run(["info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["rows"] == 12 and info["dim"] == 8 and info["splits"] == {"gallery": 8, "query": 4}
    assert info["identities"] == 3 and info["cameras"] == 2 and info["normalized"] is True
    assert info["content_hash"] == read_embeddings(path).content_hash()


def test_info_on_a_missing_file(capsys, tmp_path):
    assert run(["info", str(tmp_path / "nope.parquet")]) == 1
    assert "no such file" in capsys.readouterr().err


def test_version_and_usage_exit_codes(capsys):
    assert run(["--version"]) == 0
    assert "retrieve 0.1.0" in capsys.readouterr().out
    assert run(["info"]) == 2
    assert run(["no-such-command"]) == 2
