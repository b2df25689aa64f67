"""The optional ``parts`` column of the embeddings format (P part features per row, ``retrieve.parts`` = P)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.data.errors import DataError
from retrieval.data.store import iter_embedding_batches, read_embeddings, write_embeddings


@pytest.fixture
def with_parts(tmp_path):
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((10, 6)).astype(np.float32)
    parts = rng.standard_normal((10, 4, 3)).astype(np.float32)
    path = write_embeddings(tmp_path / "p.parquet", [f"r{i}" for i in range(10)], vectors, pid=np.arange(10) // 2,
                            split=["query"] * 3 + ["gallery"] * 7, parts=parts)
    return path, vectors, parts


def test_parts_round_trip_with_metadata(with_parts):
    path, vectors, parts = with_parts
    schema = pq.read_schema(path)
    assert schema.field("parts").type == pa.list_(pa.float32(), 12)
    assert schema.metadata[b"retrieve.parts"] == b"4"
    emb = read_embeddings(path)
    assert emb.num_parts == 4 and emb.parts.dtype == np.float32
    np.testing.assert_array_equal(emb.parts.reshape(10, 4, 3), parts)
    assert "parts" not in emb.extra.column_names
    gallery = emb.by_split("gallery")
    np.testing.assert_array_equal(gallery.parts, parts[3:].reshape(7, 12))
    assert gallery.num_parts == 4
    batches = list(iter_embedding_batches(path, batch_rows=4))
    np.testing.assert_array_equal(np.concatenate([b.parts for b in batches]), parts.reshape(10, 12))


def test_files_without_parts_have_none(tmp_path):
    path = write_embeddings(tmp_path / "e.parquet", ["a", "b"], np.eye(2, dtype=np.float32))
    emb = read_embeddings(path)
    assert emb.parts is None and emb.num_parts == 0
    assert b"retrieve.parts" not in pq.read_schema(path).metadata


def rewrite(path, out, table=None, metadata=None):
    table = table if table is not None else pq.read_table(path)
    meta = dict(table.schema.metadata or {})
    meta.update(metadata or {})
    pq.write_table(table.replace_schema_metadata({k: v for k, v in meta.items() if v is not None}), out)
    return out


def test_parts_without_the_count_metadata_is_refused(with_parts, tmp_path):
    path, _, _ = with_parts
    out = rewrite(path, tmp_path / "bad.parquet", metadata={b"retrieve.parts": None})
    with pytest.raises(DataError, match=r"bad.parquet: column 'parts' needs the file metadata retrieve.parts"):
        read_embeddings(out)


def test_parts_width_must_be_a_multiple_of_the_count(with_parts, tmp_path):
    path, _, _ = with_parts
    out = rewrite(path, tmp_path / "bad.parquet", metadata={b"retrieve.parts": b"5"})
    with pytest.raises(DataError, match=r"12 values per row, not a multiple of retrieve.parts = 5"):
        read_embeddings(out)


def test_parts_is_validated_like_the_embedding(with_parts, tmp_path):
    path, _, parts = with_parts
    table = pq.read_table(path)
    flat = parts.reshape(10, 12).copy()
    flat[7, 2] = np.nan
    column = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1)), 12)
    out = rewrite(path, tmp_path / "nan.parquet", table.set_column(table.column_names.index("parts"), "parts", column))
    with pytest.raises(DataError, match=r"column 'parts' has NaN or Inf in 1 row\(s\) \(first ids: r7\)"):
        read_embeddings(out)
    strings = pa.array([["x"]] * 10, pa.list_(pa.string()))
    out = rewrite(path, tmp_path / "str.parquet", table.set_column(table.column_names.index("parts"), "parts", strings))
    with pytest.raises(DataError, match=r"column 'parts' must hold floats"):
        read_embeddings(out)


def test_write_refuses_parts_of_the_wrong_shape(tmp_path):
    with pytest.raises(DataError, match=r"parts must be an \(n, P, d\) array"):
        write_embeddings(tmp_path / "e.parquet", ["a", "b"], np.eye(2, dtype=np.float32), parts=np.zeros((2, 6), np.float32))
    assert not (tmp_path / "e.parquet").exists()


def test_a_folder_of_files_keeps_the_parts(with_parts, tmp_path):
    path, vectors, parts = with_parts
    folder = tmp_path / "folder"
    folder.mkdir()
    ids = [f"r{i}" for i in range(10)]
    split = ["query"] * 3 + ["gallery"] * 7
    for name, rows in (("a", slice(0, 4)), ("b", slice(4, 10))):
        write_embeddings(folder / f"{name}.parquet", ids[rows], vectors[rows], pid=np.arange(10)[rows] // 2,
                         split=split[rows], parts=parts[rows])
    whole = read_embeddings(folder)
    assert whole.num_parts == 4
    np.testing.assert_array_equal(whole.parts, parts.reshape(10, 12))
    np.testing.assert_array_equal(whole.by_split("gallery").parts, read_embeddings(path).by_split("gallery").parts)


def test_a_folder_whose_files_have_other_part_shapes_is_refused(with_parts, tmp_path):
    _, vectors, parts = with_parts
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_embeddings(folder / "a.parquet", ["a0", "a1"], vectors[:2], parts=parts[:2])  # 4 parts of 3
    write_embeddings(folder / "b.parquet", ["b0", "b1"], vectors[2:4], parts=parts[2:4].reshape(2, 2, 6))  # 2 of 6
    with pytest.raises(DataError, match=r"mixed: its files' 'parts' columns differ"):
        read_embeddings(folder)
