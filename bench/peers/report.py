"""The peer benchmark tables as markdown, from bench/results/peers_*.json.

    bench/peers/.venv/bin/python bench/peers/report.py [--write bench/results/peers_tables.md]
                                                       [--docs docs/benchmarks.md]

``--docs`` replaces what lies between the markers ``<!-- tables:start -->`` and
``<!-- tables:end -->`` of that page with the tables.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from compare import phases_text
from harness import RESULTS, fmt, table


def load(name: str) -> dict | None:
    path = RESULTS / f"peers_{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def machine_lines(machine: dict | None) -> list[str]:
    if not machine:
        return []
    blas = []
    for t in machine.get("threadpools", []):
        details = [f"kernel {t['architecture']}"] if t.get("architecture") else []
        details.append(f"{t.get('num_threads')} threads")
        blas.append(f"{t.get('internal_api')} {t.get('version') or ''}".strip()
                    + f" from {Path(t.get('filepath') or '?').parent.name} ({', '.join(details)})")
    return [f"Machine: {machine.get('cpu')}, {machine.get('cores')} cores, {machine.get('mem_total_gb')} GiB.",
            f"Thread pools seen by threadpoolctl after importing numpy, faiss and torch: {'; '.join(blas) or 'n/a'}."
            + (f" Environment: {machine['env']}." if machine.get("env") else "")]


def load_text(entry: dict) -> str:
    machine = entry.get("machine") or {}
    load_avg = "/".join(f"{v:.1f}" for v in machine.get("load_average_1_5_15", []))
    cap = entry.get("mem_cap_gb")
    return (f"load average (1/5/15 min) when it started {load_avg}, {machine.get('mem_available_gb')} GiB free; "
            + (f"memory cap per process {cap:.1f} GiB" if cap else "no memory cap"))


def status_lines(status: dict | None) -> list[str]:
    if not status:
        return []
    versions = ", ".join(f"{k} {v}" for k, v in status.get("versions", {}).items() if v)
    lines = [f"Versions: {versions}."]
    for peer, c in status.get("cython", {}).items():
        state = "built" if c.get("built") else f"NOT built ({c.get('note') or c.get('build_error')})"
        lines.append(f"{peer} Cython evaluator: {state}.")
    return lines


def row_label(r: dict) -> str:
    return f"**{r['name']}**: {r['label']}" if r.get("kind") == "ours" else f"{r['name']}: {r['label']}"


def eval_section(data: dict) -> list[str]:
    out = []
    for shape, entry in data.get("shapes", {}).items():
        d = entry.get("data", {})
        out += [f"### Evaluation, {shape}: {d.get('queries')} × {d.get('gallery')} × {d.get('dim')} "
                f"(peers' .npy: {d.get('gallery_junk_left_out_of_npy', 0)} junk rows left out), min of {entry.get('repeats')} rounds; "
                f"{load_text(entry)}", ""]
        rows = entry["rows"]
        out.append(table([[row_label(r), fmt(r.get("wall_s")), fmt(r.get("x_ours_cli")), fmt(r.get("x_gemm"), ".1f"),
                           fmt(r.get("peak_rss_mb"), ".0f"), fmt(r.get("max_abs_difference_vs_ours"), ".1e"),
                           r.get("error") or r.get("note") or phases_text(r.get("report"))] for r in rows],
                         ["contender: function called", "wall s", "÷ ours CLI", "× GEMM", "peak RSS MB", "max |Δ| vs ours",
                          "in-process phases, s (or the error)"]))
        by = {r["name"]: r for r in rows}
        gemm = (by.get("gemm", {}).get("report") or {})
        lib = by.get("ours-lib", {})
        out += ["", f"GEMM floor (in-process): {fmt(gemm.get('gemm_s'), '.3f')} s for the full gallery, "
                f"{fmt(gemm.get('gemm_no_junk_s'), '.3f')} s without junk rows; our library's evaluate phase = "
                f"{fmt(lib.get('evaluate_phase_x_gemm'), '.2f')} × GEMM. '÷ ours CLI' > 1: ours is faster; "
                "'× GEMM': whole process ÷ the in-process GEMM.", ""]
        values = entry.get("values")
        if values and "peers" in values:
            ties = values.get("ties", {})
            out += [f"Values on one shared distance matrix (ours, of the .npy data): "
                    f"{ties.get('queries_with_match_nonmatch_ties_market')} queries with a match/non-match tie "
                    f"(Market protocol), {ties.get('queries_with_match_nonmatch_ties_no_camera')} without camera filtering.", ""]
            out.append(table([[name, p.get("evaluator") or "", p.get("compared_with", ""),
                               fmt(p.get("max_abs_difference"), ".1e"), p.get("worst_metric") or "",
                               p.get("explanation") or p.get("error", "")] for name, p in values["peers"].items()],
                             ["peer", "evaluator", "compared with", "max |Δ|", "where", "why"]))
            out.append("")
        profile = entry.get("profile")
        if profile:
            out += [f"Where `retrieve evaluate`'s time goes ({shape}, one run): whole command "
                    f"{fmt(profile.get('cli_wall_s'))} s, {fmt(profile.get('cli_peak_rss_mb'), '.0f')} MB; "
                    f"interpreter start {fmt(profile.get('python_start_s'))} s; the command's own timings "
                    f"{json.dumps({k: round(v, 2) for k, v in (profile.get('cli_run_timings_s') or {}).items()})}; "
                    f"library phases (s): {json.dumps({k: round(v, 2) for k, v in (profile.get('library_phases_s') or {}).items()})} "
                    "(distances_only: our distance blocks alone; evaluate: distances + ranking); the process's peak RSS "
                    f"(MB) when each phase ended: {json.dumps({k: round(v) for k, v in (profile.get('library_peak_rss_mb_after_phase') or {}).items()})}.", ""]
    return out


def simple_section(title: str, data: dict, extra) -> list[str]:
    out = []
    for shape, entry in data.get("shapes", {}).items():
        d = entry.get("data", {})
        out += [f"### {title}, {shape}: {d.get('queries')} × {d.get('gallery')} × {d.get('dim')}, "
                f"min of {entry.get('repeats')} rounds; {load_text(entry)}", ""]
        out.append(table([[row_label(r), fmt(r.get("wall_s")), fmt(r.get("x_ours_cli")), fmt(r.get("peak_rss_mb"), ".0f"),
                           fmt(r.get("max_abs_difference_vs_ours"), ".1e"), r.get("worst_metric") or "",
                           r.get("error") or phases_text(r.get("report"))] for r in entry["rows"]],
                         ["contender: function called", "wall s", "÷ ours CLI", "peak RSS MB", "max |Δ| vs ours", "where",
                          "in-process phases, s (or the error)"]))
        out += [""] + extra(entry)
    return out


def rerank_extra(entry: dict) -> list[str]:
    by = {r["name"]: r for r in entry["rows"]}
    ours_row = by.get("ours-cli-rerank", {})
    timings = (ours_row.get("report") or {}).get("run_timings_s")
    return [f"Our command's own timings: {json.dumps({k: round(v, 2) for k, v in (timings or {}).items()})}.", ""] if timings else []


def verify_extra(entry: dict) -> list[str]:
    by = {r["name"]: r for r in entry["rows"]}
    fr = (by.get("fastreid-roc", {}).get("report") or {}).get("fastreid_tpr_at_fpr")
    out = []
    if fr:
        out.append(f"fast-reid's own 'TPR@FPR' (labels 0 = same, 1 = different, score = distance; nearest FPR by "
                   f"argmin): {json.dumps(fr)} — another quantity than TAR@FAR; only its AUC is compared.")
    return out + [""]


def index_section(data: dict) -> list[str]:
    out = []
    for shape, e in data.get("shapes", {}).items():
        d = e.get("data", {})
        out += [f"### Index, {shape}: {d.get('queries')} queries × {d.get('gallery')} × {d.get('dim')}, "
                f"`{e['factory']}`, k = {e['k']}, min of {e.get('repeats')} rounds; {load_text(e)}", "",
                f"Exhaustive search (faiss IndexFlatL2): {fmt(e['exact']['search_s'])} s ({fmt(e['exact']['qps'], '.0f')} "
                f"queries/s). Builds: `retrieve build-index` {fmt(e['ours_build']['wall_s'], '.1f')} s whole command "
                f"({fmt(e['ours_build']['peak_rss_mb'], '.0f')} MB); raw faiss from the same factory string "
                f"{fmt(e.get('faiss_build_s'), '.1f')} s in-process; hnswlib {fmt(e.get('hnswlib_build_s'), '.1f')} s in-process.", ""]
        out.append(table([[o["nprobe"], fmt(o["faiss_search_s"], ".3f"), fmt(o["ours_search_s"], ".3f"),
                           fmt(100 * o["overhead"], "+.0f") + " %", fmt(o["faiss_recall"], ".4f"), fmt(o["ours_recall"], ".4f")]
                          for o in e["overhead"]],
                         ["nprobe", "raw faiss search s", "our library search s", "our overhead", "faiss recall@k",
                          "our recall@k"]))
        out.append("")
        out.append(table([[m["nprobe"], fmt(m["ours_recall"], ".4f"), fmt(m["ours_search_s"], ".3f"), fmt(m["hnswlib_ef"], "d"),
                           fmt(m["hnswlib_recall"], ".4f"), fmt(m["hnswlib_search_s"], ".3f"), fmt(m["hnswlib_x_ours"])]
                          for m in e["equal_recall"]],
                         ["nprobe", "our recall@k", "our search s", "hnswlib ef", "hnswlib recall@k", "hnswlib search s",
                          "hnswlib ÷ ours"]))
        out.append("")
        rows = [r for r in e["rows"] if r["name"] in ("ours-search-cli", "faiss-raw-whole")]
        out.append(table([[row_label(r), fmt(r.get("wall_s")), fmt(r.get("peak_rss_mb"), ".0f"),
                           fmt(r.get("recall"), ".4f"), r.get("error") or phases_text(r.get("report"))] for r in rows],
                         ["whole process", "wall s", "peak RSS MB", "recall@k", "in-process phases, s"]))
        out.append("")
    return out


def startup_section(data: dict) -> list[str]:
    return [f"### Start-up, min of {data.get('repeats')}; {load_text(data)}", "",
            table([[r["name"], fmt(r.get("wall_s"), ".3f"), fmt(r.get("peak_rss_mb"), ".0f"), r.get("error") or ""]
                   for r in data["rows"]], ["command", "wall s", "peak RSS MB", "error"]), ""]


def render() -> str:
    parts = ["<!-- generated by bench/peers/report.py from bench/results/peers_*.json -->", ""]
    evaluation, rerank, verify, index, startup = (load(n) for n in ("eval", "rerank", "verify", "index", "startup"))
    first = next((e for e in (evaluation, rerank, verify) if e and e.get("shapes")), None)
    machine = next(iter(first["shapes"].values())).get("machine") if first else (startup or {}).get("machine")
    parts += machine_lines(machine) + status_lines((first or startup or {}).get("status")) + [""]
    if evaluation:
        parts += eval_section(evaluation)
    if rerank:
        parts += simple_section("Re-ranking (k1 = 20, k2 = 6, λ = 0.3)", rerank, rerank_extra)
    if verify:
        parts += simple_section("Verification (every query × gallery trial)", verify, verify_extra)
    if index:
        parts += index_section(index)
    if startup:
        parts += startup_section(startup)
    return "\n".join(parts) + "\n"


START, END = "<!-- tables:start -->", "<!-- tables:end -->"


def into_docs(page: Path, text: str) -> None:
    doc = page.read_text()
    if START not in doc or END not in doc:
        raise SystemExit(f"{page}: markers {START} / {END} not found")
    head, rest = doc.split(START, 1)
    _, tail = rest.split(END, 1)
    page.write_text(f"{head}{START}\n{text}{END}{tail}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--docs", type=Path)
    args = parser.parse_args()
    text = render()
    if args.write:
        args.write.write_text(text)
    if args.docs:
        into_docs(args.docs, text)
    print(text)


if __name__ == "__main__":
    main()
