"""CUHK03-NP (new protocol) layout on generated trees: both variants, the root forms, the recorded defaults."""

from __future__ import annotations

import numpy as np
import pytest

from retrieval.data import schema
from retrieval.data.errors import DataError
from retrieval.data.importers import join_manifest_by_path
from retrieval.data.layouts import build_manifest, layout_defaults
from retrieval.data.store import (
    canonical_table,
    embeddings_from_table,
    embeddings_table,
    file_metadata,
    with_metadata,
    write_parquet_atomically,
)

FILES = ["bounding_box_train/0003_c1_1.png", "bounding_box_train/0003_c2_6.png", "query/0001_c1_2.png",
         "bounding_box_test/0001_c2_7.png", "bounding_box_test/0002_c1_3.png", "query/readme.txt"]


def touch(root, *relative):
    for rel in relative:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


@pytest.fixture()
def release(tmp_path):
    root = tmp_path / "cuhk03-np"
    touch(root, *(f"detected/{f}" for f in FILES), *(f"labeled/{f}" for f in FILES[:4]))
    return root


def test_a_variant_folder_gives_the_market_style_manifest(release):
    table = build_manifest("cuhk03", release / "detected")
    rows = {r["id"]: (r["pid"], r["camid"], r["split"]) for r in table.to_pylist()}
    assert rows == {
        "bounding_box_train/0003_c1_1": (3, 1, "train"), "bounding_box_train/0003_c2_6": (3, 2, "train"),
        "query/0001_c1_2": (1, 1, "query"), "bounding_box_test/0001_c2_7": (1, 2, "gallery"),
        "bounding_box_test/0002_c1_3": (2, 1, "gallery"),
    }
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta == {"retrieve.dataset": "cuhk03-np/detected", "retrieve.cmc_mode": "single-gallery-shot"}
    assert layout_defaults(meta) == {"cmc_mode": "single-gallery-shot"}


def test_the_release_folder_needs_the_variant_when_both_are_there(release):
    with pytest.raises(DataError, match="holds both detected/ and labeled/"):
        build_manifest("cuhk03", release)
    labeled = build_manifest("cuhk03", release, variant="labeled")
    assert labeled.num_rows == 4
    assert labeled.schema.metadata[b"retrieve.dataset"] == b"cuhk03-np/labeled"
    same = build_manifest("cuhk03", release / "labeled")
    assert same.column("id").to_pylist() == labeled.column("id").to_pylist()  # ids relative to the variant


def test_one_variant_present_is_taken(tmp_path):
    touch(tmp_path, *(f"labeled/{f}" for f in FILES))
    assert build_manifest("cuhk03", tmp_path).schema.metadata[b"retrieve.dataset"] == b"cuhk03-np/labeled"


@pytest.mark.parametrize("root, variant, message", [
    ("", "both", "unknown CUHK03 variant 'both'"),
    ("detected", "labeled", "this is the 'detected' folder, but variant 'labeled' was asked for"),
    ("empty", None, "expected 'detected/' or 'labeled/'"),
])
def test_wrong_roots_and_variants_are_named(release, root, variant, message):
    (release / "empty").mkdir()
    with pytest.raises(DataError, match=message):
        build_manifest("cuhk03", release / root, variant=variant)


def test_other_layouts_have_no_variant(tmp_path):
    with pytest.raises(DataError, match="layout 'market' has no variants"):
        build_manifest("market", tmp_path, variant="detected")


def test_a_missing_split_folder_is_named(tmp_path):
    touch(tmp_path, "detected/query/0001_c1_2.png", "detected/bounding_box_test/0001_c2_7.png")
    with pytest.raises(DataError, match="expected folder 'bounding_box_train/' is missing"):
        build_manifest("cuhk03", tmp_path)


def test_the_defaults_reach_the_embeddings_file_through_the_join(release, tmp_path):
    manifest = build_manifest("cuhk03", release / "detected")
    paths = manifest.column("path").to_pylist()
    table = join_manifest_by_path(manifest, embeddings_table([f"x{i}" for i in range(len(paths))],
                                                             np.eye(len(paths), dtype=np.float32), paths=paths))
    emb = embeddings_from_table(table, "e.parquet")
    out = write_parquet_atomically(with_metadata(canonical_table(table, emb), emb.dim, emb.normalized, None),
                                   tmp_path / "e.parquet")
    meta = file_metadata(out)
    assert meta[schema.META_CMC_MODE] == "single-gallery-shot"
    assert layout_defaults(meta) == {"cmc_mode": "single-gallery-shot"}
    market = embeddings_table(["a"], np.eye(1, dtype=np.float32))
    assert layout_defaults(file_metadata(write_parquet_atomically(market, tmp_path / "m.parquet"))) == {}
