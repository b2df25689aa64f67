"""The benchmark data: one synthetic embeddings file per shape, and .npy exports of it for the peers.

    DATA/<shape>/embeddings.parquet       what `retrieve` reads (all rows, junk included)
    DATA/<shape>/npy/*.npy                what the peers read: query_/gallery_ vectors (float32),
                                          pid and camid (int64); gallery rows with pid -1 (junk)
                                          are left out, as fast-reid's and torchreid's Market-1501
                                          loaders skip them ("junk images are just ignored")
    DATA/<shape>/meta.json                shape, how it was made, rows dropped

DATA is bench/peers/.data (or $BENCH_DATA). The files are made once and reused (seeded: the same
seed gives the same file); delete the folder to make them again.

Shapes: ``market`` and ``msmt17`` come from `retrieve synth --preset`; ``market128`` (Market shape
at 128-D) and ``million`` / ``million-<gallery>`` (index scale) from the generator as a library,
since `retrieve synth` has no dimension or size option.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from harness import DATA, child_argv, run_child
import ours


@dataclass(frozen=True)
class Shape:
    name: str
    preset: str
    overrides: tuple[tuple[str, int], ...] = ()  # fields of the preset changed (library generation)

    @property
    def folder(self) -> Path:
        return DATA / self.name

    @property
    def parquet(self) -> Path:
        return self.folder / "embeddings.parquet"

    @property
    def npy(self) -> Path:
        return self.folder / "npy"


def shape(name: str) -> Shape:
    if name in ("market", "msmt17"):
        return Shape(name, name)
    if name == "market128":
        return Shape(name, "market", (("dim", 128),))
    if name.startswith("million"):
        gallery = int(name.split("-", 1)[1]) if "-" in name else 1_000_000
        queries = min(10_000, max(1_000, gallery // 100))
        identities = max(1_000, gallery // 10)
        return Shape(name, "million", (("gallery", gallery), ("queries", queries), ("identities", identities)))
    raise SystemExit(f"unknown data shape {name!r}: market, market128, msmt17, million or million-<gallery>")


def ensure(s: Shape, log=print) -> Shape:
    """Make the Parquet file and its .npy exports unless they are already there."""
    s.folder.mkdir(parents=True, exist_ok=True)
    if not s.parquet.exists():
        if s.overrides:
            log(f"  generating {s.name} (retrieval.data.synth as a library: {dict(s.overrides)})")
            argv = child_argv("generate", "--preset", s.preset, "--out", s.parquet,
                              *[f"--{k}={v}" for k, v in s.overrides])
        else:
            log(f"  generating {s.name} (retrieve synth --preset {s.preset})")
            argv = ours.synth_argv(s.preset, s.parquet)
        run = run_child(argv)
        if not run.ok or not s.parquet.exists():
            raise SystemExit(f"could not make {s.parquet}: {run.error_line()}\n{run.stderr[-2000:]}")
    meta = s.folder / "meta.json"
    if not meta.exists() or not (s.npy / "gallery_vectors.npy").exists():
        log(f"  exporting {s.name} to .npy for the peers")
        run = run_child(child_argv("export", "--data", s.folder))
        if not run.ok:
            raise SystemExit(f"could not export {s.parquet}: {run.error_line()}\n{run.stderr[-2000:]}")
        meta.write_text(json.dumps({"shape": s.name, "preset": s.preset, "overrides": dict(s.overrides),
                                    **run.report.get("export", {})}, indent=2) + "\n")
    return s


def describe(s: Shape) -> dict:
    path = s.folder / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {"shape": s.name}
