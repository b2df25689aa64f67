"""Shared by the Ray tests: data sets split into files, and "the same as one process" checks.

The cluster runs must give exactly what one process gives: metrics, per-query tables, rankings,
run inputs; verification summaries; index answers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from retrieval.data import SAMPLE_EMBEDDINGS
from retrieval.data.store import read_embeddings, write_embeddings


def sample_folder(folder: Path, cuts=(700, 701, 1600)) -> Path:
    """The bundled sample (300 queries, 2,000 gallery, junk and distractors) as files of a folder,
    with a duplicated vector in two files (an exact tie across shards)."""
    emb = read_embeddings(SAMPLE_EMBEDDINGS)
    vectors = emb.vectors.copy()
    vectors[1800] = vectors[500]
    folder.mkdir(parents=True)
    edges = [0, *cuts, len(emb)]
    for i, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        write_embeddings(folder / f"part-{i:05d}.parquet", emb.ids[a:b], vectors[a:b], pid=emb.pid[a:b],
                         camid=emb.camid[a:b], split=emb.split[a:b])
    return folder


def split_files(folder: Path, queries_file: Path, gallery_folder: Path) -> tuple[Path, Path]:
    """The folder's queries as one file and its gallery as a folder of two files."""
    emb = read_embeddings(folder)
    q, g = emb.by_split("query"), emb.by_split("gallery")
    write_embeddings(queries_file, q.ids, q.vectors, pid=q.pid, camid=q.camid, split=q.split)
    gallery_folder.mkdir()
    for i, (a, b) in enumerate([(0, 1200), (1200, len(g))]):
        write_embeddings(gallery_folder / f"g{i}.parquet", g.ids[a:b], g.vectors[a:b], pid=g.pid[a:b],
                         camid=g.camid[a:b])
    return queries_file, gallery_folder


def assert_same_evaluation(a, b) -> None:
    assert a.summary() == b.summary()
    assert a.inputs == b.inputs
    assert a.parameters() == b.parameters()
    for name, table in a.tables().items():
        assert table.equals(b.tables()[name]), name


def assert_same_run_folders(a: Path, b: Path, tables=("metrics", "per_query", "rankings", "curves")) -> None:
    import json

    ra, rb = json.loads((a / "run.json").read_text()), json.loads((b / "run.json").read_text())
    for key in ("kind", "parameters", "inputs"):
        assert ra[key] == rb[key], key
    assert {k: v for k, v in ra["result"].items() if k != "run_dir"} == \
        {k: v for k, v in rb["result"].items() if k != "run_dir"}
    for name in tables:
        assert pq.read_table(a / f"{name}.parquet").equals(pq.read_table(b / f"{name}.parquet")), name


def same_search(a, b) -> bool:
    return np.array_equal(a.rows, b.rows) and np.array_equal(a.distances, b.distances)
