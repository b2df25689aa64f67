"""Index commands: build-index, search, index-info, tune. Parse, call ``retrieval.jobs.index`` /
``retrieval.jobs.search``, print."""

from __future__ import annotations

import shlex
import sys
from enum import Enum
from pathlib import Path
from typing import Optional

import typer

from retrieval.cli.app import app
from retrieval.cli.choices import DeviceName, ProtocolName
from retrieval.cli.options import RAY_HELP, parse_junk_pids
from retrieval.console import err_console, print_json, say, stdout_console
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


# ------------------------------------------------------------------------------------- build-index


@app.command("build-index")
def build_index_command(
    embeddings: Path = typer.Argument(..., help="Embeddings Parquet file (or folder of Parquet files) holding the gallery."),
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
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing index folder (default: refused)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    shards: Optional[int] = typer.Option(None, "--shards", help="Build a sharded index: S shards, one index file each, one quantizer trained on a sample of all rows."),
    ray: Optional[str] = typer.Option(None, "--ray", help="With --shards: build the shards on Ray. " + RAY_HELP),
) -> None:
    """Build a faiss index of the gallery embeddings (streamed from the file or folder in batches)."""
    from retrieval.distributed.cluster import cluster_for
    from retrieval.jobs.index import BuildOptions, build

    options = BuildOptions(kind=kind.value if kind else None, factory=factory, metric=metric.value, nlist=nlist,
                           pq_m=pq_m, pq_bits=pq_bits, hnsw_m=hnsw_m, train_size=train_size, device=device.value,
                           seed=seed, split=split, shards=shards)
    options.check()
    if ray is not None and shards is None:
        raise typer.BadParameter("--ray builds a sharded index: give --shards S as well", param_hint="--ray")
    with cluster_for(ray) as cluster, stage_progress(quiet=json_out) as progress:
        result = build(embeddings, out, options, overwrite=overwrite, progress=progress, cluster=cluster)
    manifest = result.manifest
    if json_out:
        print_json({"index": str(out), "manifest": manifest, "warnings": result.warnings, "notes": result.notes})
        return
    say(result.warnings, "warning")
    say(result.notes, "note")
    defaults = ", ".join(f"{k} {v}" for k, v in manifest["search_defaults"].items()) or "none"
    sharded = f" in {len(manifest['shards'])} shards" if manifest.get("shards") else ""
    stdout_console().print(
        f"built {manifest['factory']} ({manifest['metric']}) of {manifest['count']} × {manifest['dim']}{sharded} "
        f"in {manifest['build_seconds']:.2f} s -> {out}  [search defaults: {defaults}]",
        markup=False,
    )


# ------------------------------------------------------------------------------------------ search


@app.command("search")
def search_command(
    index_dir: Path = typer.Argument(..., help="Index folder written by build-index."),
    queries: Optional[Path] = typer.Argument(None, help="Queries: an embeddings Parquet file, a .npy matrix or an .npz ('features', optional 'names') [or --vector / --vector-file]."),
    split: Optional[str] = typer.Option(None, help="Split of a Parquet query file [default: query, or every row when the file has no split column]."),
    ids: Optional[Path] = typer.Option(None, "--ids", help="With a .npy / .npz: the query ids, one per line (or a .npy of names)."),
    vector: Optional[str] = typer.Option(None, "--vector", help="One query vector as comma-separated numbers: \"0.1,0.2,...\"."),
    vector_file: Optional[Path] = typer.Option(None, "--vector-file", help="One query vector (or a matrix) in a .npy file."),
    k: int = typer.Option(10, "--k", help="Results per query."),
    nprobe: Optional[int] = typer.Option(None, help="IVF lists probed [default: the index's, see index-info]."),
    ef_search: Optional[int] = typer.Option(None, "--ef-search", help="HNSW efSearch [default: the index's]."),
    device: DeviceName = typer.Option(DeviceName.auto, help="auto | cpu | cuda."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Results Parquet file (query_id, rank, gallery_id, distance, gallery_pid, gallery_camid)."),
    protocol: Optional[ProtocolName] = typer.Option(None, "--protocol", help="Rule of the is_match / is_junk flags (default: market when queries and gallery have cameras, leave-one-out when the queries are gallery items, else no-camera)."),
    junk_pids: str = typer.Option("-1", "--junk-pids", help="Comma-separated junk identities ('none' for none)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Workspace for the run folder [default: $RETRIEVE_WORKSPACE or ./retrieve-runs]."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file (default: refused)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
    ray: Optional[str] = typer.Option(None, "--ray", help="Search a sharded index's shards on Ray. " + RAY_HELP),
) -> None:
    """Search an index with queries (a file, or one vector); prints the top-k ids and distances,
    writes a results table (--out) and a run folder (kind "search")."""
    from retrieval.jobs.inputs import query_set
    from retrieval.distributed.cluster import cluster_for
    from retrieval.jobs.search import SearchOptions, save, search
    from retrieval.workspace import new_run_dir

    options = SearchOptions(k=k, nprobe=nprobe, ef_search=ef_search, split=split, device=device.value,
                            protocol=protocol.value if protocol else None, junk_pids=parse_junk_pids(junk_pids))
    given = query_set(queries, split=split, ids=ids, vector=vector, vector_file=vector_file)
    with cluster_for(ray) as cluster, stage_progress(quiet=json_out) as progress:
        outcome = search(index_dir, given, options, out=out, overwrite=overwrite, progress=progress,
                         cluster=cluster)
    run_dir = new_run_dir(workspace, "search")
    command = "retrieve " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    result = save(outcome, run_dir, out, command=command, overwrite=overwrite)
    if json_out:
        print_json({**result, "results": _result_lists(outcome)})
        return
    say(result["notes"])
    _print_search(outcome, result)


FULL_LISTS = 5  # up to this many queries, every list is printed whole


def _result_lists(outcome) -> list[dict]:
    """Each query's answers (rank, id, distance, labels, flags): the --json "results"."""
    rows = outcome.rankings.to_pylist()
    lists: dict[str, list[dict]] = {}
    for row in rows:
        lists.setdefault(row.pop("query_id"), []).append(row)
    return [{"query_id": query_id, "top": items} for query_id, items in lists.items()]


def _print_search(outcome, result: dict) -> None:
    handle, found, query_ids = outcome.handle, outcome.found, outcome.queries.ids
    console = stdout_console()
    console.print(
        f"{len(query_ids)} queries × top {result['k']} from {handle.manifest['factory']} ({handle.count} rows), "
        f"{result['queries_per_second']:.0f} queries/s; run {result['run_dir']}"
        + (f"; results {result['out']}" if result["out"] else ""),
        markup=False,
    )
    if len(query_ids) <= FULL_LISTS:
        for entry in _result_lists(outcome):
            console.print(f"query {entry['query_id']}", markup=False)
            for item in entry["top"]:
                flag = "" if item["is_match"] is None else (" junk" if item["is_junk"] else
                                                            (" match" if item["is_match"] else ""))
                labels = "" if item["gallery_pid"] is None else f"  pid {item['gallery_pid']}"
                console.print(f"  {item['rank']:>4}  {item['gallery_id']}  {item['distance']:.6f}{labels}{flag}",
                              markup=False)
        return
    for q in range(min(3, len(query_ids))):
        top = ", ".join(f"{gid} ({d:.4f})" for gid, d in zip(handle.row_ids(found.rows[q, :5]), found.distances[q, :5]))
        console.print(f"  {query_ids[q]}: {top}", markup=False)


# ---------------------------------------------------------------------------- add-to / remove-from


def _print_change(change, json_out: bool) -> None:
    summary = change.summary()
    if json_out:
        print_json(summary)
        return
    verb = "added" if change.op == "add" else "removed"
    stdout_console().print(f"{verb} {change.rows} rows: {summary['factory']} now holds {summary['count']} "
                           f"(manifest 'sources' lists {len(summary['sources'])} steps) -> {summary['index']}", markup=False)


@app.command("add-to-index")
def add_to_index_command(
    index_dir: Path = typer.Argument(..., help="Index folder written by build-index."),
    embeddings: Path = typer.Argument(..., help="Embeddings Parquet file with the rows to add."),
    split: Optional[str] = typer.Option(None, help="Split to add [default: gallery, or every row when the file has no split column]."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Add rows to an index (Flat, IVF, IVF-PQ, HNSW); ids must be new. The manifest lists every source file."""
    from retrieval.jobs.index import add_to_index

    _print_change(add_to_index(index_dir, embeddings, split=split), json_out)


@app.command("remove-from-index")
def remove_from_index_command(
    index_dir: Path = typer.Argument(..., help="Index folder written by build-index."),
    ids: Path = typer.Option(..., "--ids", help="The ids to remove: one per line, a .npy of names, or a Parquet file's 'id' column."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
) -> None:
    """Remove rows from an index by id (Flat, IVF, IVF-PQ; HNSW cannot remove rows and is refused)."""
    from retrieval.jobs.index import remove_from_index

    _print_change(remove_from_index(index_dir, ids), json_out)


# -------------------------------------------------------------------------------------- index-info


@app.command("index-info")
def index_info_command(
    index_dir: Path = typer.Argument(..., help="Index folder written by build-index."),
    json_out: bool = typer.Option(False, "--json", help="Print the manifest as one JSON object."),
) -> None:
    """Describe an index: factory, metric, size, source embeddings, build parameters, search defaults."""
    from retrieval.jobs.index import describe

    info = describe(index_dir)
    manifest, sizes = info, info["file_bytes"]
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
    if manifest.get("shards"):
        counts = [str(r["count"]) for r in manifest["shards"]]
        lines.append(("shards", f"{len(counts)} (rows {', '.join(counts[:8])}{' …' if len(counts) > 8 else ''})"))
    if manifest.get("tuned"):
        t = manifest["tuned"]
        lines.append(("tuned", f"{t.get('parameter')} {t.get('value')} for recall@{t.get('k')} {t.get('recall'):.4f}"))
    for name, value in lines:
        console.print(f"{name:>16}  {value}", markup=False)


# -------------------------------------------------------------------------------------------- tune


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
    from retrieval.jobs.index import tune

    with stage_progress(quiet=json_out) as progress:
        tuning = tune(index_dir, queries, split=split, target_recall=target_recall, k=k, embeddings=embeddings,
                      save=save, progress=progress)
    result, handle, saved, payload = tuning.result, tuning.handle, tuning.saved, tuning.summary()
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
    console.print(f"{'flat scan':>10}  1.0000    {result.flat_qps:.0f}   (exact, the same queries)", markup=False)
    if result.best is None:
        err_console().print(f"warning: no setting reached recall@{k} {target_recall}; defaults unchanged", markup=False)
    else:
        where = "saved as the index default" if saved else "not saved (--no-save)"
        console.print(f"cheapest meeting recall@{k} ≥ {target_recall}: {result.parameter} "
                      f"{result.best[result.parameter]} ({where})", markup=False)
    if result.beats_flat is False:
        err_console().print(
            f"warning: no {result.parameter} setting beats a flat scan at recall@{k} ≥ {target_recall} on these queries "
            f"(flat: {result.flat_qps:.0f} queries/s, exact); build this gallery with --kind flat", markup=False)
