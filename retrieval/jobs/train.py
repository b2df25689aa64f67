"""The train and embed jobs: option checks, the output locks, then the trainer (``retrieval.train``).

``train --out X`` holds X's lock for the whole run, so two trainings of one model folder cannot
both pass the trainer's "already holds a model" check: the second fails at once with a one-line
error. ``embed --out F`` refuses an existing file unless asked and holds F's lock while it writes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from retrieval.common.atomic import check_output, output_lock
from retrieval.common.progress import ProgressCallback
from retrieval.errors import OptionError

BACKBONES = ("small-cnn", "resnet")
RESNET_DEPTHS = (10, 18, 34)
FEATURES = ("post-bn", "pre-bn")


def check_train_options(backbone: str | None, depth: int | None, loss: str) -> None:
    if backbone is not None and backbone not in BACKBONES:
        raise OptionError(f"unknown backbone {backbone!r}; choose small-cnn or resnet", "--backbone")
    if depth is not None and depth not in RESNET_DEPTHS:
        raise OptionError("ResNet depth must be 10, 18 or 34", "--depth")
    from retrieval.train.combine import parse_loss_spec

    try:
        parse_loss_spec(loss)
    except ValueError as exc:
        raise OptionError(str(exc), "--loss") from None


def train(config, *, threads: int = 0, progress: ProgressCallback | None = None,
          warn: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train (or resume) the model of ``config`` while holding its folder's lock; the trainer's result object."""
    from retrieval.train import require_torch

    torch = require_torch()
    if threads:
        torch.set_num_threads(threads)
    from retrieval.train.trainer import train as run_trainer

    with output_lock(Path(config.model_dir), wait=0):
        return run_trainer(config, progress=progress, warn=warn)


def embed(model_dir: Path, out: Path, *, overwrite: bool, progress: ProgressCallback | None = None,
          **source: Any) -> dict[str, Any]:
    """Embed a data source with a trained model into ``out`` (exclusive unless ``overwrite``)."""
    if source.get("feature", "post-bn") not in FEATURES:
        raise OptionError("choose post-bn or pre-bn", "--feature")
    check_output(out, overwrite=overwrite)
    from retrieval.train import require_torch

    require_torch()
    from retrieval.train.trainer import embed_to_file

    with output_lock(out, wait=0):
        check_output(out, overwrite=overwrite)
        return embed_to_file(model_dir, out, progress=progress, **source)
