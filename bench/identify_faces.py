"""1:N identification benchmark: a million-face gallery scanned exactly and searched through an IVF
index, in the same run.

Data: the ``faces`` preset of ``data.synth`` (128-D, 10 images of each of 100,000 people in the
gallery; 10,000 probes, half of them people never enrolled), generated in memory, scaled with
``--gallery``/``--probes``/``--identities``.

Contenders, same probes, same gallery:
* exhaustive: ``eval.identification.identify`` (float32 GEMM blocks, every near-tie settled by
  exact keys): the exact §6 numbers;
* IVF: an index built by the engine (``indexes.store.build_index``, kind ivf, cosine), searched
  for each probe's top-``--k`` gallery items at each ``--nprobe``, then scored over those lists
  (``identify(..., candidate_rows=…)``, labelled index top-k).
Reported: seconds and probes per second of each (IVF: search + scoring, build separately), the
rank-1 / TPIR@FPIR of each and the IVF's cost (exhaustive − IVF), peak RSS.

    .venv/bin/python bench/identify_faces.py                                   # full size (the lead's run)
    .venv/bin/python bench/identify_faces.py --gallery 50000 --probes 1000 --identities 5000 --out /tmp/i.json
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from retrieval.data.synth import PRESETS, in_memory  # noqa: E402
from retrieval.eval.identification import identify  # noqa: E402
from retrieval.indexes.store import build_index  # noqa: E402

FPIRS = (1e-3, 1e-2, 1e-1)


def faces(gallery: int, probes: int, identities: int, seed: int):
    """(probe vectors, probe pid, gallery vectors, gallery pid) of the faces preset at this size."""
    preset = replace(PRESETS["faces"], name=f"faces-{gallery}", queries=probes, gallery=gallery, identities=identities)
    vectors, pid = in_memory(preset, seed)
    return vectors[:probes], pid[:probes], vectors[probes:], pid[probes:]


def summary(result, seconds: float, probes: int) -> dict:
    d = result.to_dict()
    return {"seconds": seconds, "probes_per_second": probes / seconds, "candidates": d["candidates"],
            "rank1": d["cmc"]["1"], "tpir_at_fpir": {k: v["tpir"] for k, v in d["tpir_at_fpir"].items()},
            "thresholds": {k: v["threshold"] for k, v in d["tpir_at_fpir"].items()}, "notes": d["notes"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--probes", type=int, default=10_000)
    parser.add_argument("--identities", type=int, default=100_000)
    parser.add_argument("--k", type=int, default=100, help="candidate list length from the index")
    parser.add_argument("--nprobe", default="8,32", help="comma-separated IVF nprobe values")
    parser.add_argument("--nlist", type=int, default=None, help="IVF lists (default: the engine's, 4·√n)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "identify_faces.json")
    args = parser.parse_args(argv)

    clock = time.perf_counter()
    probes, probe_pid, gallery, gallery_pid = faces(args.gallery, args.probes, args.identities, args.seed)
    generated = time.perf_counter() - clock
    ids = np.array([f"g{i:07d}" for i in range(len(gallery))], dtype=object)
    print(f"generated {args.gallery:,} gallery faces and {args.probes:,} probes in {generated:.1f} s", flush=True)

    clock = time.perf_counter()
    exhaustive = identify(probes, gallery, probe_pid, gallery_pid, fpirs=FPIRS, gallery_ids=ids, device="cpu")
    flat = summary(exhaustive, time.perf_counter() - clock, len(probes))
    print(f"exhaustive: {flat['seconds']:.1f} s, {flat['probes_per_second']:.0f} probes/s, rank-1 {flat['rank1']:.4f}, "
          f"TPIR {flat['tpir_at_fpir']}", flush=True)

    ivf = []
    with tempfile.TemporaryDirectory() as folder:
        clock = time.perf_counter()
        extra = {} if args.nlist is None else {"nlist": args.nlist}
        built = build_index(Path(folder) / "ivf", gallery, ids=ids, kind="ivf", metric="cosine", **extra)
        build_seconds = time.perf_counter() - clock
        handle = built.handle
        for nprobe in [int(v) for v in args.nprobe.split(",") if v]:
            clock = time.perf_counter()
            _, rows = handle.search(probes, args.k, nprobe=nprobe)
            search_seconds = time.perf_counter() - clock
            result = identify(probes, gallery, probe_pid, gallery_pid, fpirs=FPIRS, gallery_ids=ids,
                              candidate_rows=rows, device="cpu")
            point = summary(result, time.perf_counter() - clock, len(probes))
            point.update(nprobe=nprobe, nlist=handle.nlist, k=args.k, search_seconds=search_seconds,
                         rank1_cost=flat["rank1"] - point["rank1"],
                         tpir_cost={key: flat["tpir_at_fpir"][key] - value for key, value in point["tpir_at_fpir"].items()},
                         speedup_vs_exhaustive=flat["seconds"] / point["seconds"])
            ivf.append(point)
            print(f"IVF nprobe {nprobe}: {point['seconds']:.1f} s ({point['probes_per_second']:.0f} probes/s, "
                  f"{point['speedup_vs_exhaustive']:.1f}× exhaustive), rank-1 {point['rank1']:.4f}, "
                  f"TPIR cost {point['tpir_cost']}", flush=True)
    report = {
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "note": "shared machine: timings are noisy"},
        "data": {"preset": "faces", "gallery": args.gallery, "probes": args.probes, "identities": args.identities,
                 "nonmated_probes": int((probe_pid > args.identities).sum()), "seconds_generating": generated},
        "exhaustive": flat,
        "ivf": {"build_seconds": build_seconds, "points": ivf},
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"peak RSS {report['peak_rss_gb']:.2f} GB -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
