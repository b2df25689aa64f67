"""k-reciprocal re-ranking against fast-reid's published ``re_ranking``, each in its own process.

    bench/peers/.venv/bin/python bench/peers/bench_rerank.py [--shapes market,msmt17] [--repeats 3]

Ours: `retrieve evaluate --rerank --rerank-exclude-junk` (whole command; junk rows left out of the
graph, as the peers' loaders leave them out of their data). fast-reid: numpy Euclidean q×g, q×q
and g×g matrices, ``fastreid.evaluation.rerank.re_ranking`` (k1=20, k2=6, λ=0.3), then its Cython
evaluate_rank. At MSMT17 shape the peer's dense inputs do not fit (g×g alone is 25 GiB): its
error is shown, and ours (about five minutes here) runs once. Writes bench/results/peers_rerank.json.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import datasets
import ours
from compare import max_difference, phases_text
from harness import (RESULTS, Contender, bench_parser, bench_status, child_argv, fmt, run_rounds, start, summarise,
                     table, write_results)


def contenders(s: datasets.Shape, tmp: Path) -> list[Contender]:
    once = 1 if s.name == "msmt17" else None
    return [
        Contender("ours-cli-rerank", "`retrieve evaluate --rerank --rerank-exclude-junk --json` (whole command)",
                  lambda r: ours.evaluate_argv(s.parquet, tmp / f"rerank-run-{r}", rerank=True, rerank_exclude_junk=True),
                  kind="ours", parse_stdout_json=True, repeats=once, group=s.name),
        Contender("fastreid-rerank", "numpy q×g, q×q, g×g + fastreid.evaluation.rerank.re_ranking + evaluate_rank (Cython)",
                  lambda r: child_argv("fastreid-rerank", "--data", s.folder), repeats=once, group=s.name),
    ]


def compare_rows(rows: list[dict]) -> None:
    by = {r["name"]: r for r in rows}
    ours_row = by["ours-cli-rerank"]
    ours_metrics = None
    if ours_row.get("wall_s") and "error" not in ours_row:
        ours_metrics = ours.ranking_metrics_from_cli(ours_row["report"].get("cli_json") or {})
        ours_row["metrics"] = ours_metrics
    peer = by["fastreid-rerank"]
    if "error" not in peer and ours_metrics:
        peer["metrics"] = peer["report"].get("metrics")
        peer["x_ours_cli"] = peer["wall_s"] / ours_row["wall_s"]
        peer["peak_rss_x_ours"] = peer["peak_rss_mb"] / ours_row["peak_rss_mb"]
        peer["max_abs_difference_vs_ours"], peer["worst_metric"] = max_difference(ours_metrics, peer["metrics"])
        phases = peer["report"].get("phases_s", {})
        peer["re_ranking_phase_x_ours_cli"] = phases.get("re_ranking", 0) / ours_row["wall_s"]
    ours_row["cli_run_timings_s"] = ours_row.get("report", {}).get("run_timings_s")


def main() -> None:
    args, mem_cap, shapes, machine = start(bench_parser(__doc__, "market,msmt17"), "rerank")
    for name in args.shapes.split(","):
        s = datasets.ensure(datasets.shape(name))
        print(f"\n# re-ranking, {name}")
        with tempfile.TemporaryDirectory(prefix=f"bench-rerank-{name}-") as tmp:
            tmp = Path(tmp)
            cs = contenders(s, tmp)
            runs = run_rounds(cs, args.repeats, mem_cap)
            rows = [summarise(c, runs[c.name]) for c in cs]
            best = min((r for r in runs["ours-cli-rerank"] if r.ok), key=lambda r: r.wall_s, default=None)
            if best is not None:
                rows[0]["report"]["run_timings_s"] = ours.cli_timings(Path(best.argv[best.argv.index("--out") + 1]))
            compare_rows(rows)
        shapes[name] = {"data": datasets.describe(s), "repeats": args.repeats, "rows": rows, "machine": machine,
                        "mem_cap_gb": mem_cap / 2**30}
        print(table([[r["name"], fmt(r.get("wall_s")), fmt(r.get("x_ours_cli")), fmt(r.get("peak_rss_mb"), ".0f"),
                      fmt(r.get("max_abs_difference_vs_ours"), ".1e"), r.get("error") or phases_text(r.get("report"))]
                     for r in rows], ["contender", "wall s", "× ours", "peak RSS MB", "max |Δ|", "phases s (or error)"]))
        write_results("rerank", {"status": bench_status(), "shapes": shapes})
    print(f"-> {RESULTS / 'peers_rerank.json'}")


if __name__ == "__main__":
    main()
