"""Commands: train (metric-learning training on images) and embed (images -> embeddings file).

Both need torch (the ``train`` extra); it is imported only when they run.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Optional, Tuple

import typer

from retrieval.cli.app import app
from retrieval.cli.choices import DeviceName
from retrieval.cli.options import OVERWRITE_HELP
from retrieval.console import print_json

TRAIN_LAYOUTS = ("market", "duke", "msmt17", "veri", "folders")
DATASETS = ("digits",)


def _source(layout: Optional[Tuple[str, Path]], dataset: Optional[str]) -> tuple[str | None, str | None, str | None]:
    """(dataset, layout kind, root) from --layout KIND ROOT / --dataset NAME: exactly one of them."""
    kind, root = layout if layout else (None, None)
    if (kind is None) == (dataset is None):
        raise typer.BadParameter("give exactly one of --layout KIND ROOT or --dataset digits", param_hint="--layout / --dataset")
    if kind is not None and kind not in TRAIN_LAYOUTS:
        raise typer.BadParameter(f"unknown layout {kind!r}; choose from {', '.join(TRAIN_LAYOUTS)}", param_hint="--layout")
    if dataset is not None and dataset not in DATASETS:
        raise typer.BadParameter(f"unknown dataset {dataset!r}; choose from {', '.join(DATASETS)}", param_hint="--dataset")
    return dataset, kind, None if root is None else str(root)


def _image_size(text: Optional[str]) -> tuple[int, int] | None:
    if text is None:
        return None
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise typer.BadParameter(f"expected HEIGHTxWIDTH such as 256x128, got {text!r}", param_hint="--image-size") from None
    if height < 1 or width < 1:
        raise typer.BadParameter("height and width must be positive", param_hint="--image-size")
    return height, width


@app.command("train")
def train_command(
    out: Path = typer.Option(..., "--out", help="Model folder to write (model.pt, config.json, checkpoint.pt)."),
    layout: Optional[Tuple[str, Path]] = typer.Option(
        None, "--layout", metavar="KIND ROOT", help="Images of a data set layout: market, duke, msmt17, veri, or folders (ROOT/<identity>/<images>)."
    ),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A built-in data set: digits (scikit-learn's 8×8 digits, open-set 0–5 → 6–9)."),
    loss: str = typer.Option("softmax+triplet:batch-hard", "--loss", help="Weighted sum of losses, e.g. 1.0*softmax+0.5*triplet:soft-margin."),
    epochs: int = typer.Option(15, "--epochs", min=1, help="Epochs to train (in all, counting resumed ones)."),
    p: Optional[int] = typer.Option(None, "--p", min=1, help="Identities per batch (default 16; digits 6)."),
    k: Optional[int] = typer.Option(None, "--k", min=1, help="Images per identity in a batch (default 4; digits 16)."),
    image_size: Optional[str] = typer.Option(None, "--image-size", help="HEIGHTxWIDTH of the network input (default 256x128; digits 8x8)."),
    backbone: Optional[str] = typer.Option(None, "--backbone", help="small-cnn or resnet (default resnet; digits small-cnn)."),
    depth: Optional[int] = typer.Option(None, "--depth", help="ResNet depth: 10, 18 or 34 (default 18)."),
    width: Optional[int] = typer.Option(None, "--width", min=1, help="Base channel width (default 64 for resnet, 32 for small-cnn)."),
    weights: Optional[Path] = typer.Option(None, "--weights", help="A state-dict file to start the backbone from (ResNet names: conv1, layer1…)."),
    lr: float = typer.Option(3.5e-4, "--lr", min=0.0, help="Base learning rate of Adam (warm-up and step decay scaled to --epochs)."),
    device: DeviceName = typer.Option(DeviceName.auto, "--device", help="auto, cpu or cuda."),
    seed: int = typer.Option(0, "--seed", help="Seed of the initialisation, sampling and augmentations."),
    eval_every: int = typer.Option(0, "--eval-every", min=0, help="Evaluate on the query/gallery split every N epochs and at the end (0: never)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the checkpoint in --out."),
    threads: int = typer.Option(0, "--threads", min=0, help="CPU threads for torch (0: torch's default; 1 is often fastest for tiny images)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Where the run folder goes (default $RETRIEVE_WORKSPACE or ./retrieve-runs)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (model folder, run folder, last epoch, evaluation)."),
) -> None:
    """Train a metric-learning model (BNNeck; PK batches) on images; write a model folder and a run folder."""
    from retrieval.jobs.train import check_train_options, train

    source_dataset, kind, root = _source(layout, dataset)
    size = _image_size(image_size)
    check_train_options(backbone, depth, loss)
    from retrieval.train import require_torch

    require_torch()
    from retrieval.progress import stage_progress
    from retrieval.train.trainer import TrainConfig

    config = TrainConfig(
        model_dir=str(out), dataset=source_dataset, layout=kind, root=root, loss=loss, epochs=epochs, p=p, k=k,
        image_size=size, backbone=backbone, depth=depth, width=width, lr=lr, device=device.value, seed=seed,
        eval_every=eval_every, weights=None if weights is None else str(weights), resume=resume,
        workspace=None if workspace is None else str(workspace), command=shlex.join(["retrieve", *sys.argv[1:]]),
    )
    with stage_progress(quiet=as_json) as progress:
        result = train(config, threads=threads, progress=progress,
                       warn=lambda m: typer.echo(f"retrieve: warning: {m}", err=True))
    if as_json:
        print_json(result, indent=2)
        return
    _print_training(result)


def _print_training(result: dict) -> None:
    last = result["last_epoch"] or {}
    typer.echo(f"trained {result['model']} for {result['epochs_done']} epochs on {result['num_train_images']} images "
               f"({result['num_classes']} identities, {result['device']})")
    if last:
        typer.echo(f"last epoch: loss {last['loss']:.4f}, active triplets {100 * (last.get('active_triplets') or 0):.1f}%, "
                   f"mean d_ap {last.get('mean_d_ap', float('nan')):.3f}, d_an {last.get('mean_d_an', float('nan')):.3f}")
    if result["evaluation"]:
        ev = result["evaluation"]
        typer.echo(f"evaluation (epoch {ev['epoch']}, {ev['protocol']}, {ev['metric_distance']}): "
                   f"mAP {100 * ev['mAP']:.2f}%  rank-1 {100 * ev['rank-1']:.2f}%  mINP {100 * ev['mINP']:.2f}%")
    typer.echo(f"model: {result['model_dir']}\nrun: {result['run_dir']}")


@app.command("embed")
def embed_command(
    model_dir: Path = typer.Argument(..., help="A model folder written by `retrieve train`."),
    out: Path = typer.Option(..., "--out", help="Embeddings Parquet file to write."),
    layout: Optional[Tuple[str, Path]] = typer.Option(None, "--layout", metavar="KIND ROOT", help="Images of a data set layout (as for train)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="A built-in data set: digits."),
    feature: str = typer.Option("post-bn", "--feature", help="post-bn (after the BNNeck, default) or pre-bn; L2-normalised."),
    device: DeviceName = typer.Option(DeviceName.auto, "--device", help="auto, cpu or cuda."),
    batch_size: int = typer.Option(256, "--batch-size", min=1, help="Images per forward pass."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object {out, rows, dim, feature, normalized, model, device}."),
) -> None:
    """Embed every image of a data set with a trained model; write id, embedding, pid, camid, split, path."""
    from retrieval.jobs.train import embed
    from retrieval.progress import stage_progress

    source_dataset, kind, root = _source(layout, dataset)
    with stage_progress(quiet=as_json) as progress:
        result = embed(model_dir, out, overwrite=overwrite, progress=progress, dataset=source_dataset, layout=kind,
                       root=root, feature=feature, device=device.value, batch_size=batch_size)
    if as_json:
        print_json(result, indent=2)
    else:
        typer.echo(f"wrote {result['rows']} embeddings of dimension {result['dim']} ({result['feature']}, L2-normalised) to {result['out']}")
