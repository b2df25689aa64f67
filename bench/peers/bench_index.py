"""Index search: our layer over faiss vs raw faiss (same factory string, same nprobe), and vs
hnswlib at equal recall.

    bench/peers/.venv/bin/python bench/peers/bench_index.py [--shape million] [--repeats 3]
                                                            [--nprobe 1,2,4,8,16,32,64,128] [--k 10]

Data: the million preset's shape (1,000,000 × 256, 10,000 queries), or ``million-<gallery>`` scaled
down. Steps: ground truth by exhaustive search; `retrieve build-index --factory IVF<nlist>,Flat`
(nlist = 4·sqrt(gallery), our default); then in interleaved rounds: our library search and raw
faiss on the SAME index file over the nprobe sweep (in-process search time: our layer's overhead),
and whole processes `retrieve search` vs a raw-faiss script at --primary-nprobe. Once: raw faiss
building its own index from the same factory string (its build time), and hnswlib (M=16,
efConstruction=100) with an efSearch sweep, matched to our recall. Writes bench/results/peers_index.json.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import datasets
import ours
from harness import (RESULTS, Contender, bench_status, child_argv, default_mem_cap, fmt, machine_info,
                     require_venv, run_child, run_rounds, summarise, table, write_results)

EF = "10,16,24,32,48,64,96,128,192,256,384,512"


def cli_recall(results: Path, parquet: Path, exact_path: Path) -> float | None:
    """recall@k of `retrieve search`'s results file (gallery ids mapped to gallery rows)."""
    import numpy as np
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    if not results.exists():
        return None
    table_ = pq.read_table(parquet, columns=["id", "split"])
    gallery_ids = table_.filter(pc.equal(table_["split"], "gallery"))["id"].to_pylist()
    row_of = {gid: i for i, gid in enumerate(gallery_ids)}
    found = pq.read_table(results, columns=["query_id", "rank", "gallery_id"]).to_pydict()
    exact = np.load(exact_path)
    k = exact.shape[1]
    query_ids = list(dict.fromkeys(found["query_id"]))
    position = {qid: i for i, qid in enumerate(query_ids)}
    rows = np.full((len(query_ids), k), -1, dtype=np.int64)
    for qid, rank, gid in zip(found["query_id"], found["rank"], found["gallery_id"]):
        if rank - 1 < k:
            rows[position[qid], rank - 1] = row_of[gid]
    from c_index import recall_at_k

    return recall_at_k(rows, exact[: len(rows)])


def equal_recall(ours_sweep: list[dict], hnsw_sweep: list[dict]) -> list[dict]:
    """For each nprobe: the cheapest hnswlib efSearch reaching at least our recall."""
    out = []
    for row in ours_sweep:
        reach = [h for h in hnsw_sweep if h["recall"] >= row["recall"]]
        best = min(reach, key=lambda h: h["search_s"]) if reach else None
        out.append({"nprobe": row["nprobe"], "ours_recall": row["recall"], "ours_search_s": row["search_s"],
                    "hnswlib_ef": best and best["ef"], "hnswlib_recall": best and best["recall"],
                    "hnswlib_search_s": best and best["search_s"],
                    "hnswlib_x_ours": best and best["search_s"] / row["search_s"]})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="million")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nprobe", default="1,2,4,8,16,32,64,128")
    parser.add_argument("--primary-nprobe", type=int, default=32)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--hnsw-m", type=int, default=16)
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--mem-cap-gb", type=float)
    args = parser.parse_args()
    require_venv()
    mem_cap = int(args.mem_cap_gb * 2**30) if args.mem_cap_gb else default_mem_cap()
    machine = machine_info()
    s = datasets.ensure(datasets.shape(args.shape))
    meta = datasets.describe(s)
    nlist = int(round(4 * math.sqrt(meta["gallery"])))
    factory = f"IVF{nlist},Flat"
    print(f"\n# index, {args.shape}: {meta['queries']} queries × {meta['gallery']} gallery × {meta['dim']}; {factory}")
    work = s.folder / "index-work"
    work.mkdir(exist_ok=True)
    common = ["--data", s.folder, "--work", work, "--k", args.k]
    exact = run_child(child_argv("index-exact", *common), mem_cap_bytes=mem_cap)
    if not exact.ok:
        raise SystemExit(f"exhaustive search failed: {exact.error_line()}")
    print(f"  exact search: {exact.report['phases_s']['search']:.2f} s ({exact.report['qps']:.0f} queries/s)")
    with tempfile.TemporaryDirectory(prefix="bench-index-") as tmp:
        tmp = Path(tmp)
        index_dir = tmp / "index"
        build = run_child(ours.build_index_argv(s.parquet, index_dir, factory), mem_cap_bytes=mem_cap)
        if not build.ok:
            raise SystemExit(f"retrieve build-index failed: {build.error_line()}\n{build.stderr[-2000:]}")
        manifest = ours.index_manifest(index_dir)
        train_rows = int(manifest.get("train_rows") or manifest.get("build", {}).get("train_rows") or 0)
        print(f"  retrieve build-index: {build.wall_s:.1f} s, {build.peak_rss_mb:.0f} MB (train rows {train_rows or '?'})")
        index_file = ours.index_file(index_dir)
        p = args.primary_nprobe
        cs = [
            Contender("ours-search-cli", f"`retrieve search --nprobe {p} --k {args.k}` (whole command)",
                      lambda r: ours.search_argv(index_dir, s.parquet, tmp / f"results-{r}.parquet", tmp / "ws", args.k, p),
                      kind="ours", parse_stdout_json=True),
            Contender("faiss-raw-whole", f"faiss.read_index(same file) + ParameterSpace nprobe={p} + search (whole process)",
                      lambda r: child_argv("faiss-raw", *common, "--index-file", index_file, "--nprobe", p)),
            Contender("ours-search-lib", "load_index + IndexHandle.search (library), nprobe sweep",
                      lambda r: child_argv("ours-search-lib", *common, "--index-dir", index_dir, "--nprobe", args.nprobe,
                                           "--repeats", args.repeats), kind="ours"),
            Contender("faiss-raw-sweep", "faiss.read_index(same file) + ParameterSpace + Index.search, nprobe sweep",
                      lambda r: child_argv("faiss-raw", *common, "--index-file", index_file, "--nprobe", args.nprobe,
                                           "--repeats", args.repeats)),
            Contender("faiss-build", f"faiss.index_factory(d, '{factory}') + train + add, nprobe sweep",
                      lambda r: child_argv("faiss-raw", *common, "--factory", factory, "--train-rows", train_rows,
                                           "--nprobe", args.nprobe, "--repeats", args.repeats), repeats=1),
            Contender("hnswlib", f"hnswlib.Index('l2') M={args.hnsw_m} efConstruction={args.ef_construction}, ef sweep",
                      lambda r: child_argv("hnswlib", *common, "--ef", EF, "--hnsw-m", args.hnsw_m,
                                           "--ef-construction", args.ef_construction, "--repeats", args.repeats), repeats=1),
        ]
        runs = run_rounds(cs, args.repeats, mem_cap)
        rows = {c.name: summarise(c, runs[c.name]) for c in cs}
        best_cli = min((r for r in runs["ours-search-cli"] if r.ok), key=lambda r: r.wall_s, default=None)
        if best_cli is not None:
            results = Path(best_cli.argv[best_cli.argv.index("--out") + 1])
            rows["ours-search-cli"]["recall"] = cli_recall(results, s.parquet, work / f"exact_k{args.k}.npy")
    sweeps = {name: (rows[name].get("report") or {}).get("sweep") or [] for name in rows}
    overhead = []
    for mine, raw in zip(sweeps["ours-search-lib"], sweeps["faiss-raw-sweep"]):
        overhead.append({"nprobe": mine["nprobe"], "faiss_search_s": raw["search_s"], "ours_search_s": mine["search_s"],
                         "overhead": mine["search_s"] / raw["search_s"] - 1, "faiss_recall": raw["recall"],
                         "ours_recall": mine["recall"]})
    matched = equal_recall(sweeps["ours-search-lib"], sweeps["hnswlib"])
    raw_whole = rows["faiss-raw-whole"]
    if (raw_whole.get("report") or {}).get("sweep"):
        raw_whole["recall"] = raw_whole["report"]["sweep"][0]["recall"]
    if rows["ours-search-cli"].get("wall_s") and raw_whole.get("wall_s"):
        rows["ours-search-cli"]["x_faiss_raw_whole"] = rows["ours-search-cli"]["wall_s"] / raw_whole["wall_s"]
    result = {"data": meta, "factory": factory, "nlist": nlist, "k": args.k, "primary_nprobe": p,
              "exact": {"search_s": exact.report["phases_s"]["search"], "qps": exact.report["qps"],
                        "peak_rss_mb": exact.peak_rss_mb},
              "ours_build": {"wall_s": build.wall_s, "peak_rss_mb": build.peak_rss_mb, "train_rows": train_rows},
              "faiss_build_s": (rows["faiss-build"].get("report") or {}).get("build_s"),
              "hnswlib_build_s": (rows["hnswlib"].get("report") or {}).get("build_s"),
              "overhead": overhead, "equal_recall": matched, "rows": list(rows.values()), "machine": machine,
              "repeats": args.repeats, "mem_cap_gb": mem_cap / 2**30}
    print(table([[o["nprobe"], fmt(o["faiss_search_s"], ".3f"), fmt(o["ours_search_s"], ".3f"), fmt(100 * o["overhead"], "+.0f") + " %",
                  fmt(o["faiss_recall"], ".4f"), fmt(o["ours_recall"], ".4f")] for o in overhead],
                ["nprobe", "faiss s", "ours s", "overhead", "faiss recall", "ours recall"]))
    print(table([[m["nprobe"], fmt(m["ours_recall"], ".4f"), fmt(m["ours_search_s"], ".3f"), fmt(m["hnswlib_ef"], "d"),
                  fmt(m["hnswlib_recall"], ".4f"), fmt(m["hnswlib_search_s"], ".3f"), fmt(m["hnswlib_x_ours"])] for m in matched],
                ["nprobe", "ours recall", "ours s", "hnswlib ef", "hnswlib recall", "hnswlib s", "hnswlib ÷ ours"]))
    print(table([[r["name"], fmt(r.get("wall_s")), fmt(r.get("peak_rss_mb"), ".0f"), r.get("error") or ""] for r in rows.values()],
                ["contender", "wall s", "peak RSS MB", "error"]))
    print(f"builds: ours {build.wall_s:.1f} s (whole command), faiss {fmt(result['faiss_build_s'], '.1f')} s, "
          f"hnswlib {fmt(result['hnswlib_build_s'], '.1f')} s")
    path = RESULTS / "peers_index.json"
    shapes = dict((json.loads(path.read_text()) if path.exists() else {}).get("shapes", {}))
    shapes[args.shape] = result
    write_results("index", {"status": bench_status(), "shapes": shapes})
    print(f"-> {path}")


if __name__ == "__main__":
    main()
