"""A folder of Parquet files is one data set: same rows, same checks, one content hash however it is split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from retrieval.data.dataset import count_part_rows, open_dataset, plan_parts, read_part
from retrieval.data.errors import DataError
from retrieval.data.store import iter_embedding_batches, read_embeddings, write_embeddings
from retrieval.data.writer import embeddings_table


def _rows(n: int, dim: int = 8, seed: int = 0, prefix: str = "r"):
    rng = np.random.default_rng(seed)
    return dict(
        ids=[f"{prefix}{i}" for i in range(n)],
        vectors=rng.normal(size=(n, dim)).astype(np.float32),
        pid=rng.integers(0, 5, n),
        camid=rng.integers(0, 3, n),
        split=np.where(np.arange(n) % 4 == 0, "query", "gallery"),
    )


def _split_into_files(folder: Path, rows: dict, cuts: list[int]) -> Path:
    folder.mkdir()
    edges = [0, *cuts, len(rows["ids"])]
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        write_embeddings(folder / f"part-{i:05d}.parquet", rows["ids"][a:b], rows["vectors"][a:b],
                         pid=rows["pid"][a:b], camid=rows["camid"][a:b], split=rows["split"][a:b])
    return folder


@pytest.mark.parametrize("cuts", [[], [1], [5, 6, 30], [17, 18]])
def test_folder_reads_as_the_file_and_hashes_the_same(tmp_path: Path, cuts: list[int]) -> None:
    rows = _rows(40)
    single = tmp_path / "all.parquet"
    write_embeddings(single, rows["ids"], rows["vectors"], pid=rows["pid"], camid=rows["camid"], split=rows["split"])
    folder = _split_into_files(tmp_path / "set", rows, cuts)
    a, b = read_embeddings(single), read_embeddings(folder)
    assert list(a.ids) == list(b.ids)
    assert np.array_equal(a.vectors, b.vectors) and np.array_equal(a.pid, b.pid) and np.array_equal(a.camid, b.camid)
    assert a.content_hash() == b.content_hash() == open_dataset(folder).content_hash()
    assert list(read_embeddings(folder, splits="query").ids) == list(a.by_split("query").ids)
    streamed = list(iter_embedding_batches(folder, batch_rows=7))
    assert [i for batch in streamed for i in batch.ids] == list(a.ids)


def test_files_are_taken_in_name_order_and_hidden_files_skipped(tmp_path: Path) -> None:
    rows = _rows(10)
    folder = _split_into_files(tmp_path / "set", rows, [4])
    (folder / "_SUCCESS").write_text("")
    (folder / ".part-00000.parquet.crc").write_text("")
    dataset = open_dataset(folder)
    assert [f.path.name for f in dataset.files] == ["part-00000.parquet", "part-00001.parquet"]
    assert [f.first_row for f in dataset.files] == [0, 4] and dataset.num_rows == 10


def _one_row_file(path: Path, row_id: str, dim: int) -> None:
    write_embeddings(path, [row_id], np.ones((1, dim), np.float32), pid=[1], camid=[1], split=["gallery"])


def test_a_file_with_another_dimension_is_named(tmp_path: Path) -> None:
    rows = _rows(10)
    folder = _split_into_files(tmp_path / "set", rows, [5])
    _one_row_file(folder / "part-00002.parquet", "x", 4)
    with pytest.raises(DataError, match=r"part-00002.parquet: embedding dimension 4, but part-00000.parquet .* has 8"):
        open_dataset(folder)


def test_a_file_with_other_columns_or_types_is_named(tmp_path: Path) -> None:
    rows = _rows(10)
    folder = _split_into_files(tmp_path / "set", rows, [5])
    table = embeddings_table(["y"], np.ones((1, 8), np.float32), pid=[1], camid=[1], split=["gallery"])
    pq.write_table(table.drop_columns(["camid"]), folder / "part-00003.parquet")
    with pytest.raises(DataError, match=r"part-00003.parquet: its columns differ .* lacks column\(s\) camid"):
        read_embeddings(folder)
    pq.write_table(table.set_column(2, "pid", pa.array(["1"])), folder / "part-00003.parquet")
    with pytest.raises(DataError, match=r"part-00003.parquet: column 'pid' is string, but int64"):
        open_dataset(folder)


def test_duplicate_ids_across_files_and_empty_folders_are_errors(tmp_path: Path) -> None:
    rows = _rows(6)
    folder = _split_into_files(tmp_path / "set", rows, [3])
    _one_row_file(folder / "part-00009.parquet", "r1", 8)
    with pytest.raises(DataError, match=r"duplicated value\(s\) across its files \(first: r1\)"):
        read_embeddings(folder)
    with pytest.raises(DataError, match="already seen in an earlier file"):
        list(iter_embedding_batches(folder))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no Parquet files"):
        open_dataset(tmp_path / "empty")


def test_parts_cover_the_rows_in_order_and_read_alone(tmp_path: Path) -> None:
    rows = _rows(50)
    folder = tmp_path / "set"
    folder.mkdir()
    for i, (a, b) in enumerate([(0, 20), (20, 50)]):  # several row groups per file
        table = embeddings_table(rows["ids"][a:b], rows["vectors"][a:b], pid=rows["pid"][a:b],
                                 camid=rows["camid"][a:b], split=rows["split"][a:b])
        pq.write_table(table, folder / f"p{i}.parquet", row_group_size=6)
    dataset = open_dataset(folder)
    parts = plan_parts(dataset, min_parts=5)
    assert len(parts) >= 5 and all(p.rows <= 10 for p in parts)
    read = [read_part(p) for p in parts]
    assert [i for r in read for i in r.ids] == rows["ids"]
    gallery = [read_part(p, "gallery") for p in parts]
    assert [i for r in gallery for i in r.ids] == [i for i, s in zip(rows["ids"], rows["split"]) if s == "gallery"]
    assert [count_part_rows(p, "gallery") for p in parts] == [len(g) for g in gallery]
