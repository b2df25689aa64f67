"""`retrieve train` / `retrieve embed` end to end on the digits and on an identity-folders layout."""

from __future__ import annotations

import json
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from _gpu import requires_cuda
from _torch import imported_when_run, requires_torch

from retrieval.cli import run
from retrieval.runs import read_run_record, read_run_table

pytestmark = [requires_torch, pytest.mark.slow(seconds=15)]  # trains models
torch = None  # set by `imports`
imports = imported_when_run(globals(), torch="torch")

# a short run that still learns: small network, few epochs, a high rate (measured: mAP +5 to +13 points).
SHORT = ["--dataset", "digits", "--loss", "triplet:batch-hard", "--epochs", "4", "--width", "16", "--lr", "3e-3",
         "--mutual", "1", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module", autouse=True)
def restore_threads(imports):
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
    config = json.loads((root / "model" / "config.json").read_text())
    assert config["feature"] == "body" and config["model"]["pool"] == "avg" and config["model"]["head"] == "none"
    body_dim = 4 * 16 * 4 * 4  # width 16: 64 channels on the 4×4 map
    assert config["feat_dims"]["body"] == body_dim
    assert summary["rows"] == 1797 and summary["dim"] == body_dim and summary["normalized"] is True
    assert summary["feature"] == "body" and summary["parts"] == 0
    emb = read_embeddings(out)
    assert len(emb) == 1797 and emb.dim == body_dim and emb.normalized
    assert emb.camid is None and emb.parts is None
    assert set(np.unique(emb.split)) == {"train", "query", "gallery"}
    model_label = emb.metadata.get("retrieve.model", "")
    assert "small-cnn-w16" in model_label and "pool=avg" in model_label and model_label.endswith("[body]")
    # the digits as PNG files beside the embeddings; the path column points at them
    from PIL import Image

    assert emb.path[0] == "digits-images/digit-0000.png"
    images = sorted((tmp_path / "digits-images").iterdir())
    assert len(images) == 1797
    with Image.open(tmp_path / emb.path[5]) as picture:
        assert picture.size == (48, 48)
        from sklearn.datasets import load_digits

        ink = load_digits().images[5] / 16.0  # dark ink on white paper, each pixel a 6×6 block
        np.testing.assert_array_equal(np.asarray(picture)[::6, ::6], np.round(255 * (1 - ink)).astype(np.uint8))
    np.testing.assert_allclose(np.linalg.norm(emb.vectors, axis=1), 1.0, atol=1e-5)
    q, g = emb.by_split("query"), emb.by_split("gallery")
    assert set(np.unique(q.pid)) == {7, 8, 9, 10}  # digits 6–9 (pid = digit + 1)
    again = evaluate_ranking(EmbeddingDistances(q.vectors, g.vectors, "euclidean"), q.pid, g.pid, protocol="no-camera")
    assert again.mAP == pytest.approx(record["result"]["evaluation"]["mAP"], abs=1e-6)


def test_resume_after_an_interruption_reaches_the_same_weights(tmp_path, capsys, monkeypatch):
    from retrieval.train import trainer

    common = ["--dataset", "digits", "--loss", "triplet:batch-hard", "--mutual", "1", "--width", "8", "--lr", "3e-3",
              "--threads", "1", "--device", "cpu", "--epochs", "3",
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
    from retrieval.train.models import ResNet
    from retrieval.train.network import EmbeddingNet

    net = EmbeddingNet(ResNet(depth=10, width=8), num_classes=5, image_size=(64, 32)).eval()
    out = net(torch.randn(2, 3, 64, 32))
    # stem /4, layer2 /2, layer3 /2, layer4 stride 1: a 4×2 map of 64 channels
    assert out.pre.shape == out.post.shape == out.pooled.shape == (2, 64) and out.logits.shape == (2, 5)
    assert out.body.shape == (2, 64 * 4 * 2)


@requires_cuda
def test_training_on_gpu_in_mixed_precision_and_resuming(tmp_path, capsys, monkeypatch):
    from retrieval.train import step

    seen = []
    real_autocast = step.autocast

    def spy(device):
        context = real_autocast(device)
        seen.append((device.type, context.fast_dtype, context._enabled))
        return context

    monkeypatch.setattr(step, "autocast", spy)
    common = ["--dataset", "digits", "--epochs", "2", "--device", "cuda", "--eval-every", "2", "--mutual", "2",
              "--parts", "4", "--loss", "softmax+triplet+aligned", "--out", str(tmp_path / "m"),
              "--workspace", str(tmp_path / "ws")]
    result = run_json(["train", *common], capsys)
    assert result["device"] == "cuda"
    assert ("cuda", torch.float16, True) in seen
    assert result["last_epoch"]["images_per_second"] > 0 and np.isfinite(result["last_epoch"]["loss"])
    assert result["evaluation"]["mAP"] > 0.5
    state = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=True)
    assert state["scaler"] is not None and state["scaler"]["scale"] > 0
    again = run_json(["train", *common[:3], "3", *common[4:], "--resume"], capsys)
    assert again["epochs_done"] == 3
    out = tmp_path / "d.parquet"
    summary = run_json(["embed", str(tmp_path / "m"), "--dataset", "digits", "--out", str(out), "--device", "cuda"], capsys)
    assert summary["device"] == "cuda" and summary["parts"] == 4


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


TINY = ["--dataset", "digits", "--epochs", "2", "--width", "4", "--mutual", "1", "--threads", "1", "--device", "cpu"]


def test_mutual_peers_with_aligned_parts_train_and_embed_each_peer_or_both(tmp_path, capsys):
    from retrieval.data.store import read_embeddings
    from retrieval.train.digits import load_digits_set

    result = run_json(["train", "--dataset", "digits", "--epochs", "2", "--width", "4", "--threads", "1", "--device", "cpu",
                       "--seed", "5", "--mutual", "2", "--parts", "4", "--part-dim", "8", "--feature", "pre-bn",
                       "--loss", "softmax+triplet+aligned", "--eval-every", "2", "--out", str(tmp_path / "m"),
                       "--workspace", str(tmp_path / "ws")], capsys)
    assert result["peers"] == 2 and result["parts"] == 4
    epochs = read_run_table(result["run_dir"], "epochs")
    for column in ("loss_aligned", "loss_mutual_kl", "loss_mutual_metric", "loss_softmax", "loss_triplet_batch_hard"):
        assert column in epochs.column_names and all(np.isfinite(epochs.column(column).to_pylist()))
    dims = {}
    for peer in ("1", "2", "all"):
        out = tmp_path / f"p{peer}.parquet"
        summary = run_json(["embed", str(tmp_path / "m"), "--dataset", "digits", "--out", str(out), "--peer", peer,
                            "--device", "cpu"], capsys)
        emb = read_embeddings(out)
        dims[peer] = emb.dim
        assert emb.normalized and emb.num_parts == 4 and emb.parts.shape == (1797, 4 * 8 * (2 if peer == "all" else 1))
        stripes = emb.parts.reshape(1797, 4, -1)
        np.testing.assert_allclose(np.linalg.norm(stripes, axis=2), 1.0, atol=1e-5)  # each stripe unit length
        assert summary["feature"] == "pre-bn" and f"peer {peer}" in emb.metadata["retrieve.model"]
        if peer != "all":
            emb_peer = emb
        # the query/gallery split never depends on --seed
        assert list(emb.split) == list(load_digits_set().split)
    assert dims["all"] == dims["1"] + dims["2"] == 2 * 16  # pooled width 4·4 per peer
    both = read_embeddings(tmp_path / "pall.parquet")
    # the concatenation is the two peers' unit vectors side by side, over √2
    np.testing.assert_allclose(both.vectors[:, 16:] * np.sqrt(2), emb_peer.vectors, atol=1e-6)
    assert run(["embed", str(tmp_path / "m"), "--dataset", "digits", "--out", str(tmp_path / "x.parquet"), "--peer", "3"]) == 1
    assert "choose 1..2 or all" in capsys.readouterr().err


def test_save_every_sgd_and_a_loss_on_the_progress_bar(tmp_path, capsys, monkeypatch):
    from retrieval.train import trainer

    saved_at, reported = [], []
    real_save = trainer.save_epoch

    def counting_save(model_dir, model, loss_fn, optimizer, history, *args, **kwargs):
        saved_at.append(history[-1]["epoch"])
        assert isinstance(optimizer, torch.optim.SGD)
        real_save(model_dir, model, loss_fn, optimizer, history, *args, **kwargs)

    monkeypatch.setattr(trainer, "save_epoch", counting_save)
    config = trainer.TrainConfig(model_dir=str(tmp_path / "m"), dataset="digits", epochs=5, width=4, device="cpu", mutual=1,
                                 optimizer="sgd", save_every=2, workspace=str(tmp_path / "ws"))
    result = trainer.train(config, progress=lambda stage, done, total, loss=None: reported.append((stage, done, loss)))
    assert saved_at == [2, 4, 5]
    assert result["epochs_done"] == 5
    assert json.loads((tmp_path / "m" / "config.json").read_text())["train"]["lr"] == 0.05  # the digits' SGD rate
    first = [r for r in reported if r[0] == "epoch 1/5"]
    assert first[-1][2] == pytest.approx(read_run_table(result["run_dir"], "epochs").column("loss")[0].as_py())


def test_decoding_in_worker_processes_gives_the_same_images(tmp_path):
    from retrieval.train.images import load_layout_set

    make_folders(tmp_path / "people")
    threads = load_layout_set("folders", tmp_path / "people", (16, 8), workers=0)
    processes = load_layout_set("folders", tmp_path / "people", (16, 8), workers=2)
    rows = np.arange(len(threads))[::-1]
    assert torch.equal(threads.load(rows), processes.load(rows))


def test_option_conflicts_are_one_line_errors(tmp_path, capsys):
    assert run(["train", *TINY, "--parts", "4", "--out", str(tmp_path / "m")]) == 1
    assert "--parts P and the loss term 'aligned' go together" in capsys.readouterr().err
    assert run(["train", *TINY, "--loss", "triplet+aligned", "--out", str(tmp_path / "m")]) == 1
    assert "go together" in capsys.readouterr().err
    assert not (tmp_path / "m").exists()


def test_digits_split_is_fixed_and_padding_fills_with_the_background():
    from retrieval.train.digits import load_digits_set
    from retrieval.train.images import Augmentation

    first = load_digits_set()
    assert (np.asarray(first.split) == "query").sum() == 143
    batch = torch.from_numpy(first.images[:64].copy())
    shifted = Augmentation.for_digits()(batch, torch.Generator().manual_seed(0))
    assert shifted.min() >= -1.0 and not (shifted == 0.0).all(dim=(2, 3)).any()
    # a shifted digit's new border row or column is blank paper (-1), never mid-grey (0)
    moved = [i for i in range(64) if not torch.equal(shifted[i], batch[i])]
    assert moved
    for i in moved:
        border = torch.cat([shifted[i, 0, 0], shifted[i, 0, -1], shifted[i, 0, :, 0], shifted[i, 0, :, -1]])
        assert (border == -1.0).any()


def test_digits_recipe_defaults_and_images_defaults():
    from retrieval.train.trainer import TrainConfig

    digits = TrainConfig(model_dir="m", dataset="digits").with_defaults()
    assert (digits.loss, digits.epochs, digits.mutual, digits.width, digits.pool, digits.head, digits.feature, digits.lr) == (
        "triplet:batch-hard", 30, 2, 16, "avg", "none", "body", 1e-3)
    images = TrainConfig(model_dir="m", layout="market", root="R").with_defaults()
    assert (images.backbone, images.depth, images.width, images.mutual, images.feature, images.image_size) == (
        "resnet", 18, 64, 1, "post-bn", (256, 128))
    assert TrainConfig(model_dir="m", layout="folders", root="R", backbone="small-cnn").with_defaults().width == 32
    assert TrainConfig(model_dir="m", dataset="digits", optimizer="sgd").with_defaults().lr == 0.05


def test_a_model_folder_of_the_first_format_still_embeds(tmp_path, capsys):
    """Folders written before pools, heads and peers: one BNNeck network, post-BN feature."""
    from retrieval.data.store import read_embeddings
    from retrieval.train.models import SmallCNN
    from retrieval.train.network import EmbeddingNet

    torch.manual_seed(0)
    old = EmbeddingNet(SmallCNN(1, 4), num_classes=6, image_size=(8, 8)).eval()
    torch.save(old.state_dict(), tmp_path / "model.pt")  # keys backbone.*, neck.*, classifier.*: the old layout
    spec = {"backbone": "small-cnn", "depth": None, "width": 4, "in_channels": 1, "num_classes": 6, "image_size": [8, 8]}
    (tmp_path / "config.json").write_text(json.dumps({"format_version": 1, "name": "old", "model": spec, "feat_dim": 16,
                                                      "classes": [1, 2, 3, 4, 5, 6], "train": {"seed": 0}}))
    out = tmp_path / "e.parquet"
    summary = run_json(["embed", str(tmp_path), "--dataset", "digits", "--out", str(out), "--device", "cpu"], capsys)
    assert summary["feature"] == "post-bn" and summary["dim"] == 16
    from retrieval.train.digits import load_digits_set

    with torch.no_grad():
        want = torch.nn.functional.normalize(old(torch.from_numpy(load_digits_set().images[:5])).post, dim=1).numpy()
    np.testing.assert_allclose(read_embeddings(out).vectors[:5], want, atol=1e-6)
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    assert run(["train", "--dataset", "digits", "--out", str(tmp_path), "--resume"]) == 1
    assert "older retrieve train" in capsys.readouterr().err


def test_digits_read_from_the_file_equal_scikit_learns_loader():
    from sklearn.datasets import load_digits

    from retrieval.train.digits import read_digits

    pixels, digits = read_digits()
    bunch = load_digits()
    assert np.array_equal(pixels, bunch.data) and np.array_equal(digits, bunch.target)
