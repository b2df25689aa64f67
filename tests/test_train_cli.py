"""`retrieve train` / `retrieve embed` end to end on the digits and on an identity-folders layout."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

torch = pytest.importorskip("torch")

from retrieval.cli import run  # noqa: E402
from retrieval.runs import read_run_record, read_run_table  # noqa: E402

# a short run that still learns: small network, few epochs, a high rate (measured: mAP +5 to +13 points).
SHORT = ["--dataset", "digits", "--loss", "triplet:batch-hard", "--epochs", "4", "--width", "16", "--lr", "3e-3",
         "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def run_json(args, capsys):
    code = run(args + ["--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    code = run(["train", *SHORT, "--eval-every", "4", "--out", str(root / "model"), "--workspace", str(root / "ws"), "--json"])
    assert code == 0
    record = read_run_record(next((root / "ws").iterdir()))
    return root, record


def test_short_training_lowers_loss_and_raises_map(trained):
    root, record = trained
    result = record["result"]
    epochs = read_run_table(result["run_dir"], "epochs").to_pylist()
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert epochs[-1]["loss"] < epochs[0]["loss"]
    assert result["evaluation"]["mAP"] > result["initial_evaluation"]["mAP"]
    assert result["evaluation"]["protocol"] == "no-camera"
    assert result["evaluation"]["num_queries"] + result["evaluation"]["num_gallery"] == 714  # digits 6–9


def test_run_folder_is_a_train_run_with_epoch_statistics(trained):
    root, record = trained
    assert record["kind"] == "train"
    assert record["parameters"]["loss"] == "triplet:batch-hard"
    epochs = read_run_table(record["result"]["run_dir"], "epochs")
    for column in ("loss", "loss_triplet_batch_hard", "active_triplets", "mean_d_ap", "mean_d_an", "lr", "images_per_second"):
        assert column in epochs.column_names
    stats = epochs.to_pylist()[-1]
    assert 0.0 <= stats["active_triplets"] <= 1.0
    assert stats["mean_d_an"] > stats["mean_d_ap"] > 0
    metrics = read_run_table(record["result"]["run_dir"], "metrics").to_pylist()
    assert {m["metric"] for m in metrics} >= {"mAP", "rank-1"}
    model_files = {p.name for p in (root / "model").iterdir()}
    assert {"model.pt", "config.json", "checkpoint.pt"} <= model_files


def test_embed_writes_embeddings_that_reproduce_the_evaluation(trained, tmp_path, capsys):
    from retrieval.data.store import read_embeddings
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.evaluate import evaluate_ranking

    root, record = trained
    out = tmp_path / "digits.parquet"
    summary = run_json(["embed", str(root / "model"), "--dataset", "digits", "--out", str(out), "--device", "cpu"], capsys)
    assert summary["rows"] == 1797 and summary["dim"] == 64 and summary["normalized"] is True
    emb = read_embeddings(out)
    assert len(emb) == 1797 and emb.dim == 64 and emb.normalized
    assert emb.camid is None
    assert set(np.unique(emb.split)) == {"train", "query", "gallery"}
    assert "small-cnn" in emb.metadata.get("retrieve.model", "")
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    q, g = emb.by_split("query"), emb.by_split("gallery")
    assert set(np.unique(q.pid)) == {7, 8, 9, 10}  # digits 6–9 (pid = digit + 1)
    again = evaluate_ranking(EmbeddingDistances(q.vectors, g.vectors, "euclidean"), q.pid, g.pid, protocol="no-camera")
    assert again.mAP == pytest.approx(record["result"]["evaluation"]["mAP"], abs=1e-6)


def test_resume_after_an_interruption_reaches_the_same_weights(tmp_path, capsys, monkeypatch):
    from retrieval.train import trainer

    common = [*SHORT[:-8], "--width", "8", "--lr", "3e-3", "--threads", "1", "--device", "cpu", "--epochs", "3",
              "--eval-every", "2", "--workspace", str(tmp_path / "ws")]
    run_json(["train", *common, "--out", str(tmp_path / "straight")], capsys)

    real_save = trainer.save_epoch

    def save_then_stop(model_dir, model, loss_fn, optimizer, history, *args, **kwargs):
        real_save(model_dir, model, loss_fn, optimizer, history, *args, **kwargs)
        if history[-1]["epoch"] == 2:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C during epoch 3

    monkeypatch.setattr(trainer, "save_epoch", save_then_stop)
    assert run(["train", *common, "--out", str(tmp_path / "split")]) == 130
    monkeypatch.setattr(trainer, "save_epoch", real_save)
    resumed = run_json(["train", *common, "--out", str(tmp_path / "split"), "--resume"], capsys)
    assert resumed["epochs_done"] == 3
    a = torch.load(tmp_path / "straight" / "model.pt")
    b = torch.load(tmp_path / "split" / "model.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-5, atol=1e-6)
    assert read_run_table(resumed["run_dir"], "epochs").column("epoch").to_pylist() == [1, 2, 3]
    assert resumed["evaluation"]["epoch"] == 3 and resumed["initial_evaluation"]["epoch"] == 0
    again = run_json(["train", *common, "--out", str(tmp_path / "split"), "--resume"], capsys)  # nothing left to do
    assert again["epochs_done"] == 3 and again["evaluation"] == resumed["evaluation"]


def make_folders(root, identities=4, images=3):
    from PIL import Image

    rng = np.random.default_rng(0)
    for pid in range(identities):
        folder = root / f"{pid + 1:04d}"
        folder.mkdir(parents=True)
        colour = rng.integers(0, 255, size=3)
        for i in range(images):
            pixels = np.clip(colour + rng.normal(0, 20, size=(20, 10, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img{i}.png")
    (root / "0001" / "notes.txt").write_text("not an image")


def test_folders_layout_trains_and_embeds(tmp_path, capsys):
    make_folders(tmp_path / "people")
    result = run_json(["train", "--layout", "folders", str(tmp_path / "people"), "--out", str(tmp_path / "m"),
                       "--backbone", "small-cnn", "--width", "4", "--image-size", "16x8", "--p", "2", "--k", "2",
                       "--epochs", "1", "--device", "cpu", "--workspace", str(tmp_path / "ws")], capsys)
    assert result["num_classes"] == 4 and result["num_train_images"] == 12
    out = tmp_path / "people.parquet"
    run_json(["embed", str(tmp_path / "m"), "--layout", "folders", str(tmp_path / "people"), "--out", str(out),
              "--feature", "pre-bn", "--device", "cpu"], capsys)
    table = pq.read_table(out)
    assert table.num_rows == 12
    assert sorted(set(table.column("pid").to_pylist())) == [1, 2, 3, 4]
    assert "0001/img0" in table.column("id").to_pylist()


def test_missing_torch_is_one_line_with_the_install_command(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    code = run(["train", "--dataset", "digits", "--out", str(tmp_path / "m")])
    err = capsys.readouterr().err
    assert code == 1
    assert "pip install 'retrieve[train]'" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    "args",
    [
        ["train", "--out", "M"],  # no data source
        ["train", "--dataset", "digits", "--layout", "market", "ROOT", "--out", "M"],
        ["train", "--dataset", "mnist", "--out", "M"],
        ["train", "--dataset", "digits", "--loss", "triplet:hardest", "--out", "M"],
        ["train", "--dataset", "digits", "--image-size", "256by128", "--out", "M"],
        ["train", "--dataset", "digits", "--depth", "50", "--out", "M"],
        ["embed", "M", "--dataset", "digits", "--out", "E", "--feature", "middle"],
    ],
)
def test_usage_errors_exit_2(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert run(args) == 2


def test_user_errors_exit_1_with_one_line(tmp_path, capsys):
    assert run(["train", *SHORT, "--epochs", "1", "--p", "7", "--out", str(tmp_path / "m"), "--workspace", str(tmp_path / "ws")]) == 1
    assert "only 6" in capsys.readouterr().err  # 7 identities per batch, digits 0–5 are 6
    assert run(["train", *SHORT, "--out", str(tmp_path / "none"), "--resume"]) == 1
    assert "no checkpoint" in capsys.readouterr().err
    assert run(["embed", str(tmp_path), "--dataset", "digits", "--out", str(tmp_path / "e.parquet")]) == 1
    assert "not a model folder" in capsys.readouterr().err
    assert not (tmp_path / "e.parquet").exists()


def test_existing_model_needs_resume(trained, capsys):
    root, _ = trained
    assert run(["train", *SHORT, "--out", str(root / "model"), "--workspace", str(root / "ws2")]) == 1
    assert "--resume" in capsys.readouterr().err


def test_resnet_loads_a_state_dict_file_and_rejects_wrong_shapes(tmp_path):
    from retrieval.train.models import ResNet, load_backbone_weights

    source = ResNet(depth=10, width=8)
    torch.save({"fc.weight": torch.zeros(3, 64), **{f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "w.pt")
    target = ResNet(depth=10, width=8)
    report = load_backbone_weights(target, tmp_path / "w.pt")
    assert report["missing"] == [] and report["ignored"] == ["fc.weight"]
    torch.testing.assert_close(target.conv1.weight, source.conv1.weight)
    with pytest.raises(ValueError, match="shape"):
        load_backbone_weights(ResNet(depth=10, width=16), tmp_path / "w.pt")


def test_resnet_feature_shape_and_last_stride_one():
    from retrieval.train.models import BNNeckNet, ResNet

    net = BNNeckNet(ResNet(depth=10, width=8), num_classes=5).eval()
    pre, post, logits = net(torch.randn(2, 3, 64, 32))
    assert pre.shape == post.shape == (2, 64) and logits.shape == (2, 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_training_on_gpu(tmp_path, capsys):
    result = run_json(["train", "--dataset", "digits", "--epochs", "2", "--device", "cuda", "--eval-every", "2",
                       "--out", str(tmp_path / "m"), "--workspace", str(tmp_path / "ws")], capsys)
    assert result["device"] == "cuda"
    assert result["last_epoch"]["images_per_second"] > 0


def make_market(root):
    """A tiny Market-1501 layout: 4 training identities; 2 test identities seen by cameras 1 and 2."""
    from PIL import Image

    rng = np.random.default_rng(1)

    def save(folder, pid, cam, i):
        (root / folder).mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 255, size=(32, 16, 3)).astype(np.uint8)
        Image.fromarray(pixels).save(root / folder / f"{pid:04d}_c{cam}s1_{i:06d}_00.jpg")

    for pid in range(1, 5):
        for i in range(3):
            save("bounding_box_train", pid, 1 + i % 2, i)
    for pid in (10, 11):
        save("query", pid, 1, 0)
        for i in range(2):
            save("bounding_box_test", pid, 2, i + 1)
    save("bounding_box_test", 0, 3, 9)  # a distractor


def test_market_layout_trains_with_camera_protocol_and_embeds_camids(tmp_path, capsys):
    make_market(tmp_path / "market")
    result = run_json(["train", "--layout", "market", str(tmp_path / "market"), "--out", str(tmp_path / "m"),
                       "--backbone", "resnet", "--depth", "10", "--width", "4", "--image-size", "32x16",
                       "--p", "2", "--k", "2", "--epochs", "1", "--eval-every", "1", "--device", "cpu",
                       "--workspace", str(tmp_path / "ws")], capsys)
    assert result["evaluation"]["protocol"] == "market"
    assert result["evaluation"]["num_queries"] == 2 and result["evaluation"]["num_gallery"] == 5
    out = tmp_path / "market.parquet"
    run_json(["embed", str(tmp_path / "m"), "--layout", "market", str(tmp_path / "market"), "--out", str(out),
              "--device", "cpu"], capsys)
    from retrieval.data.store import read_embeddings

    emb = read_embeddings(out)
    assert len(emb) == 12 + 2 + 5 and emb.dim == 32
    assert sorted(set(emb.by_split("query").camid.tolist())) == [1]


def test_augmentations_are_seeded_and_do_what_they_say():
    from retrieval.train.images import Augmentation, pad_and_crop, random_erase, random_flip

    batch = torch.arange(2 * 3 * 8 * 4, dtype=torch.float32).reshape(2, 3, 8, 4) + 1.0  # no zeros
    aug = Augmentation.for_images((8, 4))
    a = aug(batch, torch.Generator().manual_seed(5))
    b = aug(batch, torch.Generator().manual_seed(5))
    torch.testing.assert_close(a, b)
    assert a.shape == batch.shape

    flipped = random_flip(batch.clone(), torch.Generator().manual_seed(0))
    for i in range(2):
        assert torch.equal(flipped[i], batch[i]) or torch.equal(flipped[i], batch[i].flip(-1))

    cropped = pad_and_crop(batch.clone(), 2, torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(batch, (2, 2, 2, 2))
    for i in range(2):  # every crop is a window of the zero-padded image
        windows = [padded[i, :, y:y + 8, x:x + 4] for y in range(5) for x in range(5)]
        assert any(torch.equal(cropped[i], w) for w in windows)

    erased = random_erase(batch.clone(), 1.0, (0.1, 0.4), 0.3, torch.Generator().manual_seed(2))
    for i in range(2):
        zero = (erased[i] == 0).all(0)
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert zero.sum() > 0
        assert zero.sum() == len(rows) * len(cols)  # one rectangle
        assert zero.sum() <= 0.4 * 8 * 4 + 2


def test_folders_layout_with_split_folders(tmp_path):
    from retrieval.train.images import folders_manifest

    for split in ("train", "query", "gallery"):
        make_folders(tmp_path / "root" / split, identities=2, images=1)
    table = folders_manifest(tmp_path / "root")
    assert sorted(set(table.column("split").to_pylist())) == ["gallery", "query", "train"]
    assert table.num_rows == 6 and table.column("camid").null_count == 6
    assert "query/0002/img0" in table.column("id").to_pylist()
