"""Evaluation (CMC, mAP, mINP) against the real toolkits, each contender in its own process.

    bench/peers/.venv/bin/python bench/peers/bench_eval.py [--shapes market,market128,msmt17]
                                                           [--repeats 3] [--slow] [--no-values]

Per shape, interleaved rounds of: the bare GEMM floor (in-process), `retrieve evaluate` (whole
command), our library call, fast-reid's evaluate_rank (Cython; its Python loop), fast-reid's own
build_dist, torchreid's evaluate_rank, pytorch-metric-learning's AccuracyCalculator. Then the
values check on one shared distance matrix, and where our time goes. Prints tables and writes
bench/results/peers_eval.json (shapes merged with earlier runs).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import datasets
import ours
from compare import explain, max_difference, phases_text
from harness import (RESULTS, Contender, bench_parser, bench_status, child_argv, fmt, run_child, run_rounds, start,
                     summarise, table, write_results)

PY_LOOP_NOTE = "Python loop per query"


def contenders(s: datasets.Shape, tmp: Path, slow: bool, gemm_repeats: int) -> list[Contender]:
    big = s.name == "msmt17"
    data = s.folder
    # the pure-Python evaluators take ~1 min at Market shape and ~20 min at MSMT17 shape (when they fit)
    py_repeats = 1 if big else None
    rows = [
        Contender("gemm", "bare float32 GEMM Q×D·D×G (numpy matmul, our block rows), in-process",
                  lambda r: child_argv("gemm", "--data", data, "--repeats", gemm_repeats), kind="floor",
                  best_by=lambda run: run.report.get("gemm_s", float("inf"))),
        Contender("ours-cli", "`retrieve evaluate --json` (whole command)",
                  lambda r: ours.evaluate_argv(s.parquet, tmp / f"eval-run-{r}"), kind="ours", parse_stdout_json=True),
        Contender("ours-lib", "read_embeddings + evaluate_ranking(EmbeddingDistances) (library)",
                  lambda r: child_argv("ours-lib", "--data", data), kind="ours"),
        Contender("fastreid-cy", "numpy distmat + fastreid.evaluation.rank.evaluate_rank (Cython rank_cy)",
                  lambda r: child_argv("fastreid", "--data", data)),
        Contender("fastreid-builddist", "fastreid.utils.compute_dist.build_dist('euclidean') + evaluate_rank (Cython)",
                  lambda r: child_argv("fastreid-builddist", "--data", data), repeats=1),
        Contender("pml", "pytorch_metric_learning AccuracyCalculator(k=None).get_accuracy (its faiss k-NN)",
                  lambda r: child_argv("pml", "--data", data)),
    ]
    if slow or not big:
        rows += [
            Contender("fastreid-py", f"numpy distmat + fastreid evaluate_rank(use_cython=False) ({PY_LOOP_NOTE})",
                      lambda r: child_argv("fastreid", "--data", data, "--python"), repeats=py_repeats),
            Contender("torchreid", "torchreid compute_distance_matrix (torch) + torchreid.reid.metrics.rank."
                      f"evaluate_rank (Python: no rank_cy.pyx on the index; {PY_LOOP_NOTE})",
                      lambda r: child_argv("torchreid", "--data", data), repeats=py_repeats),
        ]
    for c in rows:
        c.group = s.name
    return rows


def values_check(s: datasets.Shape, work: Path, mem_cap: int, log, python_loops: bool = True) -> dict:
    """Every evaluator on our one distance matrix of the .npy data; differences are conventions only."""
    log(f"  values check on one shared distance matrix ({s.name})")
    base = run_child(child_argv("values-ours", "--data", s.folder, "--work", work), mem_cap_bytes=mem_cap)
    if not base.ok:
        return {"error": base.error_line()}
    ties = base.report["ties"]
    out = {"ours": base.report["metrics"], "ours_no_camera": base.report["metrics_no_camera"], "ties": ties,
           "peers": {}}
    for name, argv, reference in (
        ("fastreid-cy", child_argv("values-fastreid", "--data", s.folder, "--work", work), "ours"),
        ("fastreid-py", child_argv("values-fastreid", "--data", s.folder, "--work", work, "--python"), "ours"),
        ("torchreid", child_argv("values-torchreid", "--data", s.folder, "--work", work), "ours"),
        ("pml", child_argv("values-pml", "--data", s.folder, "--work", work), "ours_no_camera"),
    ):
        if not python_loops and name in ("fastreid-py", "torchreid"):
            out["peers"][name] = {"error": "skipped (--values-no-python-loops)"}
            continue
        run = run_child(argv, mem_cap_bytes=mem_cap)
        if not run.ok:
            out["peers"][name] = {"error": run.error_line()}
            continue
        diff, key = max_difference(out[reference], run.report["metrics"])
        tied = ties["queries_with_match_nonmatch_ties_no_camera" if name == "pml"
                    else "queries_with_match_nonmatch_ties_market"]
        out["peers"][name] = {"metrics": run.report["metrics"], "evaluator": run.report.get("evaluator"),
                              "compared_with": reference, "max_abs_difference": diff, "worst_metric": key,
                              "explanation": explain(name, diff, tied, key)}
        log(f"    {name:12} max |Δ| {fmt(diff, '.1e')} ({key}): {out['peers'][name]['explanation']}")
    return out


def profile(s: datasets.Shape, tmp: Path, mem_cap: int, cprofile: bool) -> dict:
    """Where `retrieve evaluate`'s whole-process time goes (one run of each, not the timed rounds)."""
    cli = run_child(ours.evaluate_argv(s.parquet, tmp / "profile-run"), mem_cap_bytes=mem_cap)
    args = ["--data", s.folder] + (["--cprofile"] if cprofile else [])
    lib = run_child(child_argv("ours-profile", *args), mem_cap_bytes=mem_cap)
    bare = run_child([str(ours.VENV / "bin" / "python"), "-c", "pass"])
    return {"cli_wall_s": cli.wall_s, "cli_peak_rss_mb": cli.peak_rss_mb,
            "cli_run_timings_s": ours.cli_timings(tmp / "profile-run"), "python_start_s": bare.wall_s,
            "library_wall_s": lib.wall_s, "library_phases_s": lib.report.get("phases_s"),
            "library_peak_rss_mb_after_phase": lib.report.get("peak_rss_mb_after_phase"),
            "cprofile": lib.report.get("cprofile"), "error": lib.error_line() or cli.error_line()}


def add_comparisons(rows: list[dict], values: dict | None) -> None:
    by = {r["name"]: r for r in rows}
    cli = by.get("ours-cli", {})
    gemm = (by.get("gemm", {}).get("report") or {}).get("gemm_s")
    cli_metrics = ours.ranking_metrics_from_cli((cli.get("report") or {}).get("cli_json") or {}) if cli.get("wall_s") else None
    no_camera = (values or {}).get("ours_no_camera")
    for r in rows:
        report = r.get("report") or {}
        if r["kind"] == "floor":
            if gemm:  # the floor's own figure is the in-process GEMM, not its process
                r["process_wall_s"], r["wall_s"] = r["wall_s"], gemm
                r["note"] = (f"in-process GEMM, min of {len(report.get('gemm_s_all', []))} × {r['runs']} runs; "
                             f"without junk rows {report.get('gemm_no_junk_s', 0):.3f} s")
            continue
        if cli.get("wall_s") and r.get("wall_s") and "error" not in r:
            r["x_ours_cli"] = r["wall_s"] / cli["wall_s"]  # > 1: ours is faster
        if gemm and r.get("wall_s") and "error" not in r:
            r["x_gemm"] = r["wall_s"] / gemm
        metrics = report.get("metrics")
        if r["name"] == "ours-cli":
            metrics = cli_metrics
        r["metrics"] = metrics
        reference = no_camera if r["name"] == "pml" else cli_metrics
        if r["name"] != "ours-cli" and metrics:
            r["max_abs_difference_vs_ours"], r["worst_metric"] = max_difference(reference, metrics)
    lib = by.get("ours-lib", {})
    evaluate_s = ((lib.get("report") or {}).get("phases_s") or {}).get("evaluate")
    if evaluate_s and gemm:
        lib["evaluate_phase_x_gemm"] = evaluate_s / gemm


def print_shape(name: str, entry: dict) -> None:
    rows = entry["rows"]
    print(f"\n## {name}: {entry['data'].get('queries')} × {entry['data'].get('gallery')} × {entry['data'].get('dim')}")
    print(table([[r["name"], fmt(r.get("wall_s")), fmt(r.get("x_ours_cli"), ".2f"), fmt(r.get("x_gemm"), ".2f"),
                  fmt(r.get("peak_rss_mb"), ".0f"), fmt(r.get("max_abs_difference_vs_ours"), ".1e"),
                  r.get("error") or r.get("note") or phases_text(r.get("report"))] for r in rows],
                ["contender", "wall s", "× ours", "× GEMM", "peak RSS MB", "max |Δ|", "phases s (or error)"]))


def main() -> None:
    parser = bench_parser(__doc__, "market,market128,msmt17")
    parser.add_argument("--slow", action="store_true", help="also the pure-Python evaluators at MSMT17 shape (~20 min each)")
    parser.add_argument("--no-values", action="store_true", help="skip the shared-matrix values check")
    parser.add_argument("--values-no-python-loops", action="store_true",
                        help="values check without the pure-Python evaluators (they are still timed)")
    args, mem_cap, shapes, machine = start(parser, "eval")
    print(f"machine: {machine['cpu']}, {machine['cores']} cores; memory cap per child {mem_cap / 2**30:.1f} GiB")
    for name in args.shapes.split(","):
        s = datasets.ensure(datasets.shape(name))
        print(f"\n# {name}")
        with tempfile.TemporaryDirectory(prefix=f"bench-eval-{name}-") as tmp:
            tmp = Path(tmp)
            cs = contenders(s, tmp, args.slow, gemm_repeats=2)
            runs = run_rounds(cs, args.repeats, mem_cap)
            rows = [summarise(c, runs[c.name]) for c in cs]
            values = None if args.no_values or name == "msmt17" else values_check(
                s, tmp / "values", mem_cap, print, python_loops=not args.values_no_python_loops)
            add_comparisons(rows, values)
            entry = {"data": datasets.describe(s), "repeats": args.repeats, "rows": rows, "values": values,
                     "profile": profile(s, tmp, mem_cap, cprofile=name == "market"),
                     "machine": machine, "mem_cap_gb": mem_cap / 2**30}
        shapes[name] = entry
        print_shape(name, entry)
        write_results("eval", {"status": bench_status(), "shapes": shapes})
    print(f"-> {RESULTS / 'peers_eval.json'}")


if __name__ == "__main__":
    main()
