"""Index commands: build-index, search, index-info, tune (faiss flat / IVF / IVF-PQ / HNSW)."""

from __future__ import annotations

import shlex
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import typer

from retrieval.cli.app import app
from retrieval.cli.choices import DeviceName
from retrieval.console import err_console, print_json, stdout_console
from retrieval.progress import stage_progress


class IndexKind(str, Enum):
    flat = "flat"
    ivf = "ivf"
    ivfpq = "ivfpq"
    hnsw = "hnsw"


class MetricName(str, Enum):
    l2 = "l2"
    ip = "ip"
    cosine = "cosine"


def _has_split_column(path: Path) -> bool:
    try:
        return "split" in pq.read_schema(path).names
    except (OSError, pa.ArrowInvalid):
        return False  # read_embeddings will name the problem


def _splits_for(path: Path, split: Optional[str], default: str) -> Optional[str]:
    """The split to take: the one asked; else ``default`` when the file has splits; else every row."""
    if split is not None:
        return split
    return default if _has_split_column(path) else None


def _say(lines: list[str], prefix: str) -> None:
    for line in lines:
        err_console().print(f"{prefix}: {line}", markup=False)


def _positive(value: Optional[int], hint: str) -> None:
    if value is not None and value < 1:
        raise typer.BadParameter(f"must be at least 1, got {value}", param_hint=hint)


# ------------------------------------------------------------------------------------- build-index


class _FileBatches:
    """Re-iterable batches of one split of an embeddings file; hashes the rows of the latest pass."""

    def __init__(self, path: Path, split: Optional[str], batch_rows: int = 65536):
        self.path, self.split, self.batch_rows = path, split, batch_rows
        self.hasher = None

    def __call__(self):
        from retrieval.data.store import ContentHasher, iter_embedding_batches

        self.hasher = ContentHasher()
        for batch in iter_embedding_batches(self.path, batch_rows=self.batch_rows, splits=self.split):
            self.hasher.update(batch.ids, batch.vectors)
            yield batch

    def content_hash(self) -> str:
        return self.hasher.hexdigest()


@app.command("build-index")
def build_index_command(
    embeddings: Path = typer.Argument(..., help="Embeddings Parquet file holding the gallery."),
    out: Path = typer.Option(..., "--out", "-o", help="Index folder to write (index.faiss, manifest.json, rows.parquet)."),
    split: Optional[str] = typer.Option(None, help="Split to index [default: gallery, or every row when the file has no split column]."),
    kind: Optional[IndexKind] = typer.Option(None, help="Named index kind with sensible defaults [default: flat]."),
    factory: Optional[str] = typer.Option(None, help="Any faiss index_factory string instead of --kind (e.g. 'OPQ16,IVF1024,PQ16')."),
    metric: MetricName = typer.Option(MetricName.l2, help="l2 (euclidean), ip (inner product) or cosine (normalise, then inner product)."),
    nlist: Optional[int] = typer.Option(None, help="IVF lists [default: 4·sqrt(n), ≥ 39 training rows per list]."),
    pq_m: Optional[int] = typer.Option(None, "--pq-m", help="PQ sub-quantisers (must divide the dimension) [default: from the dimension]."),
    pq_bits: Optional[int] = typer.Option(None, "--pq-bits", help="Bits per PQ sub-quantiser [default: 8]."),
    hnsw_m: Optional[int] = typer.Option(None, "--hnsw-m", help="HNSW neighbours per node [default: 32]."),
    train_size: Optional[int] = typer.Option(None, "--train-size", help="Rows sampled for training [default: 64 per list / centroid]."),
    device: DeviceName = typer.Option(DeviceName.auto, help="auto | cpu | cuda (IVF k-means on the GPU with the faiss GPU build)."),
    seed: int = typer.Option(0, help="Seed of the training sample and k-means."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Build a faiss index of the gallery embeddings (streamed from the file in batches)."""
    from retrieval.indexes.store import build_index

    if kind is not None and factory is not None:
        raise typer.BadParameter("give --kind or --factory, not both", param_hint="--factory")
    for value, hint in ((nlist, "--nlist"), (pq_m, "--pq-m"), (pq_bits, "--pq-bits"), (hnsw_m, "--hnsw-m"), (train_size, "--train-size")):
        _positive(value, hint)
    if not embeddings.is_file():
        raise FileNotFoundError(2, "no such file", str(embeddings))
    chosen_split = _splits_for(embeddings, split, "gallery")
    batches = _FileBatches(embeddings, chosen_split)
    with stage_progress(quiet=json_out) as progress:
        result = build_index(
            out,
            batches,
            kind=(kind or IndexKind.flat).value,
            factory=factory,
            metric=metric.value,
            nlist=nlist,
            pq_m=pq_m,
            pq_bits=pq_bits,
            hnsw_m=hnsw_m,
            seed=seed,
            train_size=train_size,
            content_hash=batches.content_hash,
            split=chosen_split,
            source_path=str(embeddings.resolve()),
            device=device.value,
            progress=progress,
        )
    manifest = result.manifest
    if json_out:
        print_json({"index": str(out), "manifest": manifest, "warnings": result.warnings, "notes": result.notes})
        return
    _say(result.warnings, "warning")
    _say(result.notes, "note")
    defaults = ", ".join(f"{k} {v}" for k, v in manifest["search_defaults"].items()) or "none"
    stdout_console().print(
        f"built {manifest['factory']} ({manifest['metric']}) of {manifest['count']} × {manifest['dim']} "
        f"in {manifest['build_seconds']:.2f} s -> {out}  [search defaults: {defaults}]",
        markup=False,
    )


# ------------------------------------------------------------------------------------------ search


def _read_queries(path: Path, split: Optional[str]):
    from retrieval.data.store import read_embeddings

    if not path.is_file():
        raise FileNotFoundError(2, "no such file", str(path))
    chosen = _splits_for(path, split, "query")
    return read_embeddings(path, splits=chosen), chosen


def results_table(handle, query_ids: np.ndarray, query_pid, distances: np.ndarray, rows: np.ndarray) -> pa.Table:
    """query_id, rank (1-based), gallery_id, distance, gallery_pid, gallery_camid, is_match, is_junk."""
    n, k = rows.shape
    flat_rows = rows.ravel()
    gallery = handle.rows
    gallery_pid = gallery.column("pid").take(pa.array(flat_rows))
    gallery_camid = gallery.column("camid").take(pa.array(flat_rows))
    table = {
        "query_id": pa.array(np.repeat(np.asarray(query_ids, dtype=object), k).astype(str), type=pa.string()),
        "rank": pa.array(np.tile(np.arange(1, k + 1, dtype=np.int32), n)),
        "gallery_id": pa.array(handle.row_ids(flat_rows).astype(str), type=pa.string()),
        "distance": pa.array(distances.ravel().astype(np.float32)),
        "gallery_pid": gallery_pid,
        "gallery_camid": gallery_camid,
    }
    if query_pid is not None and gallery_pid.null_count < len(gallery_pid):
        gp = gallery_pid.to_numpy(zero_copy_only=False)
        qp = np.repeat(np.asarray(query_pid, dtype=np.int64), k)
        table["is_match"] = pa.array((qp == gp) & (gp != -1), mask=np.isnan(gp.astype(float)))
        table["is_junk"] = pa.array(gp == -1, mask=np.isnan(gp.astype(float)))
    return pa.table(table)


def _index_summary(handle) -> dict:
    m = handle.manifest
    return {"path": str(handle.path), "factory": m["factory"], "metric": m["metric"], "dim": m["dim"], "count": m["count"],
            "content_hash": m.get("content_hash")}


@app.command("search")
def search_command(
    index_dir: Path = typer.Argument(..., help="Index folder written by build-index."),
    queries: Path = typer.Argument(..., help="Embeddings Parquet file holding the queries."),
    split: Optional[str] = typer.Option(None, help="Split of the queries [default: query, or every row when the file has no split column]."),
    k: int = typer.Option(10, "--k", help="Results per query."),
    nprobe: Optional[int] = typer.Option(None, help="IVF lists probed [default: the index's, see index-info]."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="HNSW efSearch [default: the index's]."),
    device: DeviceName = typer.Option(DeviceName.auto, help="auto | cpu | cuda."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results Parquet file (query_id, rank, gallery_id, distance, gallery_pid, gallery_camid)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Workspace for the run folder [default: $RETRIEVE_WORKSPACE or ./retrieve-runs]."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Search an index with query embeddings; writes a results table and a run folder (kind "search")."""
    from retrieval.indexes.store import load_index
    from retrieval.runs import write_run
    from retrieval.workspace import new_run_dir

    if k < 1:
        raise typer.BadParameter(f"must be at least 1, got {k}", param_hint="--k")
    _positive(nprobe, "--nprobe")
    _positive(ef_search, "--ef-search")
    timings: dict[str, float] = {}
    started = time.perf_counter()
    handle = load_index(index_dir, device=device.value)
    query_emb, chosen_split = _read_queries(queries, split)
    timings["load"] = time.perf_counter() - started
    started = time.perf_counter()
    found = handle.search_detailed(query_emb.vectors, k, nprobe=nprobe, ef_search=ef_search)
    timings["search"] = time.perf_counter() - started
    table = results_table(handle, query_emb.ids, query_emb.pid, found.distances, found.rows)
    if out is not None:
        from retrieval.data.store import write_parquet_atomically

        write_parquet_atomically(table.select(["query_id", "rank", "gallery_id", "distance", "gallery_pid", "gallery_camid"]), out)
    run_dir = new_run_dir(workspace, "search")
    result = {
        "kind": "search",
        "index": _index_summary(handle),
        "num_queries": len(query_emb),
        "k": k,
        "params": found.params,
        "queries_per_second": len(query_emb) / max(timings["search"], 1e-9),
        "out": str(out) if out is not None else None,
        "run_dir": str(run_dir),
        "notes": list(found.notes),
    }
    record = {
        "kind": "search",
        "command": "retrieve " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "parameters": {"k": k, "nprobe": found.params["nprobe"], "ef_search": found.params["ef_search"],
                       "split": chosen_split, "device": device.value, "backend": found.params["backend"]},
        "inputs": {"embeddings": str(queries), "content_hash": query_emb.content_hash(),
                   "gallery": handle.manifest.get("content_hash"), "index": str(index_dir)},
        "versions": handle.manifest.get("versions"),
        "timings": timings,
        "result": result,
    }
    write_run(run_dir, record, {"rankings": table})
    if json_out:
        print_json(result)
        return
    _say(list(found.notes), "note")
    console = stdout_console()
    console.print(
        f"{len(query_emb)} queries × top {k} from {handle.manifest['factory']} ({handle.count} rows), "
        f"{result['queries_per_second']:.0f} queries/s; run {run_dir}" + (f"; results {out}" if out else ""),
        markup=False,
    )
    for q in range(min(3, len(query_emb))):
        top = ", ".join(f"{gid} ({d:.4f})" for gid, d in zip(handle.row_ids(found.rows[q, :5]), found.distances[q, :5]))
        console.print(f"  {query_emb.ids[q]}: {top}", markup=False)


# -------------------------------------------------------------------------------------- index-info


@app.command("index-info")
def index_info_command(
    index_dir: Path = typer.Argument(..., help="Index folder written by build-index."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as one JSON object."),
) -> None:
    """Describe an index: factory, metric, size, source embeddings, build parameters, search defaults."""
    from retrieval.indexes.store import load_index

    handle = load_index(index_dir, device="cpu")
    manifest = dict(handle.manifest)
    sizes = {p.name: p.stat().st_size for p in Path(index_dir).iterdir() if p.is_file()}
    info = {"path": str(index_dir), **manifest, "file_bytes": sizes}
    if json_out:
        print_json(info)
        return
    console = stdout_console()
    build = manifest["build"]
    lines = [
        ("index", str(index_dir)),
        ("factory", f"{manifest['factory']} (kind {manifest.get('kind')})"),
        ("metric", manifest["metric"]),
        ("rows × dim", f"{manifest['count']} × {manifest['dim']}"),
        ("source", f"{manifest.get('source')} (split {manifest.get('split')})"),
        ("content hash", str(manifest.get("content_hash"))),
        ("build", ", ".join(f"{k} {v}" for k, v in build.items() if v is not None)),
        ("build seconds", str(manifest.get("build_seconds"))),
        ("search defaults", ", ".join(f"{k} {v}" for k, v in manifest["search_defaults"].items()) or "none"),
        ("exact", f"{manifest.get('exact')} (vectors stored: {manifest.get('stores_vectors')})"),
        ("versions", ", ".join(f"{k} {v}" for k, v in (manifest.get("versions") or {}).items())),
        ("size", f"{sum(sizes.values()) / 1e6:.1f} MB"),
    ]
    if manifest.get("tuned"):
        t = manifest["tuned"]
        lines.append(("tuned", f"{t.get('parameter')} {t.get('value')} for recall@{t.get('k')} {t.get('recall'):.4f}"))
    for name, value in lines:
        console.print(f"{name:>16}  {value}", markup=False)


# -------------------------------------------------------------------------------------------- tune


def _gallery_for_tuning(handle, embeddings: Optional[Path]):
    """The gallery vectors for exact ground truth, when the index stores compressed codes."""
    from retrieval.data.store import read_embeddings

    if handle.is_exact or handle.stores_vectors:
        return None
    path = embeddings or (Path(handle.manifest["source"]) if handle.manifest.get("source") else None)
    if path is None or not path.is_file():
        return None  # tune() says what to pass
    gallery = read_embeddings(path, splits=handle.manifest.get("split"))
    handle.check_content_hash(gallery.content_hash())
    return gallery.vectors


@app.command("tune")
def tune_command(
    index_dir: Path = typer.Argument(..., help="Index folder written by build-index."),
    queries: Path = typer.Argument(..., help="Embeddings Parquet file holding the queries."),
    split: Optional[str] = typer.Option(None, help="Split of the queries [default: query, or every row when the file has no split column]."),
    target_recall: float = typer.Option(0.95, "--target-recall", help="recall@k to reach against exact search."),
    k: int = typer.Option(10, "--k", help="k of recall@k."),
    embeddings: Optional[Path] = typer.Option(None, "--embeddings", help="Gallery embeddings for the exact ground truth of PQ indexes [default: the index's source file]."),
    save: bool = typer.Option(True, "--save/--no-save", help="Write the cheapest setting meeting the target into the manifest as the default."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Sweep nprobe (IVF) or efSearch (HNSW): recall@k vs exact search and queries/s; keep the cheapest meeting the target."""
    from retrieval.indexes.store import load_index
    from retrieval.indexes.tuning import tune

    if k < 1:
        raise typer.BadParameter(f"must be at least 1, got {k}", param_hint="--k")
    if not 0 < target_recall <= 1:
        raise typer.BadParameter(f"must be in (0, 1], got {target_recall}", param_hint="--target-recall")
    handle = load_index(index_dir, device="cpu")
    query_emb, _ = _read_queries(queries, split)
    gallery = _gallery_for_tuning(handle, embeddings)
    with stage_progress(quiet=json_out) as progress:
        result = tune(handle, query_emb.vectors, k=k, target_recall=target_recall, gallery=gallery, progress=progress)
    saved = False
    if save and result.best is not None and result.parameter is not None:
        value = result.best[result.parameter]
        tuned = {"parameter": result.parameter, "value": value, "k": k, "target_recall": target_recall,
                 "recall": result.best["recall"], "queries": str(queries)}
        handle.save_search_defaults({result.parameter: value}, tuned)
        saved = True
    payload = {**result.to_dict(), "index": str(index_dir), "saved": saved}
    if json_out:
        print_json(payload)
        return
    console = stdout_console()
    if result.parameter is None:
        console.print(f"{handle.manifest['factory']} is exact: nothing to tune (recall 1).", markup=False)
        return
    console.print(f"{result.parameter:>10}  recall@{k}  queries/s", markup=False)
    for entry in result.sweep:
        console.print(f"{entry[result.parameter]:>10}  {entry['recall']:.4f}    {entry['qps']:.0f}", markup=False)
    if result.best is None:
        err_console().print(f"warning: no setting reached recall@{k} {target_recall}; defaults unchanged", markup=False)
    else:
        where = "saved as the index default" if saved else "not saved (--no-save)"
        console.print(f"cheapest meeting recall@{k} ≥ {target_recall}: {result.parameter} "
                      f"{result.best[result.parameter]} ({where})", markup=False)
