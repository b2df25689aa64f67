"""Digits open-set benchmark: raw pixels, an untrained network and trained networks, with our evaluator.

scikit-learn's 8×8 digits; train on 0–5, evaluate on 6–9 (a seeded fifth of each digit's
images as queries, the rest gallery; protocol no-camera; euclidean distance on L2-normalised
post-BN features, raw pixels unnormalised). Writes bench/results/train_digits.json and
prints a table. Usage: python bench/train_digits.py [--epochs 15] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path


LOSSES = ("softmax", "triplet:batch-hard", "softmax+triplet:batch-hard", "triplet:soft-margin", "contrastive")


def machine() -> str:
    import torch

    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for 8×8 images)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_digits.json"))
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    from retrieval.train.digits import load_digits_set
    from retrieval.train.trainer import (TrainConfig, build_model, evaluate_model, evaluate_vectors,
                                         query_gallery_rows, train)

    digits = load_digits_set(args.seed)
    q, g = query_gallery_rows(digits)
    rows = []
    flat = digits.images.reshape(len(digits), -1)
    rows.append({"model": "raw pixels (64-d)", "loss": "-", "epochs": 0, "seconds": 0.0,
                 **evaluate_vectors(digits, q, g, flat[q], flat[g])})

    torch.manual_seed(args.seed)
    untrained = build_model({"backbone": "small-cnn", "depth": None, "width": args.width, "in_channels": 1, "num_classes": 6})
    rows.append({"model": "small CNN, untrained", "loss": "-", "epochs": 0, "seconds": 0.0,
                 **evaluate_model(untrained, digits, torch.device("cpu"))})

    scratch = Path(tempfile.mkdtemp(prefix="train-digits-"))
    try:
        for i, loss in enumerate(LOSSES):
            started = time.perf_counter()
            result = train(TrainConfig(model_dir=str(scratch / f"m{i}"), dataset="digits", loss=loss, epochs=args.epochs,
                                       seed=args.seed, lr=args.lr, width=args.width, device="cpu", eval_every=args.epochs, workspace=str(scratch / "ws")),
                           warn=lambda m: print("warning:", m, file=sys.stderr))
            seconds = time.perf_counter() - started
            ev = result["evaluation"]
            rows.append({"model": "small CNN, trained", "loss": loss, "epochs": args.epochs, "seconds": seconds,
                         "final_train_loss": result["last_epoch"]["loss"], **{k: v for k, v in ev.items() if k != "epoch"}})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    report = {"benchmark": "train_digits", "seed": args.seed, "epochs": args.epochs, "lr": args.lr, "width": args.width,
              "batch": "P=6 identities x K=16 images", "machine": machine(),
              "protocol": "no-camera, euclidean, queries = seeded fifth of digits 6-9", "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'model':24} {'loss':30} {'mAP':>7} {'rank-1':>7} {'seconds':>8}")
    for r in rows:
        print(f"{r['model']:24} {r['loss']:30} {100 * r['mAP']:6.1f}% {100 * r['rank-1']:6.1f}% {r['seconds']:8.1f}")
    print(f"machine: {report['machine']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
