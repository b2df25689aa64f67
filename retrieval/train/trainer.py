"""The training loop: PK batches, augmentations, the combined loss (and the mutual terms between
peers), per-epoch statistics, checkpoints (``--resume``, ``--save-every``), evaluation with our
evaluator, a run folder of kind "train".

The model folder holds ``model.pt`` (the peer group's state dict), ``config.json`` (architecture,
class count, image size, loss, retrieval feature, data source, epochs done, run folder) and
``checkpoint.pt`` (model, loss, optimizer, grad scaler, epoch history) to resume from.
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
from retrieval.train.choices import FEATURES, HEADS, OPTIMIZERS, POOLS
from retrieval.train.combine import build_loss, parse_loss_spec, uses_term
from retrieval.train.images import Augmentation, load_layout_set
from retrieval.train.models import load_backbone_weights
from retrieval.train.network import DEFAULT_HEAD_DIM, DEFAULT_PART_DIM, build_network, network_spec
from retrieval.train.optim import Schedule, make_optimizer
from retrieval.train.progress import no_progress
from retrieval.train.recipes import recipe
from retrieval.train.sampler import PKSampler
from retrieval.train.step import grad_scaler, run_epoch

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.pt"
CHECKPOINT_FILE = "checkpoint.pt"
FORMAT_VERSION = 2  # 1: one BNNeck network, no pool/head/peers/parts (still read by embed)
COLLAPSE_DISTANCE = 1e-3
# these must agree between a checkpoint and a --resume call.
RESUME_KEYS = ("dataset", "layout", "loss", "p", "k", "image_size", "backbone", "depth", "width", "lr", "seed",
               "pool", "head", "head_dim", "parts", "part_dim", "mutual", "mutual_weight", "optimizer")


@dataclass
class TrainConfig:
    """A training run's options; ``None`` means "the data source's recipe" (``retrieval.train.recipes``)."""

    model_dir: str
    dataset: str | None = None  # "digits"
    layout: str | None = None  # market | duke | msmt17 | veri | folders
    root: str | None = None
    loss: str | None = None
    epochs: int | None = None
    p: int | None = None
    k: int | None = None
    image_size: tuple[int, int] | None = None
    backbone: str | None = None
    depth: int | None = None
    width: int | None = None
    pool: str | None = None
    head: str | None = None
    head_dim: int | None = None
    feature: str | None = None  # the retrieval feature: --eval-every's and embed's default
    parts: int = 0  # P stripes of the local branch (AlignedReID); 0: none
    part_dim: int | None = None
    mutual: int | None = None  # peers trained together (deep mutual learning); 1: plain training
    mutual_weight: float | None = None  # weight of the mutual terms; 0: peers side by side (an ensemble)
    optimizer: str = "adam"
    lr: float | None = None
    device: str = "auto"
    seed: int = 0
    eval_every: int = 0
    save_every: int = 1
    workers: int = 0
    weights: str | None = None
    resume: bool = False
    workspace: str | None = None
    command: str = ""
    extra: dict = field(default_factory=dict)

    def with_defaults(self) -> "TrainConfig":
        """Fill the options left open with the data source's recipe."""
        base = recipe(self.dataset)
        backbone = self.backbone or base["backbone"]
        small = backbone == "small-cnn"
        same = backbone == base["backbone"]
        values = asdict(self)
        values.update(
            loss=self.loss or base["loss"],
            epochs=self.epochs or base["epochs"],
            p=self.p or base["p"],
            k=self.k or base["k"],
            image_size=tuple(self.image_size) if self.image_size else tuple(base["image_size"]),
            backbone=backbone,
            depth=None if small else (self.depth or base.get("depth") or 18),
            width=self.width or (base["width"] if same else base.get("small_cnn_width", 32)),
            pool=self.pool or base["pool"],
            head=self.head or base["head"],
            head_dim=None if (self.head or base["head"]) == "none" else (self.head_dim or DEFAULT_HEAD_DIM),
            feature=self.feature or base["feature"],
            part_dim=(self.part_dim or DEFAULT_PART_DIM) if self.parts else None,
            lr=self.lr if self.lr is not None else base["lr"][self.optimizer],
            mutual=self.mutual or base["mutual"],
            mutual_weight=self.mutual_weight if self.mutual_weight is not None else base["mutual_weight"],
        )
        return TrainConfig(**values)

    def check(self) -> None:
        """Raise RetrieveError for options that cannot work together (after ``with_defaults``)."""
        terms = parse_loss_spec(self.loss)
        checks = [
            (self.pool in POOLS, f"unknown --pool {self.pool!r}; choose from {', '.join(POOLS)}"),
            (self.head in HEADS, f"unknown --head {self.head!r}; choose from {', '.join(HEADS)}"),
            (self.feature in FEATURES, f"unknown --feature {self.feature!r}; choose from {', '.join(FEATURES)}"),
            (self.optimizer in OPTIMIZERS, f"unknown --optimizer {self.optimizer!r}; choose from {', '.join(OPTIMIZERS)}"),
            (self.mutual >= 1, "--mutual must be at least 1"),
            (self.mutual_weight >= 0, "--mutual-weight must not be negative"),
            (self.save_every >= 1, "--save-every must be at least 1"),
            (bool(self.parts) == any(t.name == "aligned" for t in terms),
             "--parts P and the loss term 'aligned' go together (e.g. --parts 4 --loss triplet+aligned)"),
        ]
        for ok, message in checks:
            if not ok:
                raise RetrieveError(message)


def resolve_device(name: str) -> torch.device:
    """The engine's device rule (``indexes.distance.resolve_device``), with TF32 off as everywhere
    torch is used (autocast still uses float16 in training when asked)."""
    from retrieval.indexes.distance import full_precision_torch
    from retrieval.indexes.distance import resolve_device as engine_device
    from retrieval.indexes.errors import FaissIndexError

    try:
        device = torch.device(engine_device(name))
    except FaissIndexError as exc:
        raise RetrieveError(str(exc)) from None
    full_precision_torch(torch)
    return device


def load_image_set(dataset: str | None, layout: str | None, root: str | None, image_size, workers: int = 0):
    """The image set of a run: the digits (in memory) or a layout's images on disk."""
    if dataset == "digits":
        from retrieval.train.digits import load_digits_set

        return load_digits_set()
    if layout is None or root is None:
        raise RetrieveError("give --layout KIND ROOT or --dataset digits")
    return load_layout_set(layout, root, tuple(image_size), workers)


def class_labels(pids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct pids, class index of each row)."""
    classes, labels = np.unique(pids, return_inverse=True)
    return classes, labels.astype(np.int64)


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


def evaluate_model(network, image_set, device, feature: str = "post-bn", peer="all") -> dict[str, Any]:
    """The network's retrieval feature on the query/gallery split, scored by our evaluator."""
    from retrieval.train.embed import embed_rows

    q, g = query_gallery_rows(image_set)
    if not len(q) or not len(g):
        raise RetrieveError(f"{image_set.name}: no query/gallery split to evaluate on")
    query, _ = embed_rows(network, image_set, q, device, feature, peer)
    gallery, _ = embed_rows(network, image_set, g, device, feature, peer)
    return {**evaluate_vectors(image_set, q, g, query, gallery), "feature": feature}


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


def epochs_table(history: list[dict[str, Any]]) -> pa.Table:
    names: list[str] = []
    for row in history:
        names += [n for n in row if n not in names]
    return pa.table({n: pa.array([row.get(n) for row in history], pa.int64() if n in ("epoch", "batches") else pa.float64()) for n in names})


@dataclass
class Session:
    """Everything a training run works with, built by ``prepare``."""

    config: TrainConfig
    model_dir: Path
    saved: dict[str, Any] | None
    device: torch.device
    image_set: Any
    train_rows: np.ndarray
    classes: np.ndarray
    labels: np.ndarray
    sampler: PKSampler
    spec: dict[str, Any]
    network: Any
    losses: Any
    optimizer: Any
    scaler: Any
    schedule: Schedule
    augment: Augmentation

    @property
    def with_kl(self) -> bool:
        return uses_term(self.config.loss, "softmax")


def check_model_dir(model_dir: Path, config: TrainConfig) -> dict[str, Any] | None:
    """The saved configuration to resume (or None for a fresh run); refuses what cannot be done."""
    saved = read_model_config(model_dir) if (model_dir / CONFIG_FILE).is_file() else None
    if config.resume:
        if saved is None or not (model_dir / CHECKPOINT_FILE).is_file():
            raise RetrieveError(f"{model_dir}: no checkpoint to resume from")
        if saved.get("format_version") != FORMAT_VERSION:
            raise RetrieveError(f"{model_dir}: written by an older retrieve train (format {saved.get('format_version')}); "
                                "it can be embedded but not resumed")
        check_resume(saved, config)
    elif saved is not None:
        raise RetrieveError(f"{model_dir}: already holds a trained model; use --resume to continue it, or another --out")
    return saved


def training_data(config: TrainConfig):
    """(image set, train rows, classes, labels, sampler), with clear errors for a set that cannot train."""
    image_set = load_image_set(config.dataset, config.layout, config.root, config.image_size, config.workers)
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
    return image_set, train_rows, classes, labels, sampler


def prepare(config: TrainConfig, warn: Callable[[str], None]) -> Session:
    """Check the options and the model folder, load the data, build the peers, their losses and the optimiser."""
    config.check()
    model_dir = Path(config.model_dir)
    saved = check_model_dir(model_dir, config)
    device = resolve_device(config.device)
    image_set, train_rows, classes, labels, sampler = training_data(config)
    torch.manual_seed(config.seed)
    spec = network_spec(config, image_set.channels, len(classes))
    network = build_network(spec)
    losses = torch.nn.ModuleList(build_loss(config.loss, len(classes), peer.feat_dim) for peer in network.peers)
    if config.weights and not config.resume:
        for peer in network.peers:
            try:
                report = load_backbone_weights(peer.backbone, config.weights)
            except (ValueError, RuntimeError, OSError) as exc:
                raise RetrieveError(f"--weights: {exc}") from None
        if report["missing"]:
            warn(f"--weights: {len(report['missing'])} backbone parameters not in the file keep their random start")
    network.to(device)
    losses.to(device)
    optimizer = make_optimizer(list(network.parameters()) + list(losses.parameters()), config.optimizer, config.lr)
    augment = Augmentation.for_digits() if config.dataset == "digits" else Augmentation.for_images(config.image_size)
    return Session(config, model_dir, saved, device, image_set, train_rows, classes, labels, sampler, spec, network,
                   losses, optimizer, grad_scaler(device), Schedule.scaled(config.epochs, config.lr), augment)


def restore(session: Session) -> tuple[int, list, Any]:
    """(first epoch to run, history, last evaluation): from the checkpoint with --resume, else a fresh start."""
    if not session.config.resume:
        return 0, [], None
    state = torch.load(session.model_dir / CHECKPOINT_FILE, map_location=session.device, weights_only=True)
    session.network.load_state_dict(state["model"])
    session.losses.load_state_dict(state["loss"])
    session.optimizer.load_state_dict(state["optimizer"])
    if state.get("scaler"):
        session.scaler.load_state_dict(state["scaler"])
    return state["epoch"], state["history"], state.get("last_eval")


def timed_evaluation(session: Session, epoch: int, timings: dict[str, float]) -> dict[str, Any]:
    started = time.perf_counter()
    result = {"epoch": epoch, **evaluate_model(session.network, session.image_set, session.device, session.config.feature)}
    timings["evaluate"] += time.perf_counter() - started
    return result


def train(config: TrainConfig, progress: Callable | None = None, warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or resume) a model as ``config`` says; returns the result object that ``--json`` prints.

    ``progress(stage, done, total, loss=...)`` is called after every batch.
    """
    from retrieval.runs import write_run
    from retrieval.workspace import new_run_dir

    progress = progress or no_progress
    warn = warn or (lambda message: print(f"retrieve: warning: {message}", file=sys.stderr))
    config = config.with_defaults()
    session = prepare(config, warn)
    start_epoch, history, last_eval = restore(session)
    saved = session.saved
    run_dir = Path(saved.get("run_dir")) if config.resume and saved.get("run_dir") else new_run_dir(config.workspace, "train")
    session.model_dir.mkdir(parents=True, exist_ok=True)
    warnings: list[str] = []
    timings = {"train": 0.0, "evaluate": 0.0}
    initial_eval = saved.get("initial_evaluation") if config.resume and saved else None
    if config.eval_every and start_epoch == 0:
        initial_eval = timed_evaluation(session, 0, timings)  # the untrained network: what training added
    result = None
    for epoch in range(start_epoch, config.epochs):
        row = run_epoch(session.network, session.losses, session.optimizer, session.scaler, session.schedule,
                        session.sampler, session.image_set, session.train_rows, session.labels, session.augment,
                        session.device, epoch, config.epochs, config.seed, session.with_kl, config.mutual_weight,
                        progress)
        timings["train"] += row["seconds"]
        if not np.isfinite(row["loss"]):
            raise RetrieveError(f"epoch {epoch + 1}: the loss is not finite ({row['loss']}); lower --lr")
        message = collapse_warning(row)
        if message:
            warnings.append(message)
            warn(message)
        row.update({"mAP": None, "rank-1": None})
        last = epoch + 1 == config.epochs
        if config.eval_every and ((epoch + 1) % config.eval_every == 0 or last):
            last_eval = timed_evaluation(session, epoch + 1, timings)
            row.update({"mAP": last_eval["mAP"], "rank-1": last_eval["rank-1"]})
        history.append(row)
        if (epoch + 1) % config.save_every == 0 or last:
            save_epoch(session.model_dir, session.network, session.losses, session.optimizer, history, config,
                       session.spec, session.classes, run_dir, initial_eval, last_eval, session.scaler)
        result = train_result(session, run_dir, history, last_eval, warnings, initial_eval)
        write_run(run_dir, run_record(config, result, timings), run_tables(history, last_eval))
    return result or train_result(session, run_dir, history, last_eval, warnings, initial_eval)


def collapse_warning(row: dict[str, Any]) -> str | None:
    """A message when the epoch's embeddings have collapsed: negatives as close as positives, all near zero."""
    d_an, d_ap = row.get("mean_d_an"), row.get("mean_d_ap")
    if d_an is None or not np.isfinite(d_an) or d_an >= COLLAPSE_DISTANCE:
        return None
    return (f"epoch {row['epoch']}: embeddings collapsed to a point (mean distance to negatives {d_an:.2e}, "
            f"to positives {d_ap:.2e}); try a lower --lr or another --loss")


def save_epoch(model_dir: Path, model, loss_fn, optimizer, history, config: TrainConfig, spec, classes, run_dir,
               initial_eval=None, last_eval=None, scaler=None) -> None:
    atomic_save(
        {"model": model.state_dict(), "loss": loss_fn.state_dict(), "optimizer": optimizer.state_dict(),
         "scaler": None if scaler is None or not scaler.is_enabled() else scaler.state_dict(),
         "epoch": history[-1]["epoch"], "history": history, "last_eval": last_eval},
        model_dir / CHECKPOINT_FILE,
    )
    atomic_save(model.state_dict(), model_dir / WEIGHTS_FILE)
    train_options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items()
                     if k not in ("model_dir", "resume", "command", "extra", "workspace")}
    atomic_write_json(
        {
            "format_version": FORMAT_VERSION,
            "name": model_name(config),
            "model": spec,
            "feature": config.feature,
            "feat_dims": model.peers[0].dims(),
            "classes": [int(c) for c in classes],
            "train": train_options,
            "epochs_done": history[-1]["epoch"],
            "run_dir": str(run_dir),
            "initial_evaluation": initial_eval,
        },
        model_dir / CONFIG_FILE,
    )


def model_name(config: TrainConfig) -> str:
    """e.g. ``small-cnn-w16 pool=avg triplet:batch-hard (digits)``, with head, parts and peers when set."""
    arch = config.backbone if config.backbone == "small-cnn" else f"resnet{config.depth}"
    extras = [f"pool={config.pool}"]
    extras += [] if config.head == "none" else [f"head={config.head}{config.head_dim}"]
    extras += [] if not config.parts else [f"parts={config.parts}"]
    weight = "" if config.mutual_weight == 1 else f"x{config.mutual_weight:g}"
    extras += [] if config.mutual == 1 else [f"mutual={config.mutual}{weight}"]
    return f"{arch}-w{config.width} {' '.join(extras)} {config.loss} ({config.dataset or config.layout})"


def read_model_config(model_dir: Path | str) -> dict[str, Any]:
    path = Path(model_dir) / CONFIG_FILE
    if not path.is_file():
        raise RetrieveError(f"{model_dir}: not a model folder (no {CONFIG_FILE}); train one with `retrieve train`")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RetrieveError(f"{path}: not valid JSON ({exc})") from None
    if config.get("format_version") not in (1, FORMAT_VERSION) or "model" not in config:
        raise RetrieveError(f"{path}: not a model configuration written by retrieve train")
    return config


def train_result(session: Session, run_dir, history, last_eval, warnings, initial_eval) -> dict[str, Any]:
    config = session.config
    return {
        "model_dir": str(session.model_dir),
        "run_dir": str(run_dir),
        "data": config.dataset or config.layout,
        "model": model_name(config),
        "loss": config.loss,
        "feature": config.feature,
        "peers": config.mutual,
        "parts": config.parts,
        "device": session.device.type,
        "num_classes": len(session.classes),
        "num_train_images": int(len(session.train_rows)),
        "epochs_done": history[-1]["epoch"] if history else 0,
        "last_epoch": history[-1] if history else None,
        "evaluation": last_eval,
        "initial_evaluation": initial_eval,
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
