"""Defaults of a training run: one recipe for the built-in digits, one for images on disk.

An option the user leaves open takes the recipe's value; ``TrainConfig.with_defaults`` applies
it. The digits recipe is the one measured in docs/training.md (bench/train_digits.py).
"""

from __future__ import annotations

from typing import Any

DIGITS: dict[str, Any] = {
    "loss": "triplet:batch-hard",
    "epochs": 30,
    "mutual": 2,
    "mutual_weight": 1.0,
    "p": 6,
    "k": 16,
    "image_size": (8, 8),
    "backbone": "small-cnn",
    "width": 16,
    "pool": "avg",
    "head": "none",
    "feature": "body",
    "lr": {"adam": 1e-3, "sgd": 0.05},
}

IMAGES: dict[str, Any] = {
    "loss": "softmax+triplet:batch-hard",
    "epochs": 15,
    "mutual": 1,
    "mutual_weight": 1.0,
    "p": 16,
    "k": 4,
    "image_size": (256, 128),
    "backbone": "resnet",
    "depth": 18,
    "width": 64,
    "small_cnn_width": 32,
    "pool": "avg",
    "head": "none",
    "feature": "post-bn",
    "lr": {"adam": 3.5e-4, "sgd": 0.01},
}


def recipe(dataset: str | None) -> dict[str, Any]:
    """The defaults for a data source: ``--dataset digits`` or a layout of image files."""
    return DIGITS if dataset == "digits" else IMAGES
