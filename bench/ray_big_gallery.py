"""Benchmark: a gallery larger than any worker's memory share: 4M × 256 (4 GB) as 16 files on Ray.

Data: the project's synthetic model (``data.synth``, re-ID difficulty) at
``--gallery`` rows × ``--dim``, written as ``--files`` Parquet files of a folder (the gallery) and
one queries file; nothing is held whole while writing. Then ``retrieve evaluate QUERIES --gallery
FOLDER --ray local:N`` (the evaluate job) runs with every worker reading only its own files.

Reported: the data size (vectors), the time per stage, the driver's peak RSS and every Ray worker
process's peak RSS (VmHWM of the raylet's worker children, read from /proc after the run: Linux),
so "every worker's peak memory far below the data size" is a measured statement. Workers keep no
part between tasks here (RETRIEVE_RAY_CACHE_BYTES=0), so a worker's peak is about one part plus
its distance blocks. ``--baseline`` also runs one process (in a child, for its own peak RSS) and
checks the metrics are identical (needs memory for the whole gallery).

    .venv/bin/python bench/ray_big_gallery.py                         # 4,000,000 × 256, 16 files
    .venv/bin/python bench/ray_big_gallery.py --gallery 200000 --queries 500 --baseline

Writes bench/results/ray_big_gallery.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.data.synth import Preset, draw_directions, draw_vectors, plan_rows  # noqa: E402
from retrieval.data.writer import EmbeddingsWriter  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "ray_big_gallery.json"
BATCH = 50_000


def write_data(folder: Path, gallery: int, queries: int, dim: int, files: int, seed: int) -> tuple[Path, Path]:
    """The queries file and the gallery folder, streamed batch by batch."""
    preset = Preset("big", queries, gallery, dim, max(10, gallery // 40), 8, base_difficulty=1.0)
    plan = plan_rows(preset, seed)
    directions = draw_directions(preset, seed)
    gallery_dir = folder / "gallery"
    gallery_dir.mkdir(parents=True)
    bounds = np.linspace(queries, len(plan), files + 1).round().astype(int)
    names = np.array(["query", "gallery"], dtype=object)
    queries_file = folder / "queries.parquet"
    targets = [(queries_file, 0, queries)] + [(gallery_dir / f"part-{i:05d}.parquet", int(a), int(b))
                                                for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))]
    for path, first, last in targets:
        with EmbeddingsWriter(path, dim, model="synthetic:big", normalized=True) as writer:
            for start in range(first, last, BATCH):
                stop = min(start + BATCH, last)
                rng = np.random.default_rng([seed, 2, start])
                pid, camid, split = plan.pid[start:stop], plan.camid[start:stop], plan.split[start:stop]
                vectors = draw_vectors(directions, pid, camid, preset.base_difficulty, rng)
                ids = [f"{'q' if s == 0 else 'g'}{i:09d}" for s, i in zip(split, range(start, stop))]
                writer.write(ids, vectors, pid=pid, camid=camid.astype(np.int32), split=names[split])
    return queries_file, gallery_dir


def worker_peaks() -> list[dict]:
    """Peak RSS (VmHWM) of every worker process of this session's raylet."""
    import ray._private.worker as worker

    raylet = worker._global_node.all_processes["raylet"][0].process.pid
    peaks = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(fields.get("PPid", "0").strip()) == raylet and "VmHWM" in fields:
            name = (entry / "cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
            peaks.append({"pid": int(entry.name), "name": name[:40],
                          "peak_rss_mb": round(int(fields["VmHWM"].split()[0]) / 1024, 1)})
    return peaks


def one_process(queries: Path, gallery: Path) -> dict:
    code = ("import json, resource, sys; from pathlib import Path\n"
            "from retrieval.jobs.evaluate import EvaluateOptions, evaluate_files\n"
            f"e = evaluate_files(Path({str(queries)!r}), Path({str(gallery)!r}), None, None, EvaluateOptions())\n"
            "print(json.dumps({'summary': e.summary(), 'timings': e.timings, "
            "'peak_rss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=4_000_000)
    parser.add_argument("--queries", type=int, default=2_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--files", type=int, default=16)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, default=None, help="keep the data here (default: a temporary folder)")
    parser.add_argument("--baseline", action="store_true", help="also run one process and compare")
    args = parser.parse_args()

    import ray

    from retrieval.distributed.cluster import connect
    from retrieval.jobs.evaluate import EvaluateOptions, evaluate_files

    with tempfile.TemporaryDirectory() as tmp:
        folder = args.data or Path(tmp)
        started = time.perf_counter()
        if (folder / "queries.parquet").exists():
            queries, gallery = folder / "queries.parquet", folder / "gallery"
        else:
            queries, gallery = write_data(folder, args.gallery, args.queries, args.dim, args.files, args.seed)
        written = time.perf_counter() - started
        ray.init(num_cpus=args.cpus, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
                 runtime_env={"env_vars": {"RETRIEVE_RAY_CACHE_BYTES": "0"}})
        cluster = connect(f"local:{args.cpus}")
        started = time.perf_counter()
        evaluation = evaluate_files(queries, gallery, None, None, EvaluateOptions(), cluster=cluster)
        seconds = time.perf_counter() - started
        peaks = worker_peaks()
        driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        ray.shutdown()
        report = {
            "benchmark": "ray_big_gallery", "machine": platform.node(), "cpus_machine": os.cpu_count(),
            "ray_cpus": args.cpus, "gallery": args.gallery, "queries": args.queries, "dim": args.dim,
            "files": args.files, "data_mb": round(args.gallery * args.dim * 4 / 2**20, 1),
            "write_seconds": round(written, 1), "evaluate_seconds": round(seconds, 2),
            "stages_s": {k: round(v, 2) for k, v in evaluation.timings.items()},
            "shards": evaluation.cluster["shards"], "mAP": evaluation.final.mAP,
            "rank1": float(evaluation.final.cmc[0]), "driver_peak_rss_mb": round(driver_peak, 1),
            "worker_peak_rss_mb": sorted(p["peak_rss_mb"] for p in peaks), "workers": peaks,
            "load_average": os.getloadavg(),
        }
        if args.baseline:
            base = one_process(queries, gallery)
            report["one_process"] = {"seconds": base["timings"], "peak_rss_mb": round(base["peak_rss_mb"], 1),
                                     "identical": base["summary"] == json.loads(json.dumps(evaluation.summary()))}
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "workers"}, indent=2))


if __name__ == "__main__":
    main()
