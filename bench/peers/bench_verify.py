"""Verification (ROC AUC, TAR@FAR over every query × gallery trial) against scikit-learn and fast-reid.

    bench/peers/.venv/bin/python bench/peers/bench_verify.py [--shapes market] [--repeats 3]

Ours: `retrieve verify --trials query-gallery --distance sqeuclidean` (whole command) and the
library call (query_gallery_verification over EmbeddingDistances). scikit-learn: the same squared
distances from numpy, the kept trials flattened, ``roc_curve`` (every threshold kept, so that the
TAR at a FAR is exact) and ``roc_auc_score``. fast-reid: its ROC path (``evaluate_roc``, Cython,
then ``roc_curve``), whose AUC is compared. Writes bench/results/peers_verify.json.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import datasets
import ours
from compare import phases_text
from harness import (RESULTS, Contender, bench_parser, bench_status, child_argv, fmt, run_rounds, start, summarise,
                     table, write_results)

FARS = "1e-1,1e-2,1e-3,1e-4"


def contenders(s: datasets.Shape, tmp: Path) -> list[Contender]:
    return [
        Contender("ours-cli-verify", "`retrieve verify --trials query-gallery --json` (whole command)",
                  lambda r: ours.verify_argv(s.parquet, tmp / f"verify-run-{r}", FARS), kind="ours",
                  parse_stdout_json=True, group=s.name),
        Contender("ours-verify-lib", "read_embeddings + query_gallery_verification(EmbeddingDistances) (library)",
                  lambda r: child_argv("ours-verify-lib", "--data", s.folder, "--fars", FARS), kind="ours", group=s.name),
        Contender("sklearn-roc", "numpy distances + sklearn.metrics.roc_curve(drop_intermediate=False) + roc_auc_score",
                  lambda r: child_argv("sklearn-roc", "--data", s.folder, "--fars", FARS), group=s.name),
        Contender("fastreid-roc", "numpy distances + fastreid.evaluation.roc.evaluate_roc (Cython) + sklearn roc_curve",
                  lambda r: child_argv("fastreid-roc", "--data", s.folder), group=s.name),
    ]


def verification_difference(ours_metrics: dict, peer: dict) -> tuple[float | None, str | None]:
    """Largest |Δ| over AUC and the TAR at every FAR both report (FAR keys compared as numbers)."""
    pairs = {}
    if ours_metrics.get("roc_auc") is not None and peer.get("roc_auc") is not None:
        pairs["roc_auc"] = abs(ours_metrics["roc_auc"] - peer["roc_auc"])
    ours_tar = {float(k): v for k, v in (ours_metrics.get("tar_at_far") or {}).items()}
    for key, value in (peer.get("tar_at_far") or {}).items():
        if float(key) in ours_tar and ours_tar[float(key)] is not None:
            pairs[f"TAR@FAR={key}"] = abs(ours_tar[float(key)] - value)
    if not pairs:
        return None, None
    worst = max(pairs, key=pairs.get)
    return pairs[worst], worst


def compare_rows(rows: list[dict]) -> None:
    by = {r["name"]: r for r in rows}
    cli = by["ours-cli-verify"]
    if "error" in cli:
        return
    reference = ours.verification_metrics_from_cli(cli["report"].get("cli_json") or {})
    cli["metrics"] = reference
    for r in rows:
        if r is cli or "error" in r:
            continue
        r["metrics"] = r["report"].get("metrics")
        r["x_ours_cli"] = r["wall_s"] / cli["wall_s"]
        r["max_abs_difference_vs_ours"], r["worst_metric"] = verification_difference(reference, r["metrics"] or {})


def main() -> None:
    args, mem_cap, shapes, machine = start(bench_parser(__doc__, "market"), "verify")
    for name in args.shapes.split(","):
        s = datasets.ensure(datasets.shape(name))
        print(f"\n# verification, {name}")
        with tempfile.TemporaryDirectory(prefix=f"bench-verify-{name}-") as tmp:
            cs = contenders(s, Path(tmp))
            runs = run_rounds(cs, args.repeats, mem_cap)
            rows = [summarise(c, runs[c.name]) for c in cs]
        compare_rows(rows)
        shapes[name] = {"data": datasets.describe(s), "repeats": args.repeats, "fars": FARS, "rows": rows,
                        "machine": machine, "mem_cap_gb": mem_cap / 2**30}
        print(table([[r["name"], fmt(r.get("wall_s")), fmt(r.get("x_ours_cli")), fmt(r.get("peak_rss_mb"), ".0f"),
                      fmt(r.get("max_abs_difference_vs_ours"), ".1e"), r.get("worst_metric") or "",
                      r.get("error") or phases_text(r.get("report"))] for r in rows],
                    ["contender", "wall s", "× ours", "peak RSS MB", "max |Δ|", "where", "phases s (or error)"]))
        write_results("verify", {"status": bench_status(), "shapes": shapes})
    print(f"-> {RESULTS / 'peers_verify.json'}")


if __name__ == "__main__":
    main()
