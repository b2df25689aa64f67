"""`retrieve import`: .npy/.npz, MATLAB .mat exports, CSV/TSV manifests, PyTorch .pt."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.io

from retrieval.data.store import read_embeddings
from retrieval.cli import run


def feats(n: int, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def test_npy_with_label_camera_and_name_files(tmp_path, capsys):
    x = feats(5)
    np.save(tmp_path / "f.npy", x)
    np.save(tmp_path / "l.npy", np.array([3, 3, 4, 4, 0]))
    np.save(tmp_path / "c.npy", np.array([1, 2, 1, 2, 1]))
    np.save(tmp_path / "n.npy", np.array(["a", "b", "c", "d", "e"]))
    out = tmp_path / "e.parquet"
    code = run(["import", str(tmp_path / "f.npy"), "--out", str(out), "--labels", str(tmp_path / "l.npy"),
                "--cams", str(tmp_path / "c.npy"), "--names", str(tmp_path / "n.npy"), "--split", "gallery"])
    assert code == 0, capsys.readouterr().err
    emb = read_embeddings(out)
    np.testing.assert_array_equal(emb.vectors, x)
    assert emb.ids.tolist() == ["a", "b", "c", "d", "e"]
    assert emb.pid.tolist() == [3, 3, 4, 4, 0] and emb.camid.tolist() == [1, 2, 1, 2, 1]
    assert set(emb.split) == {"gallery"}


def test_npz_with_chosen_keys_and_float64_note(tmp_path, capsys):
    x = feats(4).astype(np.float64)
    np.savez(tmp_path / "f.npz", feats=x, pids=np.array([1, 1, 2, 2]))
    out = tmp_path / "e.parquet"
    assert run(["import", str(tmp_path / "f.npz"), "--out", str(out), "--features-key", "feats",
                "--labels-key", "pids"]) == 0
    assert "converted to float32" in capsys.readouterr().err
    emb = read_embeddings(out)
    assert emb.vectors.dtype == np.float32 and emb.pid.tolist() == [1, 1, 2, 2]
    assert emb.ids.tolist() == ["row_000000", "row_000001", "row_000002", "row_000003"]


def test_npz_missing_features_key_is_a_clear_error(tmp_path, capsys):
    np.savez(tmp_path / "f.npz", other=feats(2))
    assert run(["import", str(tmp_path / "f.npz"), "--out", str(tmp_path / "e.parquet")]) == 1
    err = capsys.readouterr().err
    assert "no array 'features'" in err and "other" in err and "--features-key" in err
    assert not (tmp_path / "e.parquet").exists()


def test_label_count_mismatch(tmp_path, capsys):
    np.save(tmp_path / "f.npy", feats(4))
    np.save(tmp_path / "l.npy", np.array([1, 2, 3]))
    assert run(["import", str(tmp_path / "f.npy"), "--out", str(tmp_path / "e.parquet"),
                "--labels", str(tmp_path / "l.npy")]) == 1
    assert "'labels' has 3 values for 4 feature rows" in capsys.readouterr().err


def test_mat_export_of_the_reid_baselines(tmp_path):
    q, g = feats(3, seed=1), feats(5, seed=2)
    # The baselines save labels and cameras as 1 × n row vectors.
    scipy.io.savemat(tmp_path / "result.mat", {
        "query_f": q, "query_label": np.array([[1, 2, 3]]), "query_cam": np.array([[1, 1, 2]]),
        "gallery_f": g, "gallery_label": np.array([[1, 2, 3, 0, -1]]), "gallery_cam": np.array([[2, 2, 1, 3, 3]]),
    })
    out = tmp_path / "e.parquet"
    assert run(["import", str(tmp_path / "result.mat"), "--out", str(out)]) == 0
    emb = read_embeddings(out)
    assert emb.split.tolist() == ["query"] * 3 + ["gallery"] * 5
    np.testing.assert_allclose(emb.by_split("gallery").vectors, g)
    assert emb.by_split("gallery").pid.tolist() == [1, 2, 3, 0, -1]
    assert emb.by_split("query").camid.tolist() == [1, 1, 2]
    assert emb.ids[0] == "query_000000" and emb.ids[3] == "gallery_000000"


def test_mat_v73_gets_a_clear_message(tmp_path, capsys):
    # A v7.3 file is HDF5: its first bytes are the MATLAB text header then an HDF5 body.
    path = tmp_path / "v73.mat"
    header = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024 HDF5 schema 1.00 ."
    path.write_bytes(header.ljust(116, b" ") + b"\x00" * 8 + b"\x00\x02IM" + b"\x89HDF\r\n\x1a\n" + b"\x00" * 512)
    assert run(["import", str(path), "--out", str(tmp_path / "e.parquet")]) == 1
    assert "v7.3" in capsys.readouterr().err


def test_csv_manifest_joined_with_vectors(tmp_path):
    x = feats(3)
    np.save(tmp_path / "v.npy", x)
    (tmp_path / "m.csv").write_text("path,pid,camid,split,quality\nq/1.jpg,7,1,query,0.5\ng/2.jpg,7,2,gallery,0.9\n"
                                    "g/3.jpg,8,,gallery,0.1\n")
    out = tmp_path / "e.parquet"
    assert run(["import", str(tmp_path / "m.csv"), "--vectors", str(tmp_path / "v.npy"), "--out", str(out)]) == 0
    emb = read_embeddings(out)
    assert emb.ids.tolist() == ["q/1.jpg", "g/2.jpg", "g/3.jpg"] and emb.path[1] == "g/2.jpg"
    assert emb.camid_known.tolist() == [True, True, False]
    assert emb.extra.column("quality").to_pylist() == ["0.5", "0.9", "0.1"]


def test_tsv_manifest_row_count_and_bad_integer(tmp_path, capsys):
    np.save(tmp_path / "v.npy", feats(2))
    (tmp_path / "m.tsv").write_text("id\tpid\na\t1\nb\tx\n")
    assert run(["import", str(tmp_path / "m.tsv"), "--vectors", str(tmp_path / "v.npy"),
                "--out", str(tmp_path / "e.parquet")]) == 1
    assert "line 3: column 'pid' must be an integer, got 'x'" in capsys.readouterr().err
    (tmp_path / "m.tsv").write_text("id\tpid\na\t1\n")
    assert run(["import", str(tmp_path / "m.tsv"), "--vectors", str(tmp_path / "v.npy"),
                "--out", str(tmp_path / "e.parquet")]) == 1
    assert "manifest has 1 rows but" in capsys.readouterr().err


def test_manifest_needs_vectors_option(tmp_path):
    (tmp_path / "m.csv").write_text("id\na\n")
    assert run(["import", str(tmp_path / "m.csv"), "--out", str(tmp_path / "e.parquet")]) == 2


def test_torch_dict_of_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    x = feats(4)
    torch.save({"features": torch.from_numpy(x), "labels": torch.tensor([1, 1, 2, 2]),
                "cams": torch.tensor([1, 2, 1, 2])}, tmp_path / "f.pt")
    out = tmp_path / "e.parquet"
    assert run(["import", str(tmp_path / "f.pt"), "--out", str(out), "--split", "query"]) == 0
    emb = read_embeddings(out)
    np.testing.assert_array_equal(emb.vectors, x)
    assert emb.pid.tolist() == [1, 1, 2, 2] and emb.camid.tolist() == [1, 2, 1, 2]


def test_unknown_input_type(tmp_path, capsys):
    (tmp_path / "f.txt").write_text("1 2 3")
    assert run(["import", str(tmp_path / "f.txt"), "--out", str(tmp_path / "e.parquet")]) == 1
    assert "unknown input type '.txt'" in capsys.readouterr().err
