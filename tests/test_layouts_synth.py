"""Data set layouts on generated trees of empty files with real names, and the synthetic generator."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from retrieval.data.errors import DataError
from retrieval.data.layouts import build_manifest
from retrieval.data.store import read_embeddings
from retrieval.data.synth import PRESETS, Preset, generate, plan_rows
from retrieval.data.importers import join_manifest_by_path
from retrieval.data.store import embeddings_table
from retrieval.cli import run


def touch(root, *relative):
    for rel in relative:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_market_layout(tmp_path):
    touch(tmp_path, "bounding_box_train/0002_c1s1_000451_03.jpg", "bounding_box_train/Thumbs.db",
          "query/0001_c1s1_001051_00.jpg", "bounding_box_test/-1_c3s2_000001_01.jpg",
          "bounding_box_test/0000_c6s1_000001_02.jpg", "bounding_box_test/0001_c2s1_000301_01.jpg")
    table = build_manifest("market", tmp_path)
    rows = {r["id"]: r for r in table.to_pylist()}
    assert len(rows) == 5
    assert rows["bounding_box_train/0002_c1s1_000451_03"] | {"path": None} == {
        "id": "bounding_box_train/0002_c1s1_000451_03", "path": None, "pid": 2, "camid": 1, "split": "train"}
    assert rows["query/0001_c1s1_001051_00"]["split"] == "query"
    assert rows["bounding_box_test/-1_c3s2_000001_01"]["pid"] == -1
    assert rows["bounding_box_test/0000_c6s1_000001_02"]["pid"] == 0
    assert rows["bounding_box_test/0001_c2s1_000301_01"]["camid"] == 2
    assert rows["bounding_box_test/0001_c2s1_000301_01"]["split"] == "gallery"


def test_duke_and_veri_layouts(tmp_path):
    duke = tmp_path / "duke"
    touch(duke, "bounding_box_train/0001_c2_f0046182.jpg", "query/0005_c8_f0000001.jpg",
          "bounding_box_test/0005_c7_f0000002.jpg")
    table = build_manifest("duke", duke)
    assert sorted(zip(table.column("pid").to_pylist(), table.column("camid").to_pylist())) == [(1, 2), (5, 7), (5, 8)]
    veri = tmp_path / "veri"
    touch(veri, "image_train/0002_c002_00030600_0.jpg", "image_query/0776_c019_00001000_1.jpg",
          "image_test/0776_c020_00001200_1.jpg")
    rows = {r["split"]: (r["pid"], r["camid"]) for r in build_manifest("veri", veri).to_pylist()}
    assert rows == {"train": (2, 2), "query": (776, 19), "gallery": (776, 20)}


def test_msmt17_layout_from_list_files(tmp_path):
    touch(tmp_path, "train/0000/0000_000_01_0303morning_0015_0.jpg", "test/0000/0000_011_05_0303afternoon_0600_0.jpg")
    (tmp_path / "list_train.txt").write_text("0000/0000_000_01_0303morning_0015_0.jpg 0\n")
    (tmp_path / "list_query.txt").write_text("0000/0000_011_05_0303afternoon_0600_0.jpg 0\n")
    (tmp_path / "list_gallery.txt").write_text("0000/0000_012_15_0303noon_0600_1.jpg 0\n")
    rows = build_manifest("msmt17", tmp_path).to_pylist()
    assert [(r["split"], r["pid"], r["camid"]) for r in rows] == [("train", 0, 1), ("query", 0, 5), ("gallery", 0, 15)]
    assert rows[1]["path"].endswith("test/0000/0000_011_05_0303afternoon_0600_0.jpg")


def test_lfw_layout_ids_match_the_pairs_convention(tmp_path):
    touch(tmp_path, "Aaron_Peirsol/Aaron_Peirsol_0001.jpg", "Aaron_Peirsol/Aaron_Peirsol_0002.jpg",
          "Zico/Zico_0001.jpg")
    rows = build_manifest("lfw", tmp_path).to_pylist()
    assert [(r["id"], r["pid"], r["camid"], r["split"]) for r in rows] == [
        ("Aaron_Peirsol_0001", 1, None, "free"), ("Aaron_Peirsol_0002", 1, None, "free"), ("Zico_0001", 2, None, "free")]


@pytest.mark.parametrize("kind, present, missing", [
    ("market", ["bounding_box_train/0002_c1s1_000451_03.jpg", "query/0001_c1s1_001051_00.jpg"], "'bounding_box_test/'"),
    ("veri", ["image_train/0002_c002_00030600_0.jpg"], "'image_query/'"),
])
def test_incomplete_folder_layout_names_the_missing_folder(tmp_path, kind, present, missing):
    touch(tmp_path, *present)
    with pytest.raises(DataError, match=f"expected folder {missing} is missing"):
        build_manifest(kind, tmp_path)


def test_incomplete_msmt17_layout_names_the_missing_list(tmp_path, capsys):
    touch(tmp_path, "train/x.jpg", "test/y.jpg")
    (tmp_path / "list_train.txt").write_text("")
    (tmp_path / "list_query.txt").write_text("")
    assert run(["layout", str(tmp_path), "--kind", "msmt17", "--out", str(tmp_path / "m.parquet")]) == 1
    assert "expected list file 'list_gallery.txt' is missing" in capsys.readouterr().err
    assert not (tmp_path / "m.parquet").exists()


def test_layout_cli_writes_a_manifest_that_joins_with_vectors_by_path(tmp_path, capsys):
    root = tmp_path / "market"
    touch(root, "bounding_box_train/0002_c1s1_000451_03.jpg", "query/0001_c1s1_001051_00.jpg",
          "bounding_box_test/0001_c2s1_000301_01.jpg")
    out = tmp_path / "manifest.parquet"
    assert run(["layout", str(root), "--kind", "market", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["splits"] == {"gallery": 1, "query": 1, "train": 1}
    manifest = pq.read_table(out)
    paths = manifest.column("path").to_pylist()[::-1]
    vectors = np.eye(3, dtype=np.float32)
    joined = join_manifest_by_path(manifest, embeddings_table(["a", "b", "c"], vectors, paths=paths))
    by_id = {r["id"]: (r["pid"], r["split"]) for r in joined.select(["id", "pid", "split"]).to_pylist()}
    assert by_id == {"a": (1, "gallery"), "b": (1, "query"), "c": (2, "train")}


def test_import_with_layout_join(tmp_path):
    root = tmp_path / "market"
    touch(root, "bounding_box_train/0002_c1s1_000451_03.jpg", "query/0001_c1s1_001051_00.jpg",
          "bounding_box_test/0001_c2s1_000301_01.jpg")
    manifest = build_manifest("market", root)
    np.save(tmp_path / "v.npy", np.eye(3, dtype=np.float32))
    csv_lines = ["path"] + manifest.column("path").to_pylist()
    (tmp_path / "m.csv").write_text("\n".join(csv_lines) + "\n")
    out = tmp_path / "e.parquet"
    assert run(["import", str(tmp_path / "m.csv"), "--vectors", str(tmp_path / "v.npy"), "--out", str(out),
                "--layout", "market", "--layout-root", str(root)]) == 0
    emb = read_embeddings(out)
    assert sorted(emb.split.tolist()) == ["gallery", "query", "train"] and sorted(emb.pid.tolist()) == [1, 1, 2]


# --------------------------------------------------------------------------- synth


def test_synth_small_structure(tmp_path, capsys):
    out = tmp_path / "s.parquet"
    assert run(["synth", "--preset", "small", "--seed", "3", "--out", str(out)]) == 0
    preset = PRESETS["small"]
    emb = read_embeddings(out)
    query, gallery = emb.by_split("query"), emb.by_split("gallery")
    assert len(query) == preset.queries and len(gallery) == preset.gallery and emb.dim == preset.dim
    assert emb.normalized
    assert set(np.unique(query.pid)) <= set(range(1, preset.identities + 1))
    assert set(np.unique(gallery.pid)) == set(range(-1, preset.identities + 1))
    assert (gallery.pid == -1).sum() == round(preset.gallery * preset.junk_fraction)
    assert (gallery.pid == 0).sum() == round(preset.gallery * preset.distractor_fraction)
    assert emb.camid.min() == 1 and emb.camid.max() == preset.cameras
    # every query keeps a valid match after same-camera filtering
    for pid, cam in zip(query.pid, query.camid):
        assert np.any((gallery.pid == pid) & (gallery.camid != cam))


def test_synth_is_deterministic_for_a_seed_and_batching(tmp_path):
    a = generate("small", 5, tmp_path / "a.parquet")
    b = generate("small", 5, tmp_path / "b.parquet")
    c = generate("small", 6, tmp_path / "c.parquet")
    assert read_embeddings(a).content_hash() == read_embeddings(b).content_hash()
    assert read_embeddings(a).content_hash() != read_embeddings(c).content_hash()


def test_synth_streams_in_batches(tmp_path):
    preset = Preset("tiny", 50, 950, 16, 40, 4, junk_fraction=0.1, distractor_fraction=0.1)
    seen = []
    path = generate(preset, 1, tmp_path / "t.parquet", batch_rows=128, progress=lambda s, d, t: seen.append((d, t)))
    assert seen[-1] == (1000, 1000) and len(seen) == 8
    assert pq.ParquetFile(path).metadata.num_row_groups == 8
    plan = plan_rows(preset, 1)
    np.testing.assert_array_equal(read_embeddings(path).pid, plan.pid)


def test_presets_follow_the_performance_table():
    assert (PRESETS["market"].queries, PRESETS["market"].gallery, PRESETS["market"].dim) == (3368, 15913, 2048)
    assert (PRESETS["msmt17"].queries, PRESETS["msmt17"].gallery, PRESETS["msmt17"].cameras) == (11659, 82161, 15)
    assert (PRESETS["veri"].queries, PRESETS["veri"].gallery, PRESETS["veri"].identities) == (1678, 11579, 200)
    assert (PRESETS["million"].gallery, PRESETS["million"].dim, PRESETS["million"].identities) == (1_000_000, 256, 100_000)


def test_the_synth_command_offers_every_preset():
    """The CLI's preset choices are spelled out (no numpy at start-up): they must name every preset."""
    from retrieval.cli.data_commands import PresetName

    assert {p.value for p in PresetName} == set(PRESETS) | {"lfw"}
