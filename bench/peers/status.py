"""What the bench environment holds: versions, and whether each peer's Cython evaluator was built.

    bench/peers/.venv/bin/python bench/peers/status.py [--write FILE] [--logs DIR]

Prints (and writes) one JSON object; the benchmarks copy it into their results.
"""

from __future__ import annotations

import argparse
import json
import sysconfig
from importlib import metadata
from pathlib import Path

PACKAGES = ("retrieve", "numpy", "scipy", "pyarrow", "torch", "faiss-cpu", "scikit-learn", "hnswlib",
            "pytorch-metric-learning", "fastreid", "torchreid", "Cython", "threadpoolctl")
CYTHON_DIRS = {
    "fastreid": "fastreid/evaluation/rank_cylib",
    "torchreid": "torchreid/reid/metrics/rank_cylib",
}


def versions() -> dict[str, str | None]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def cython_status(logs: Path | None) -> dict[str, dict]:
    site = Path(sysconfig.get_paths()["purelib"])
    out = {}
    for peer, rel in CYTHON_DIRS.items():
        folder = site / rel
        built = sorted(p.name for p in folder.glob("*_cy*.so"))
        entry = {"built": any(n.startswith("rank_cy") for n in built), "modules": built, "pyx_shipped": (folder / "rank_cy.pyx").exists()}
        log = logs / f"{peer}-cython.log" if logs else None
        if not built and log is not None and log.exists():
            lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
            entry["build_error"] = lines[-1] if lines else "(empty log)"
        if not entry["pyx_shipped"] and not built:
            entry["note"] = f"the {peer} distribution on the package index ships no rank_cy.pyx: nothing to build"
        out[peer] = entry
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path)
    parser.add_argument("--logs", type=Path)
    args = parser.parse_args()
    status = {"versions": versions(), "cython": cython_status(args.logs)}
    text = json.dumps(status, indent=2)
    if args.write:
        args.write.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
