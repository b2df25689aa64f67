"""Digits open-set benchmark: raw pixels, the untrained network, every loss, mutual learning and
aligned parts, mean ± sd over seeds, with our evaluator.

scikit-learn's 8×8 digits; train on 0–5, evaluate on 6–9 (a fixed fifth of each digit's images as
queries, the rest gallery, the same for every seed; protocol no-camera; euclidean distance on
L2-normalised features, raw pixels as they are). The default recipe is measured end to end through
the CLI (`retrieve train` -> `retrieve embed` -> `retrieve evaluate --protocol no-camera`); the
other rows through the trainer's own evaluation (the same evaluator; `embed` + `evaluate`
reproduce it, which the default recipe's rows check). Writes bench/results/train_digits.json.

Usage: python bench/train_digits.py [--seeds 0 1 2] [--threads 1] [--only default,losses,mutual,parts]
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

import numpy as np

LOSSES = ("softmax", "triplet:batch-hard", "softmax+triplet:batch-hard", "triplet:soft-margin", "contrastive",
          "triplet:batch-all")
FEATURES = ("body", "pooled", "post-bn")
LOCAL_WEIGHTS = (0.5, 1.0)
SECTIONS = ("default", "losses", "mutual", "parts")


def machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores (shared with other jobs), "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads)")


def summary(name: str, runs: list[dict], **extra) -> dict:
    """mean ± sd (population, over seeds) of mAP, rank-1 and mINP, and the seconds."""
    row = {"model": name, **extra, "seeds": [r["seed"] for r in runs]}
    for key in ("mAP", "rank-1", "mINP", "seconds", "cpu_seconds"):
        values = np.array([r[key] for r in runs if r.get(key) is not None], dtype=float)
        if len(values):
            row[key] = float(values.mean())
            row[f"{key}_sd"] = float(values.std())
            row[f"{key}_min"] = float(values.min())
            row[f"{key}_per_seed"] = values.tolist()
    return row


def cli(args: list[str]) -> dict:
    from retrieval.cli import run

    import contextlib
    import io

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        code = run(args + ["--json"])
    if code != 0:
        raise SystemExit(f"retrieve {' '.join(args)} failed with exit code {code}")
    return json.loads(buffer.getvalue())


EPOCHS: list[str] = []  # ["--epochs", N] for a quick smoke run (--epochs); empty: the recipe's


def default_recipe(scratch: Path, seed: int, threads: int) -> dict:
    """train -> embed -> evaluate through the CLI; also the untrained network and each feature."""
    model, emb = scratch / f"default-{seed}", scratch / f"default-{seed}.parquet"
    started, cpu_started = time.perf_counter(), time.process_time()
    trained = cli(["train", "--dataset", "digits", "--seed", str(seed), "--threads", str(threads), "--device", "cpu",
                   "--eval-every", "1000", "--out", str(model), "--workspace", str(scratch / "ws"), *EPOCHS])
    cli(["embed", str(model), "--dataset", "digits", "--out", str(emb), "--device", "cpu"])
    evaluated = cli(["evaluate", str(emb), "--protocol", "no-camera", "--workspace", str(scratch / "ws")])
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    row = {"seed": seed, "seconds": seconds, "cpu_seconds": cpu_seconds, "mAP": evaluated["mAP"],
           "rank-1": evaluated["cmc"]["1"], "mINP": evaluated["mINP"],
           "trainer_mAP": trained["evaluation"]["mAP"], "untrained": trained["initial_evaluation"]}
    return row, model


def feature_rows(model: Path) -> dict:
    import torch

    from retrieval.train.embed import load_network
    from retrieval.train.trainer import evaluate_model
    from retrieval.train.digits import load_digits_set

    _, network = load_network(model, torch.device("cpu"))
    digits = load_digits_set()
    return {f: evaluate_model(network, digits, torch.device("cpu"), f) for f in FEATURES}


def trained_row(scratch: Path, name: str, seed: int, **options) -> dict:
    from retrieval.train.trainer import TrainConfig, train

    started = time.perf_counter()
    if EPOCHS:
        options.setdefault("epochs", int(EPOCHS[1]))
    result = train(TrainConfig(model_dir=str(scratch / name), dataset="digits", seed=seed, device="cpu",
                               eval_every=10_000, workspace=str(scratch / "ws"), **options),
                   warn=lambda m: print("warning:", m, file=sys.stderr))
    ev = result["evaluation"]
    return {"seed": seed, "seconds": time.perf_counter() - started, "mAP": ev["mAP"], "rank-1": ev["rank-1"],
            "mINP": ev["mINP"], "final_train_loss": result["last_epoch"]["loss"]}


def peer_rows(model: Path, seed: int) -> dict:
    """Peer 1, peer 2 and both (concatenated) of a two-peer model, with its retrieval feature."""
    import torch

    from retrieval.train.digits import load_digits_set
    from retrieval.train.embed import load_network
    from retrieval.train.trainer import evaluate_model

    saved, network = load_network(model, torch.device("cpu"))
    digits = load_digits_set()
    return {peer: {"seed": seed, **evaluate_model(network, digits, torch.device("cpu"), saved["feature"], peer)}
            for peer in (1, 2, "all")}


def pair_of_independent(models: list[Path], seeds: list[int]) -> list[dict]:
    """Two networks trained apart (seeds s and the next one), features concatenated: the ensemble control for DML."""
    import torch

    from retrieval.train.digits import load_digits_set
    from retrieval.train.embed import embed_rows, load_network
    from retrieval.train.trainer import evaluate_vectors, query_gallery_rows

    digits = load_digits_set()
    q, g = query_gallery_rows(digits)
    nets = [load_network(m, torch.device("cpu")) for m in models]
    rows = []
    for i, seed in enumerate(seeds):
        pair = [nets[i], nets[(i + 1) % len(nets)]]
        vectors = {}
        for name, rows_ in (("q", q), ("g", g)):
            parts = [embed_rows(net, digits, rows_, torch.device("cpu"), saved["feature"])[0] for saved, net in pair]
            vectors[name] = np.concatenate(parts, axis=1) / np.sqrt(2)
        rows.append({"seed": seed, **evaluate_vectors(digits, q, g, vectors["q"], vectors["g"])})
    return rows


def aligned_rows(model: Path, seed: int) -> dict:
    """Global only, local (aligned) only, and global + w · local (the engine's --metric aligned)."""
    import retrieval
    from retrieval.data.store import read_embeddings
    from retrieval.eval.aligned import aligned_distances
    from retrieval.eval.distances import PrecomputedDistances
    from retrieval.eval.evaluate import evaluate_ranking

    out = model.with_suffix(".parquet")
    cli(["embed", str(model), "--dataset", "digits", "--out", str(out), "--device", "cpu"])
    emb = read_embeddings(out)
    q, g = emb.by_split("query"), emb.by_split("gallery")
    local = evaluate_ranking(PrecomputedDistances(aligned_distances(q.parts, g.parts, emb.num_parts)), q.pid, g.pid,
                             protocol="no-camera", max_rank=10, keep_top=0)
    results = [("global", retrieval.evaluate(str(out), metric="euclidean", protocol="no-camera", keep_top=0).final),
               ("local", local)]
    results += [(f"global+{w}*local", retrieval.evaluate(str(out), metric="aligned", local_weight=w,
                                                         protocol="no-camera", keep_top=0).final) for w in LOCAL_WEIGHTS]
    return {name: {"seed": seed, "mAP": float(r.mAP), "rank-1": float(r.cmc[0]), "mINP": float(r.mINP)}
            for name, r in results}


def raw_pixels() -> dict:
    from retrieval.train.digits import load_digits_set
    from retrieval.train.trainer import evaluate_vectors, query_gallery_rows

    digits = load_digits_set()
    q, g = query_gallery_rows(digits)
    flat = digits.images.reshape(len(digits), -1)
    return {"seed": 0, "seconds": 0.0, **evaluate_vectors(digits, q, g, flat[q], flat[g])}


def default_section(args, scratch: Path, rows: list[dict]) -> list[Path]:
    """The default recipe through the CLI, its untrained network, its features and its peers one by one."""
    from retrieval.train.recipes import DIGITS

    runs, models, peers = [], [], {1: [], 2: [], "all": []}
    for seed in args.seeds:
        row, model = default_recipe(scratch, seed, args.threads)
        runs.append(row)
        models.append(model)
        row.update({f"feature_{f}": v["mAP"] for f, v in feature_rows(model).items()})
        for peer, value in peer_rows(model, seed).items():
            peers[peer].append(value)
        print(f"default seed {seed}: mAP {row['mAP']:.4f} (trainer {row['trainer_mAP']:.4f}), untrained "
              f"{row['untrained']['mAP']:.4f}, {row['seconds']:.0f} s", flush=True)
    loss = DIGITS["loss"]
    rows.append(summary("small CNN, untrained (the same two peers, body)", [{"seed": r["seed"], **r["untrained"]} for r in runs], loss="-"))
    rows.append(summary("default recipe: CLI train -> embed -> evaluate", runs, loss=loss,
                        trainer_mAP=[r["trainer_mAP"] for r in runs]))
    for f in FEATURES:
        rows.append(summary(f"default recipe, feature {f}", [{"seed": r["seed"], "mAP": r[f"feature_{f}"]} for r in runs], loss=loss))
    rows.append(summary("default recipe, peer 1 alone", peers[1], loss=loss))
    rows.append(summary("default recipe, peer 2 alone", peers[2], loss=loss))
    return models


def losses_section(args, scratch: Path, rows: list[dict]) -> dict[str, list[Path]]:
    """One network (the default recipe with --mutual 1) for every loss."""
    models = {}
    for loss in LOSSES:
        names = [f"single-{loss.replace(':', '-')}-{s}" for s in args.seeds]
        runs = [trained_row(scratch, name, s, loss=loss, mutual=1) for name, s in zip(names, args.seeds)]
        models[loss] = [scratch / name for name in names]
        rows.append(summary("one network (--mutual 1)", runs, loss=loss))
        print(f"{loss}: {rows[-1]['mAP']:.4f} ± {rows[-1]['mAP_sd']:.4f}", flush=True)
    return models


def mutual_section(args, scratch: Path, rows: list[dict], singles: dict[str, list[Path]]) -> None:
    """DML with the KL term (softmax in the loss), and the ensemble controls: the same two peers without
    the mutual terms, and two networks trained apart."""
    from retrieval.train.recipes import DIGITS

    loss = "softmax+triplet:batch-hard"
    peers: dict = {1: [], "all": []}
    for seed in args.seeds:
        timing = trained_row(scratch, f"dml-kl-{seed}", seed, loss=loss)
        values = peer_rows(scratch / f"dml-kl-{seed}", seed)
        for peer in peers:
            peers[peer].append({**values[peer], "seconds": timing["seconds"]})
    rows.append(summary("DML with KL, peer 1 alone", peers[1], loss=loss))
    rows.append(summary("DML with KL, both peers concatenated", peers["all"], loss=loss))
    side_by_side = []
    for seed in args.seeds:
        timing = trained_row(scratch, f"side-by-side-{seed}", seed, mutual_weight=0.0)
        side_by_side.append({**peer_rows(scratch / f"side-by-side-{seed}", seed)["all"], "seconds": timing["seconds"]})
    rows.append(summary("two peers, --mutual-weight 0 (no mutual terms), concatenated", side_by_side, loss=DIGITS["loss"]))
    if DIGITS["loss"] in singles:
        rows.append(summary("two networks trained apart (--mutual 1), concatenated",
                            pair_of_independent(singles[DIGITS["loss"]], args.seeds), loss=DIGITS["loss"]))


def parts_section(args, scratch: Path, rows: list[dict]) -> None:
    from retrieval.train.recipes import DIGITS

    loss = f"{DIGITS['loss']}+aligned"
    per_kind: dict = {}
    for seed in args.seeds:
        timing = trained_row(scratch, f"aligned-{seed}", seed, parts=4, loss=loss)
        for kind, value in aligned_rows(scratch / f"aligned-{seed}", seed).items():
            per_kind.setdefault(kind, []).append({**value, "seconds": timing["seconds"]})
    for kind, runs in per_kind.items():
        rows.append(summary(f"default recipe + aligned parts (P=4), {kind} distance", runs, loss=loss))
    means = {kind: np.mean([r["mAP"] for r in runs]) for kind, runs in per_kind.items()}
    print("aligned: " + ", ".join(f"{kind} {value:.4f}" for kind, value in means.items()), flush=True)


def run_sections(args, scratch: Path) -> list[dict]:
    rows = [summary("raw pixels (64-d)", [raw_pixels()], loss="-")]
    if "default" in args.only:
        default_section(args, scratch, rows)
    singles = losses_section(args, scratch, rows) if "losses" in args.only else {}
    if "mutual" in args.only:
        mutual_section(args, scratch, rows, singles)
    if "parts" in args.only:
        parts_section(args, scratch, rows)
    return rows


def print_table(rows: list[dict]) -> None:
    print(f"{'model':58} {'loss':28} {'mAP':>16} {'rank-1':>8} {'s/run':>6}")
    for r in rows:
        sd = f" ± {100 * r.get('mAP_sd', 0):.1f}" if len(r["seeds"]) > 1 else ""
        rank1 = f"{100 * r['rank-1']:7.1f}%" if "rank-1" in r else " " * 8
        secs = f"{r['seconds']:6.0f}" if r.get("seconds") else " " * 6
        print(f"{r['model'][:58]:58} {r.get('loss', '-')[:28]:28} {100 * r['mAP']:8.1f}%{sd:7} {rank1} {secs}")


def markdown_table(rows: list[dict]) -> str:
    """The docs' table: mAP mean ± sd and the lowest seed, rank-1 mean and lowest, mINP, seconds per run."""
    lines = ["| features | loss | mAP | lowest seed | rank-1 (lowest) | mINP |", "| --- | --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        sd = f" ± {100 * r['mAP_sd']:.1f}" if len(r["seeds"]) > 1 else ""
        rank1 = f"{100 * r['rank-1']:.1f} % ({100 * r['rank-1_min']:.1f})" if "rank-1" in r else "–"
        minp = f"{100 * r['mINP']:.1f} %" if "mINP" in r else "–"
        lines.append(f"| {r['model']} | {r.get('loss', '-')} | {100 * r['mAP']:.1f}{sd} % | {100 * r['mAP_min']:.1f} % "
                     f"| {rank1} | {minp} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for 8×8 images)")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    parser.add_argument("--epochs", type=int, default=None, help="override the recipe's epochs (a quick smoke run)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "train_digits.json"))
    args = parser.parse_args(argv)
    if args.epochs:
        EPOCHS[:] = ["--epochs", str(args.epochs)]
    args.only = set(args.only.split(","))

    import torch

    torch.set_num_threads(args.threads)
    from retrieval.train.recipes import DIGITS

    scratch = Path(tempfile.mkdtemp(prefix="train-digits-"))
    started = time.perf_counter()
    try:
        rows = run_sections(args, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = {"benchmark": "train_digits", "seeds": args.seeds, "recipe": {k: v for k, v in DIGITS.items()},
              "epochs_override": args.epochs,
              "machine": machine(), "wall_seconds": time.perf_counter() - started,
              "protocol": "no-camera, euclidean on L2-normalised features; digits 6-9, 143 queries (a fixed fifth per digit), 571 gallery",
              "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print_table(rows)
    print(markdown_table(rows))
    print(f"machine: {report['machine']}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
