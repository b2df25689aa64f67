"""The training loop: PK batches, augmentations, the combined loss, per-epoch statistics,
checkpoints (``--resume``), evaluation with our evaluator, a run folder of kind "train".

The model folder holds ``model.pt`` (the BNNeck network's state dict), ``config.json``
(architecture, class count, image size, loss, data source, epochs done, run folder) and
``checkpoint.pt`` (model, loss, optimizer, epoch history) to resume from.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa
import torch

from retrieval.errors import RetrieveError
from retrieval.train.combine import DEFAULT_LOSS, build_loss, parse_loss_spec
from retrieval.train.images import Augmentation, load_layout_set
from retrieval.train.losses import mining_statistics
from retrieval.train.models import BNNeckNet, build_backbone, load_backbone_weights
from retrieval.train.optim import DEFAULT_LR, Schedule, make_optimizer, set_lr
from retrieval.train.sampler import PKSampler

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
COLLAPSE_DISTANCE = 1e-3
MARGIN = 0.3
# these must agree between a checkpoint and a --resume call.
RESUME_KEYS = ("dataset", "layout", "loss", "p", "k", "image_size", "backbone", "depth", "width", "lr", "seed")


@dataclass
class TrainConfig:
    model_dir: str
    dataset: str | None = None  # "digits"
    layout: str | None = None  # market | duke | msmt17 | veri | folders
    root: str | None = None
    loss: str = DEFAULT_LOSS
    epochs: int = 15
    p: int | None = None
    k: int | None = None
    image_size: tuple[int, int] | None = None
    backbone: str | None = None
    depth: int | None = None
    width: int | None = None
    lr: float = DEFAULT_LR
    device: str = "auto"
    seed: int = 0
    eval_every: int = 0
    weights: str | None = None
    resume: bool = False
    workspace: str | None = None
    command: str = ""
    extra: dict = field(default_factory=dict)

    def with_defaults(self) -> "TrainConfig":
        """Fill the options left open with the data source's defaults (digits: 6×16 batches, small CNN)."""
        digits = self.dataset == "digits"
        backbone = self.backbone or ("small-cnn" if digits else "resnet")
        small = backbone == "small-cnn"
        values = asdict(self)
        values.update(
            p=self.p or (6 if digits else 16),
            k=self.k or (16 if digits else 4),
            image_size=tuple(self.image_size) if self.image_size else ((8, 8) if digits else (256, 128)),
            backbone=backbone,
            depth=None if small else (self.depth or 18),
            width=self.width or (32 if small else 64),
        )
        return TrainConfig(**values)


def resolve_device(name: str) -> torch.device:
    if name not in ("auto", "cpu", "cuda"):
        raise RetrieveError(f"unknown device {name!r}; choose auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise RetrieveError("--device cuda: torch sees no CUDA GPU on this machine; use --device cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def load_image_set(dataset: str | None, layout: str | None, root: str | None, image_size, seed: int):
    """The image set of a run: the digits (in memory) or a layout's images on disk."""
    if dataset == "digits":
        from retrieval.train.digits import load_digits_set

        return load_digits_set(seed)
    if layout is None or root is None:
        raise RetrieveError("give --layout KIND ROOT or --dataset digits")
    return load_layout_set(layout, root, tuple(image_size))


def class_labels(pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct pids, class index of each row)."""
    classes, labels = np.unique(pids, return_inverse=True)
    return classes, labels.astype(np.int64)


def build_model(spec: dict[str, Any]) -> BNNeckNet:
    backbone = build_backbone(spec["backbone"], spec["in_channels"], spec.get("depth"), spec.get("width"))
    return BNNeckNet(backbone, spec["num_classes"])


@torch.no_grad()
def embed_rows(model: BNNeckNet, image_set, rows, device, feature: str = "post-bn", batch_size: int = 256) -> np.ndarray:
    """L2-normalised features of ``rows`` (float32), post-BN (default) or pre-BN, model in eval mode."""
    was_training = model.training
    model.eval()
    rows = np.asarray(rows)
    out = []
    for start in range(0, len(rows), batch_size):
        images = image_set.load(rows[start : start + batch_size]).to(device)
        pre, post, _ = model(images)
        chosen = post if feature == "post-bn" else pre
        out.append(torch.nn.functional.normalize(chosen.float(), dim=1).cpu().numpy())
    model.train(was_training)
    return np.concatenate(out) if out else np.zeros((0, model.feat_dim), np.float32)


def query_gallery_rows(image_set) -> tuple[np.ndarray, np.ndarray]:
    split = np.asarray(image_set.split)
    return np.flatnonzero(split == "query"), np.flatnonzero(split == "gallery")


def evaluate_vectors(image_set, query_rows, gallery_rows, query_vectors, gallery_vectors) -> dict[str, Any]:
    """Our evaluator on euclidean distances; protocol market with camera ids, else no-camera."""
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.evaluate import evaluate_ranking

    cam = image_set.camid
    protocol = "no-camera" if cam is None else "market"
    result = evaluate_ranking(
        EmbeddingDistances(query_vectors, gallery_vectors, "euclidean"),
        image_set.pid[query_rows],
        image_set.pid[gallery_rows],
        None if cam is None else cam[query_rows],
        None if cam is None else cam[gallery_rows],
        protocol=protocol,
        query_ids=image_set.ids[query_rows],
        gallery_ids=image_set.ids[gallery_rows],
        max_rank=10,
        keep_top=0,
    )
    return {
        "mAP": float(result.mAP),
        "mINP": float(result.mINP),
        "rank-1": float(result.cmc[0]),
        "rank-5": float(result.cmc[min(4, len(result.cmc) - 1)]),
        "protocol": protocol,
        "metric_distance": "euclidean",
        "num_queries": int(result.num_queries),
        "num_gallery": int(result.num_gallery),
    }


def evaluate_model(model: BNNeckNet, image_set, device, feature: str = "post-bn") -> dict[str, Any]:
    q, g = query_gallery_rows(image_set)
    if not len(q) or not len(g):
        raise RetrieveError(f"{image_set.name}: no query/gallery split to evaluate on")
    return evaluate_vectors(image_set, q, g, embed_rows(model, image_set, q, device, feature), embed_rows(model, image_set, g, device, feature))


def atomic_save(obj, path: Path) -> None:
    """torch.save through retrieval.common.atomic (temporary file, fsync, rename; umask modes)."""
    from retrieval.common.atomic import atomic_file

    with atomic_file(path, overwrite=True) as temporary:
        torch.save(obj, temporary)


def atomic_write_json(obj, path: Path) -> None:
    """JSON (NaN as null) through retrieval.common.atomic."""
    from retrieval.common.atomic import write_json
    from retrieval.run_schema import json_safe

    write_json(path, json_safe(obj), overwrite=True)


def check_resume(saved: dict[str, Any], config: TrainConfig) -> None:
    for key in RESUME_KEYS:
        now, before = getattr(config, key), saved["train"].get(key)
        if isinstance(now, tuple):
            now = list(now)
        if now != before:
            raise RetrieveError(f"--resume: {key} is {now!r} but the checkpoint was trained with {before!r}")


def epoch_row(epoch: int, lr: float, sums: dict[str, float], batches: int, seconds: float, images: int) -> dict[str, Any]:
    row = {"epoch": epoch, "lr": lr}
    row.update({name: value / max(1, batches) for name, value in sums.items()})
    row.update({"batches": batches, "seconds": seconds, "images_per_second": images / seconds if seconds > 0 else None})
    return row


def epochs_table(history: list[dict[str, Any]]) -> pa.Table:
    names: list[str] = []
    for row in history:
        names += [n for n in row if n not in names]
    return pa.table({n: pa.array([row.get(n) for row in history], pa.int64() if n in ("epoch", "batches") else pa.float64()) for n in names})


def train(config: TrainConfig, progress: Callable[[str, int, int], None] | None = None, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or resume) a model as ``config`` says; returns the result object that ``--json`` prints."""
    from retrieval.runs import write_run
    from retrieval.workspace import new_run_dir

    progress = progress or (lambda stage, done, total: None)
    warn = warn or (lambda message: print(f"retrieve: warning: {message}", file=sys.stderr))
    config = config.with_defaults()
    parse_loss_spec(config.loss)
    model_dir = Path(config.model_dir)
    saved = read_model_config(model_dir) if (model_dir / CONFIG_FILE).is_file() else None
    if config.resume:
        if saved is None or not (model_dir / CHECKPOINT_FILE).is_file():
            raise RetrieveError(f"{model_dir}: no checkpoint to resume from")
        check_resume(saved, config)
    elif saved is not None:
        raise RetrieveError(f"{model_dir}: already holds a trained model; use --resume to continue it, or another --out")
    device = resolve_device(config.device)

    image_set = load_image_set(config.dataset, config.layout, config.root, config.image_size, config.seed)
    train_rows = np.flatnonzero(np.asarray(image_set.split) == "train")
    if not len(train_rows):
        raise RetrieveError(f"{image_set.name}: no images in the train split")
    classes, labels = class_labels(image_set.pid[train_rows])
    try:
        sampler = PKSampler(labels, config.p, config.k, config.seed)
    except ValueError as exc:
        raise RetrieveError(f"{image_set.name}: {exc}") from None
    if config.eval_every:
        q, g = query_gallery_rows(image_set)
        if not len(q) or not len(g):
            raise RetrieveError(f"{image_set.name}: --eval-every needs query and gallery images, and this set has none")

    torch.manual_seed(config.seed)
    spec = {
        "backbone": config.backbone, "depth": config.depth, "width": config.width,
        "in_channels": image_set.channels, "num_classes": len(classes), "image_size": list(config.image_size),
    }
    model = build_model(spec)
    loss_fn = build_loss(config.loss, len(classes), model.feat_dim)
    if config.weights and not config.resume:
        try:
            report = load_backbone_weights(model.backbone, config.weights)
        except (ValueError, RuntimeError, OSError) as exc:
            raise RetrieveError(f"--weights: {exc}") from None
        if report["missing"]:
            warn(f"--weights: {len(report['missing'])} backbone parameters not in the file keep their random start")
    model.to(device)
    loss_fn.to(device)
    optimizer = make_optimizer(list(model.parameters()) + list(loss_fn.parameters()), config.lr)
    schedule = Schedule.scaled(config.epochs, config.lr)
    augment = Augmentation.for_digits() if config.dataset == "digits" else Augmentation.for_images(config.image_size)

    history: list[dict[str, Any]] = []
    start_epoch, last_eval = 0, None
    run_dir = new_run_dir(config.workspace, "train")
    if config.resume:
        state = torch.load(model_dir / CHECKPOINT_FILE, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])
        loss_fn.load_state_dict(state["loss"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, history, last_eval = state["epoch"], state["history"], state.get("last_eval")
        run_dir = Path(saved.get("run_dir") or run_dir)
    model_dir.mkdir(parents=True, exist_ok=True)

    warnings: list[str] = []
    timings = {"train": 0.0, "evaluate": 0.0}
    initial_eval = saved.get("initial_evaluation") if config.resume and saved else None
    if config.eval_every and start_epoch == 0:
        # the untrained network's numbers, so that a run shows what training added.
        t0 = time.perf_counter()
        initial_eval = {"epoch": 0, **evaluate_model(model, image_set, device)}
        timings["evaluate"] += time.perf_counter() - t0
    for epoch in range(start_epoch, config.epochs):
        row = run_epoch(model, loss_fn, optimizer, schedule, sampler, image_set, train_rows, labels, augment, device,
                        epoch, config, progress)
        timings["train"] += row["seconds"]
        if not np.isfinite(row["loss"]):
            raise RetrieveError(f"epoch {epoch + 1}: the loss is not finite ({row['loss']}); lower --lr")
        message = collapse_warning(row)
        if message:
            warnings.append(message)
            warn(message)
        row.update({"mAP": None, "rank-1": None})
        if config.eval_every and ((epoch + 1) % config.eval_every == 0 or epoch + 1 == config.epochs):
            t0 = time.perf_counter()
            last_eval = {"epoch": epoch + 1, **evaluate_model(model, image_set, device)}
            timings["evaluate"] += time.perf_counter() - t0
            row.update({"mAP": last_eval["mAP"], "rank-1": last_eval["rank-1"]})
        history.append(row)
        save_epoch(model_dir, model, loss_fn, optimizer, history, config, spec, classes, run_dir, initial_eval, last_eval)
        result = train_result(config, model_dir, run_dir, image_set, train_rows, classes, device, history, last_eval, warnings)
        result["initial_evaluation"] = initial_eval
        write_run(run_dir, run_record(config, result, timings), run_tables(history, last_eval))
    if start_epoch >= config.epochs:
        result = train_result(config, model_dir, run_dir, image_set, train_rows, classes, device, history, last_eval, warnings)
        result["initial_evaluation"] = initial_eval
    return result


def prefetched(items: list, load: Callable):
    """Yield ``load(item)`` for each item, loading the next one in a background thread meanwhile.

    One worker thread, in order: the augmentation generator is still drawn from sequentially,
    so the batches are the same as without prefetching.
    """
    from concurrent.futures import ThreadPoolExecutor

    if not items:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch") as pool:
        future = pool.submit(load, items[0])
        for nxt in items[1:]:
            current = future.result()
            future = pool.submit(load, nxt)
            yield current
        yield future.result()


def run_epoch(model, loss_fn, optimizer, schedule, sampler, image_set, train_rows, labels, augment, device,
              epoch: int, config: TrainConfig, progress) -> dict[str, Any]:
    """One epoch of PK batches; returns the epoch's row (mean losses and mining statistics, timing)."""
    sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(config.seed * 1_000_003 + epoch)  # augmentations, on the CPU
    model.train()
    batches = sampler.batches()
    sums: dict[str, float] = {}
    started = time.perf_counter()
    rate = schedule.lr(epoch, 0, len(batches))
    def load(batch):
        return augment(image_set.load(train_rows[np.asarray(batch)]), gen)

    for step, (batch, images) in enumerate(zip(batches, prefetched(batches, load))):
        rate = schedule.lr(epoch, step, len(batches))
        set_lr(optimizer, rate)
        images = images.to(device)
        target = torch.from_numpy(labels[np.asarray(batch)]).to(device)
        pre, _post, logits = model(images)
        total, parts = loss_fn(pre, logits, target)
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        optimizer.step()
        values = {"loss": float(total.detach()), **{f"loss_{k}": float(v.detach()) for k, v in parts.items()},
                  **mining_statistics(pre.detach(), target, MARGIN)}
        for key, value in values.items():
            sums[key] = sums.get(key, 0.0) + value
        progress(f"epoch {epoch + 1}/{config.epochs}", step + 1, len(batches))
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return epoch_row(epoch + 1, rate, sums, len(batches), seconds, sum(len(b) for b in batches))


def collapse_warning(row: dict[str, Any]) -> str | None:
    """A message when the epoch's embeddings have collapsed: negatives as close as positives, all near zero."""
    d_an, d_ap = row.get("mean_d_an"), row.get("mean_d_ap")
    if d_an is None or not np.isfinite(d_an) or d_an >= COLLAPSE_DISTANCE:
        return None
    return (f"epoch {row['epoch']}: embeddings collapsed to a point (mean distance to negatives {d_an:.2e}, "
            f"to positives {d_ap:.2e}); try a lower --lr or another --loss")


def save_epoch(model_dir: Path, model, loss_fn, optimizer, history, config: TrainConfig, spec, classes, run_dir,
               initial_eval=None, last_eval=None) -> None:
    atomic_save(
        {"model": model.state_dict(), "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
         "epoch": history[-1]["epoch"], "history": history, "last_eval": last_eval},
        model_dir / CHECKPOINT_FILE,
    )
    atomic_save(model.state_dict(), model_dir / WEIGHTS_FILE)
    train_options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()
                     if k not in ("model_dir", "resume", "command", "extra", "workspace")}
    atomic_write_json(
        {
            "format_version": 1,
            "name": model_name(config),
            "model": spec,
            "feat_dim": model.feat_dim,
            "classes": [int(c) for c in classes],
            "train": train_options,
            "epochs_done": history[-1]["epoch"],
            "run_dir": str(run_dir),
            "initial_evaluation": initial_eval,
        },
        model_dir / CONFIG_FILE,
    )


def model_name(config: TrainConfig) -> str:
    arch = config.backbone if config.backbone == "small-cnn" else f"resnet{config.depth}"
    return f"{arch}-w{config.width} {config.loss} ({config.dataset or config.layout})"


def read_model_config(model_dir: Path | str) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise RetrieveError(f"{model_dir}: not a model folder (no {CONFIG_FILE}); train one with `retrieve train`")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RetrieveError(f"{path}: not valid JSON ({exc})") from None
    if config.get("format_version") != 1 or "model" not in config:
        raise RetrieveError(f"{path}: not a model configuration written by retrieve train")
    return config


def train_result(config, model_dir, run_dir, image_set, train_rows, classes, device, history, last_eval, warnings) -> dict[str, Any]:
    return {
        "model_dir": str(model_dir),
        "run_dir": str(run_dir),
        "data": config.dataset or config.layout,
        "model": model_name(config),
        "loss": config.loss,
        "device": device.type,
        "num_classes": len(classes),
        "num_train_images": int(len(train_rows)),
        "epochs_done": history[-1]["epoch"] if history else 0,
        "last_epoch": history[-1] if history else None,
        "evaluation": last_eval,
        "warnings": warnings,
    }


def run_record(config: TrainConfig, result: dict[str, Any], timings: dict[str, float]) -> dict[str, Any]:
    import retrieval

    parameters = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()
                  if k not in ("command", "extra", "workspace")}
    return {
        "kind": "train",
        "command": config.command,
        "parameters": parameters,
        "inputs": {"dataset": config.dataset, "layout": config.layout, "root": config.root, "weights": config.weights},
        "versions": {"retrieve": retrieval.__version__, "torch": torch.__version__, "python": sys.version.split()[0]},
        "timings": timings,
        "result": result,
    }


def run_tables(history, last_eval) -> dict[str, pa.Table]:
    tables = {"epochs": epochs_table(history)}
    if last_eval is not None:
        names = ["mAP", "mINP", "rank-1", "rank-5"]
        tables["metrics"] = pa.table({
            "metric": names,
            "value": [float(last_eval[n]) for n in names],
            "stage": ["plain"] * len(names),
            "protocol": [last_eval["protocol"]] * len(names),
            "ap_variant": ["standard"] * len(names),
            "metric_distance": ["euclidean"] * len(names),
        })
    return tables


def embed_to_file(model_dir, out, dataset=None, layout=None, root=None, feature="post-bn", device="auto",
                  batch_size: int = 256, progress=None) -> dict[str, Any]:
    """Embed every image of a data source with a trained model and write an embeddings file."""
    from retrieval.data.store import write_embeddings

    saved = read_model_config(model_dir)
    spec = saved["model"]
    dev = resolve_device(device)
    model = build_model(spec)
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise RetrieveError(f"{model_dir}: no {WEIGHTS_FILE}")
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    model.to(dev)
    image_set = load_image_set(dataset, layout, root, spec["image_size"], saved["train"].get("seed", 0))
    if image_set.channels != spec["in_channels"]:
        raise RetrieveError(f"{model_dir}: the model takes {spec['in_channels']}-channel images, {image_set.name} has {image_set.channels}")
    rows = np.arange(len(image_set))
    parts = []
    for start in range(0, len(rows), batch_size):
        parts.append(embed_rows(model, image_set, rows[start : start + batch_size], dev, feature, batch_size))
        if progress:
            progress("embed", min(start + batch_size, len(rows)), len(rows))
    vectors = np.concatenate(parts) if parts else np.zeros((0, saved["feat_dim"]), np.float32)
    camid = None if image_set.camid is None else pa.array(image_set.camid, pa.int32(), mask=image_set.camid < 0)
    write_embeddings(out, image_set.ids, vectors, pid=image_set.pid, camid=camid, split=image_set.split,
                     paths=image_set.path, model=f"{saved['name']} [{feature}]")
    return {"out": str(out), "rows": int(len(rows)), "dim": int(vectors.shape[1]), "feature": feature,
            "normalized": True, "model": saved["name"], "device": dev.type}
