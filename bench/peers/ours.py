"""Every call the peer benchmarks make into `retrieve` — the CLI's command lines and the library
functions — in this one file, so that a renamed command, option or function is fixed here alone.

The library side is imported lazily (inside each function) so that a child process pays only for
the imports of what it runs, and the timing of those imports is its own.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from harness import VENV

RETRIEVE = VENV / "bin" / "retrieve"


# ----------------------------------------------------------------------------- the CLI


def synth_argv(preset: str, out: Path, seed: int = 0) -> list[str]:
    return [str(RETRIEVE), "synth", "--preset", preset, "--seed", str(seed), "--out", str(out)]


def evaluate_argv(parquet: Path, run_dir: Path, *, rerank: bool = False, rerank_exclude_junk: bool = False,
                  protocol: str = "market") -> list[str]:
    argv = [str(RETRIEVE), "evaluate", str(parquet), "--json", "--device", "cpu", "--protocol", protocol,
            "--out", str(run_dir)]
    if rerank:
        argv.append("--rerank")
        if rerank_exclude_junk:
            argv.append("--rerank-exclude-junk")
    return argv


def verify_argv(parquet: Path, run_dir: Path, fars: str) -> list[str]:
    return [str(RETRIEVE), "verify", str(parquet), "--trials", "query-gallery", "--distance", "sqeuclidean",
            "--far", fars, "--json", "--device", "cpu", "--out", str(run_dir)]


def build_index_argv(parquet: Path, index_dir: Path, factory: str, seed: int = 0) -> list[str]:
    return [str(RETRIEVE), "build-index", str(parquet), "--out", str(index_dir), "--split", "gallery",
            "--factory", factory, "--metric", "l2", "--device", "cpu", "--seed", str(seed), "--json"]


def search_argv(index_dir: Path, parquet: Path, results: Path, workspace: Path, k: int, nprobe: int) -> list[str]:
    return [str(RETRIEVE), "search", str(index_dir), str(parquet), "--split", "query", "--k", str(k),
            "--nprobe", str(nprobe), "--device", "cpu", "--out", str(results), "--workspace", str(workspace),
            "--json"]


def startup_argvs() -> dict[str, list[str]]:
    return {"retrieve --version": [str(RETRIEVE), "--version"], "retrieve --help": [str(RETRIEVE), "--help"]}


def cli_timings(run_dir: Path) -> dict[str, float]:
    """The phase timings `retrieve evaluate` / `verify` record in their run folder (if any)."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        return {}
    record = json.loads(path.read_text())
    timings = record.get("timings") or record.get("result", {}).get("timings") or {}
    return {k: float(v) for k, v in timings.items() if isinstance(v, (int, float))}


def ranking_metrics_from_cli(obj: dict) -> dict[str, Any]:
    """`retrieve evaluate --json` -> the common metric keys (fractions)."""
    cmc = obj.get("cmc") or {}
    return {
        "mAP": obj.get("mAP"),
        "mINP": obj.get("mINP"),
        "mAP_at_R": obj.get("mAP_at_R"),
        "R_precision": obj.get("R_precision"),
        "cmc": [cmc[str(r)] for r in range(1, 51) if str(r) in cmc],
        "num_valid_queries": obj.get("num_valid_queries"),
    }


def verification_metrics_from_cli(obj: dict) -> dict[str, Any]:
    """`retrieve verify --json` -> roc_auc, eer and TAR at each FAR (fractions)."""
    return {
        "roc_auc": obj.get("roc_auc"),
        "eer": obj.get("eer"),
        "tar_at_far": {label: point.get("tar") for label, point in (obj.get("tar_at_far") or {}).items()},
        "num_genuine": obj.get("num_same"),
        "num_impostor": obj.get("num_different"),
    }


# ----------------------------------------------------------------------------- data (library)


def generate(preset: str, out: Path, seed: int = 0, **overrides: Any) -> Path:
    """The synthetic generator as a library, for shapes the CLI's presets do not offer (e.g. 128-D)."""
    from retrieval.data.synth import PRESETS, generate as synth

    base = PRESETS[preset]
    shape = replace(base, **overrides) if overrides else base
    return synth(shape, seed, out)


def read_split(parquet: Path) -> dict[str, Any]:
    """Query and gallery arrays of an embeddings file, as our reader gives them."""
    from retrieval.data.store import read_embeddings

    emb = read_embeddings(parquet)
    q, g = emb.by_split("query"), emb.by_split("gallery")
    return {"query": q.vectors, "gallery": g.vectors, "query_pid": q.pid, "gallery_pid": g.pid,
            "query_camid": q.camid, "gallery_camid": g.camid, "query_ids": q.ids, "gallery_ids": g.ids}


def import_library() -> None:
    """Import what the library calls below use (so that a child can time its imports apart)."""
    import importlib

    for name in ("retrieval.data.store", "retrieval.eval.distances", "retrieval.eval.evaluate"):
        importlib.import_module(name)


def block_rows(num_gallery: int) -> int:
    from retrieval.eval.distances import block_rows_for

    return block_rows_for(num_gallery)


# ----------------------------------------------------------------------------- evaluation (library)


def evaluate_library(data: dict[str, Any], protocol: str = "market"):
    """THE library call of the tables: evaluate_ranking over EmbeddingDistances (euclidean)."""
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.evaluate import evaluate_ranking

    source = EmbeddingDistances(data["query"], data["gallery"], metric="euclidean", device="cpu")
    return evaluate_ranking(source, data["query_pid"], data["gallery_pid"], data["query_camid"],
                            data["gallery_camid"], protocol=protocol, query_ids=data.get("query_ids"),
                            gallery_ids=data.get("gallery_ids"))


def evaluate_matrix(distmat, query_pid, gallery_pid, query_camid, gallery_camid, protocol: str = "market"):
    """Our evaluator on a given dense distance matrix (the values check: same numbers for everyone)."""
    from retrieval.eval.distances import PrecomputedDistances
    from retrieval.eval.evaluate import evaluate_ranking

    return evaluate_ranking(PrecomputedDistances(distmat, metric="euclidean"), query_pid, gallery_pid,
                            query_camid if protocol == "market" else None,
                            gallery_camid if protocol == "market" else None, protocol=protocol)


def distance_blocks(query, gallery, metric: str = "euclidean") -> Iterator[tuple[int, Any]]:
    """Our distance blocks alone (what evaluate_library computes before ranking)."""
    from retrieval.eval.distances import EmbeddingDistances, block_rows_for

    source = EmbeddingDistances(query, gallery, metric=metric, device="cpu")
    return source.blocks(block_rows_for(len(gallery)))


def dense_distances(query, gallery, metric: str = "euclidean"):
    """Our distances as one dense (Q, G) float32 matrix."""
    import numpy as np

    out = np.empty((len(query), len(gallery)), dtype=np.float32)
    for start, block in distance_blocks(query, gallery, metric):
        out[start : start + len(block)] = block
    return out


def ranking_metrics(result) -> dict[str, Any]:
    """A RankingResult -> the common metric keys (fractions)."""
    return {"mAP": float(result.mAP), "mINP": float(result.mINP), "mAP_at_R": float(result.mAP_at_R),
            "R_precision": float(result.R_precision), "cmc": [float(v) for v in result.cmc[:50]],
            "num_valid_queries": int(result.num_valid_queries)}


# ----------------------------------------------------------------------------- verification (library)


def verify_library(data: dict[str, Any], fars: list[float]):
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.protocol import RankingLabels
    from retrieval.eval.trials import query_gallery_verification

    labels = RankingLabels(data["query_pid"], data["gallery_pid"], data["query_camid"], data["gallery_camid"],
                           protocol="market", query_ids=data.get("query_ids"), gallery_ids=data.get("gallery_ids"))
    source = EmbeddingDistances(data["query"], data["gallery"], metric="sqeuclidean", device="cpu")
    return query_gallery_verification(source, labels, fars=fars, distance="sqeuclidean")


def verification_metrics(result) -> dict[str, Any]:
    return verification_metrics_from_cli(result.to_dict())


# ----------------------------------------------------------------------------- indexes (library)


def load_index(index_dir: Path):
    from retrieval.indexes.store import load_index as load

    return load(index_dir, device="cpu")


def index_search(handle, queries, k: int, nprobe: int):
    """(distances, rows) of our library search."""
    return handle.search(queries, k, nprobe=nprobe)


def index_file(index_dir: Path) -> Path:
    """The faiss file inside our index folder (what raw faiss reads to search the same index)."""
    return Path(index_dir) / "index.faiss"


def index_manifest(index_dir: Path) -> dict:
    from retrieval.indexes.store import read_manifest

    return read_manifest(index_dir)
