"""`retrieve evaluate`: query–gallery evaluation under a named protocol, with optional re-ranking,
index top-k mode and bootstrap intervals; prints a table (or one JSON object) and writes a run folder.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, Optional

import numpy as np
import typer

from retrieval.cli.app import app
from retrieval.cli.choices import DeviceName, ProtocolName


class MetricName(str, Enum):
    euclidean = "euclidean"
    sqeuclidean = "sqeuclidean"
    cosine = "cosine"


class ApName(str, Enum):
    standard = "standard"
    market = "market"


class CmcModeName(str, Enum):
    multi = "multi-gallery-shot"
    single = "single-gallery-shot"


class TopkApName(str, Enum):
    in_list = "in-list"
    min_r_k = "min-r-k"


class RerankDistanceName(str, Enum):
    squared = "squared"
    toolkit = "toolkit"


MAX_RANK = 50  # the CMC curve is always reported up to rank 50 (further if --cmc-ranks asks)
KEEP_TOP = 100  # rankings.parquet: top items per query


# ----------------------------------------------------------------------------- option parsing


def parse_cmc_ranks(text: str) -> list[int]:
    try:
        ranks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated ranks such as 1,5,10,20, got {text!r}", param_hint="--cmc-ranks") from None
    if not ranks or ranks[0] < 1:
        raise typer.BadParameter(f"ranks must be integers ≥ 1, got {text!r}", param_hint="--cmc-ranks")
    return ranks


def parse_junk_pids(text: str) -> tuple[int, ...]:
    if text.strip().lower() in ("", "none"):
        return ()
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated pids such as -1 (or 'none'), got {text!r}", param_hint="--junk-pids") from None


def check_rerank_options(k1: int, k2: int, lam: float) -> None:
    if k1 < 1:
        raise typer.BadParameter(f"k1 must be ≥ 1, got {k1}", param_hint="--k1")
    if k2 < 1:
        raise typer.BadParameter(f"k2 must be ≥ 1, got {k2}", param_hint="--k2")
    if k2 > k1:
        raise typer.BadParameter(f"k2 must not exceed k1 (k2 = {k2}, k1 = {k1})", param_hint="--k2")
    if not 0.0 <= lam <= 1.0:
        raise typer.BadParameter(f"lambda must be within [0, 1], got {lam}", param_hint="--lambda")


# ----------------------------------------------------------------------------- inputs


@dataclass
class EvalSets:
    """Queries and gallery (gallery is None when only an index holds it)."""

    queries: Any
    gallery: Any
    file_hash: str


def load_sets(
    embeddings: Path, gallery_file: Optional[Path], query_split: Optional[str], gallery_split: Optional[str],
    protocol: str, need_gallery: bool,
) -> EvalSets:
    """Select queries and gallery from the files as the options say (see the command's help)."""
    from retrieval.data.store import read_embeddings

    emb = read_embeddings(embeddings)
    if protocol == "leave-one-out" and query_split is None:
        queries = emb
    else:
        queries = emb.by_split(query_split or "query")
    if gallery_file is not None:
        other = read_embeddings(gallery_file)
        gallery = other.by_split(gallery_split) if gallery_split else other
    elif protocol == "leave-one-out" and gallery_split is None:
        gallery = queries
    elif need_gallery or gallery_split is not None or (emb.split is not None and np.any(emb.split == "gallery")):
        gallery = emb.by_split(gallery_split or "gallery")
    else:
        gallery = None
    return EvalSets(queries, gallery, emb.content_hash())


def check_labels(sets: EvalSets, protocol: str) -> None:
    """One clear line for inputs the protocol cannot score."""
    from retrieval.data.errors import DataError

    for name, part in (("queries", sets.queries), ("gallery", sets.gallery)):
        if part is None:
            continue
        if part.pid is None:
            raise DataError(f"{part.source}: no 'pid' column in the {name}; evaluation needs identities")
        if protocol == "market" and (part.camid is None or (part.camid_known is not None and not part.camid_known.all())):
            missing = len(part) if part.camid is None else int((~part.camid_known).sum())
            raise DataError(
                f"{part.source}: camid missing for {missing} of {len(part)} {name} rows; the market protocol "
                f"needs cameras (use --protocol no-camera for data without cameras)"
            )
    if sets.gallery is not None and sets.queries.dim != sets.gallery.dim:
        raise DataError(
            f"dimension mismatch: queries ({sets.queries.source}) have {sets.queries.dim} dimensions, "
            f"gallery ({sets.gallery.source}) has {sets.gallery.dim}"
        )


# ----------------------------------------------------------------------------- the stages


def protocol_kwargs(sets: EvalSets, protocol: str, junk: tuple[int, ...], ap: str, max_rank: int) -> dict:
    q, g = sets.queries, sets.gallery
    return dict(
        query_pid=q.pid, gallery_pid=g.pid,
        query_camid=q.camid if protocol == "market" else None,
        gallery_camid=g.camid if protocol == "market" else None,
        protocol=protocol, junk_pids=junk, ap_variant=ap, query_ids=q.ids, gallery_ids=g.ids, max_rank=max_rank,
    )


def run_index_stage(sets: EvalSets, index_dir: Path, k: int, nprobe: Optional[int], metric: Optional[str],
                    device: str, protocol: str, junk, ap: str, max_rank: int, progress, topk_ap: str = "in-list"):
    """Search the index with the queries and score its top-k lists (AP labelled mAP@k)."""
    from retrieval.eval.evaluate import evaluate_topk
    from retrieval.indexes.store import load_index

    handle = load_index(index_dir, device=device)
    if metric is not None:
        handle.check_metric(metric)
    if sets.gallery is not None:
        handle.check_content_hash(sets.gallery.content_hash())
    else:
        _note("the gallery's embeddings are not in the file: the index's content hash was not checked")
    rows = handle.rows
    gallery_pid = _column(rows, "pid")
    gallery_camid = _column(rows, "camid") if protocol == "market" else None
    if gallery_pid is None:
        from retrieval.indexes.errors import FaissIndexError

        raise FaissIndexError(f"{index_dir}: the index's rows carry no pid; it cannot be evaluated")
    if protocol == "market" and gallery_camid is None:
        from retrieval.data.errors import DataError

        raise DataError(f"{index_dir}: the index's rows carry no camid (use --protocol no-camera)")
    if k > handle.count:
        raise typer.BadParameter(f"k = {k} is larger than the index's {handle.count} items", param_hint="--k")
    distances, found = handle.search(sets.queries.vectors, k, nprobe=nprobe)
    q = sets.queries
    return evaluate_topk(
        found, distances, q.pid, gallery_pid, q.camid if protocol == "market" else None, gallery_camid,
        protocol=protocol, junk_pids=junk, ap_variant=ap, query_ids=q.ids,
        gallery_ids=np.asarray(rows.column("id").to_pylist(), dtype=object), max_rank=max_rank, keep_top=KEEP_TOP,
        metric=index_distance_name(handle.metric, handle.is_exact), topk_ap=topk_ap, progress=progress,
    )


def index_distance_name(index_metric: str, exact: bool) -> str:
    base = {"l2": "euclidean", "cosine": "cosine", "ip": "negative inner product"}.get(index_metric, index_metric)
    return f"{base} (index {index_metric}, {'exact' if exact else 'approximate'})"


def _column(table, name: str) -> np.ndarray | None:
    if name not in table.column_names or table.column(name).null_count == table.num_rows:
        return None
    column = table.column(name)
    if column.null_count:
        return None
    return np.asarray(column.to_numpy(), dtype=np.int64)


def rerank_source(sets: EvalSets, k1: int, k2: int, lam: float, distance: str, metric: str,
                  exclude_junk: bool, junk: tuple[int, ...], device: str, progress):
    from retrieval.eval.rerank import RerankedDistances

    q, g = sets.queries, sets.gallery
    exclude = None
    if exclude_junk:
        exclude = np.concatenate([np.isin(q.pid, junk), np.isin(g.pid, junk)])
    graph_size = len(q) + len(g) - (0 if exclude is None else int(exclude.sum()))
    if k1 >= graph_size:
        raise typer.BadParameter(f"k1 must be smaller than the {graph_size} items of the re-ranking graph, got {k1}", param_hint="--k1")
    return RerankedDistances(
        q.vectors, g.vectors, k1=k1, k2=k2, lambda_=lam, distance=distance, metric=metric,
        exclude_from_graph=exclude, progress=progress, device=device,
    )


def confidence_intervals(result, level: float, seed: int) -> dict:
    """Bootstrap intervals over the valid queries for mAP (or mAP@k) and rank-1."""
    from retrieval.eval.confidence import bootstrap_mean_interval

    table = result.per_query
    valid = np.asarray(table.column("valid").to_pylist(), dtype=bool)
    ap = np.asarray(table.column("ap").to_pylist(), dtype=object)[valid].astype(np.float64)
    first = np.asarray(table.column("first_match_rank").fill_null(0).to_pylist(), dtype=np.int64)[valid]
    out = {"level": level, "seed": seed, result.ap_key: list(bootstrap_mean_interval(ap, confidence=level, seed=seed))}
    if result.cmc_mode == "multi-gallery-shot":
        out["rank-1"] = list(bootstrap_mean_interval((first == 1).astype(np.float64), confidence=level, seed=seed))
    else:  # single-gallery-shot rank-1 is an average over samplings, not a per-query 0/1 value
        out["rank-1"] = None
        _note("no bootstrap interval for rank-1 under single-gallery-shot CMC")
    return out


# ----------------------------------------------------------------------------- results


def result_object(final, plain, rerank_params: Optional[dict]) -> dict:
    """The --json object (before run_dir and ci are added): the final stage's metrics."""
    result = final.to_dict()
    result["rerank"] = rerank_params
    if rerank_params is not None:
        before = plain.to_dict()
        result["before_rerank"] = {key: before[key] for key in (plain.ap_key, "mINP", "mAP_at_R", "cmc")}
        if plain.topk is not None:
            result["before_rerank"]["topk"] = plain.topk
    return result


def metric_rows(result, stage: str, cmc_ranks: list[int]) -> list[dict]:
    values = {result.ap_key: result.mAP, "mINP": result.mINP, "mAP_at_R": result.mAP_at_R, "R_precision": result.R_precision}
    values.update({f"rank-{k}": result.rank(k) for k in cmc_ranks if k <= len(result.cmc)})
    return [
        dict(metric=name, value=float(v), stage=stage, protocol=result.protocol, ap_variant=result.ap_variant,
             metric_distance=result.metric)
        for name, v in values.items()
        if v is not None and np.isfinite(v)
    ]


def curve_rows(result, stage: str) -> list[dict]:
    return [dict(curve="cmc", stage=stage, x=float(i + 1), y=float(v), threshold=None) for i, v in enumerate(result.cmc)]


def run_tables(final, plain, cmc_ranks: list[int]) -> dict:
    import pyarrow as pa

    stages = [("plain", plain)] + ([("rerank", final)] if final is not plain else [])
    metrics = pa.Table.from_pylist(
        [row for stage, r in stages for row in metric_rows(r, stage, cmc_ranks)],
        schema=pa.schema([("metric", pa.string()), ("value", pa.float64()), ("stage", pa.string()),
                          ("protocol", pa.string()), ("ap_variant", pa.string()), ("metric_distance", pa.string())]),
    )
    curves = pa.Table.from_pylist(
        [row for stage, r in stages for row in curve_rows(r, stage)],
        schema=pa.schema([("curve", pa.string()), ("stage", pa.string()), ("x", pa.float64()),
                          ("y", pa.float64()), ("threshold", pa.float64())]),
    )
    per_query = final.per_query
    if final is not plain:
        before = plain.per_query
        per_query = (
            per_query.append_column("ap_before_rerank", before.column("ap"))
            .append_column("inp_before_rerank", before.column("inp"))
            .append_column("first_match_rank_before_rerank", before.column("first_match_rank"))
        )
    return {"metrics": metrics, "per_query": per_query, "rankings": final.rankings, "curves": curves}


# ----------------------------------------------------------------------------- printing


def _note(text: str) -> None:
    from retrieval.console import err_console

    err_console().print(f"note: {text}")


def _pct(value: Optional[float]) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{100 * value:.2f}"


def print_table(final, plain, cmc_ranks: list[int], ci: Optional[dict], run_dir: Path,
                rerank_params: Optional[dict] = None) -> None:
    from rich.table import Table

    from retrieval.console import err_console, stdout_console

    reranked = final is not plain
    title = (
        f"protocol {final.protocol} · AP {final.ap_variant} · distance {final.metric} · "
        f"{final.num_valid_queries}/{final.num_queries} valid queries · {final.num_gallery} gallery"
    )
    if final.topk is not None:
        title += f" · top-{final.topk} lists"
    if final.cmc_mode != "multi-gallery-shot":
        title += f" · CMC {final.cmc_mode}"
    if rerank_params:
        title += (f" · re-ranked k1={rerank_params['k1']} k2={rerank_params['k2']} "
                  f"λ={rerank_params['lambda']} ({rerank_params['distance']} distance)")
    table = Table(title=title, title_justify="left")
    table.add_column("metric (%)")
    if reranked:
        table.add_column("before re-rank", justify="right")
        table.add_column("re-ranked", justify="right")
        table.add_column("Δ", justify="right")
    else:
        table.add_column("value", justify="right")
    if ci:
        table.add_column(f"{int(round(ci['level'] * 100))}% CI", justify="right")
    ap_label = "mAP" if final.topk is None else f"mAP@{final.topk}"
    names = [(ap_label, "mAP"), ("mINP", "mINP"), ("mAP@R", "mAP_at_R")] + [(f"rank-{k}", k) for k in cmc_ranks]
    for label, key in names:
        after = _value(final, key)
        cells = [label]
        if reranked:
            before = _value(plain, key)
            delta = None if after is None or before is None else after - before
            cells += [_pct(before), _pct(after), "—" if delta is None else f"{100 * delta:+.2f}"]
        else:
            cells.append(_pct(after))
        if ci:
            interval = ci.get(final.ap_key if key == "mAP" else label)
            cells.append(f"{_pct(interval[0])} – {_pct(interval[1])}" if interval else "")
        table.add_row(*cells)
    stdout_console().print(table)
    err_console().print(f"run folder: {run_dir}")


def _value(result, key) -> Optional[float]:
    if isinstance(key, int):
        return result.rank(key) if key <= len(result.cmc) else None
    value = getattr(result, key)
    return float(value) if np.isfinite(value) else None


# ----------------------------------------------------------------------------- the command


@app.command("evaluate")
def evaluate_command(
    ctx: typer.Context,
    embeddings: Path = typer.Argument(..., help="Embeddings Parquet file holding the queries (and usually the gallery)."),
    query_split: Optional[str] = typer.Option(None, help="Split of the queries (default: query; leave-one-out: all rows)."),
    gallery_split: Optional[str] = typer.Option(None, help="Split of the gallery (default: gallery; with --gallery: all rows of that file; leave-one-out: the queries)."),
    gallery: Optional[Path] = typer.Option(None, "--gallery", help="Take the gallery from another embeddings file."),
    metric: Optional[MetricName] = typer.Option(None, help="Distance (default: euclidean)."),
    protocol: ProtocolName = typer.Option(ProtocolName.market, help="market: same pid & camid junk; no-camera; leave-one-out: only the item itself removed (by id)."),
    junk_pids: str = typer.Option("-1", help="Comma-separated junk identities removed from every ranking ('none' for none)."),
    ap: ApName = typer.Option(ApName.standard, "--ap", help="AP variant: standard (non-interpolated) or market (official trapezoid)."),
    cmc_ranks: str = typer.Option("1,5,10,20", help="CMC ranks shown in the table (the whole curve to 50 is always stored)."),
    cmc_mode: CmcModeName = typer.Option(CmcModeName.multi, help="CMC: multi-gallery-shot, or CUHK03 single-gallery-shot (sampled, seeded)."),
    repeats: int = typer.Option(10, min=1, help="Repetitions of single-gallery-shot sampling."),
    device: DeviceName = typer.Option(DeviceName.auto, help="Where distances are computed: auto uses a CUDA GPU when torch sees one."),
    rerank: bool = typer.Option(False, "--rerank", help="Apply k-reciprocal re-ranking (Zhong et al. 2017)."),
    k1: int = typer.Option(20, "--k1", help="Re-ranking k1."),
    k2: int = typer.Option(6, "--k2", help="Re-ranking k2 (local query expansion)."),
    lam: float = typer.Option(0.3, "--lambda", help="Re-ranking weight of the original distance."),
    rerank_distance: RerankDistanceName = typer.Option(RerankDistanceName.squared, help="squared (the paper) or toolkit (a squared distance squared again, as common toolkits do)."),
    rerank_exclude_junk: bool = typer.Option(False, "--rerank-exclude-junk", help="Leave junk-pid items out of the re-ranking graph."),
    index: Optional[Path] = typer.Option(None, "--index", help="Evaluate an index's top-k lists instead of full rankings (AP labelled mAP@k)."),
    k: int = typer.Option(100, "--k", min=1, help="With --index: list length."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", min=1, help="With --index: IVF cells probed (default: the index's)."),
    topk_ap: TopkApName = typer.Option(TopkApName.in_list, "--topk-ap", help="With --index: AP@k divides by the matches found in the list (in-list) or by min(R, k) (min-r-k)."),
    ci: Optional[float] = typer.Option(None, "--ci", help="Bootstrap confidence level for mAP and rank-1 over queries, e.g. 0.95."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and of single-gallery-shot sampling."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to write (default: a new folder in the workspace)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Workspace folder (default: $RETRIEVE_WORKSPACE or ./retrieve-runs)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (values as fractions) instead of the table."),
) -> None:
    """Evaluate queries against a gallery: CMC, mAP, mINP, mAP@R (Market-1501 protocol by default; ties by gallery row order)."""
    from retrieval.eval.evaluate import evaluate_ranking
    from retrieval.eval.distances import EmbeddingDistances, resolve_device
    from retrieval.console import print_json
    from retrieval.progress import stage_progress
    from retrieval.runs import library_versions, write_run
    from retrieval.workspace import new_run_dir

    ranks = parse_cmc_ranks(cmc_ranks)
    junk = parse_junk_pids(junk_pids)
    if rerank:
        check_rerank_options(k1, k2, lam)
    if ci is not None and not 0.0 < ci < 1.0:
        raise typer.BadParameter(f"the confidence level must be within (0, 1), got {ci}", param_hint="--ci")
    max_rank = max(MAX_RANK, ranks[-1])
    distance = (metric or MetricName.euclidean).value
    timings: dict[str, float] = {}

    clock = time.perf_counter()
    sets = load_sets(embeddings, gallery, query_split, gallery_split, protocol.value,
                     need_gallery=index is None or rerank)
    check_labels(sets, protocol.value)
    timings["load"] = time.perf_counter() - clock
    compute_device = resolve_device(device.value)

    with stage_progress(quiet=json_out) as progress:
        clock = time.perf_counter()
        if index is not None:
            plain = run_index_stage(sets, index, k, nprobe, metric.value if metric else None, device.value,
                                    protocol.value, junk, ap.value, max_rank, progress, topk_ap.value)
            timings["index_search_and_rank"] = time.perf_counter() - clock
        else:
            source = EmbeddingDistances(sets.queries.vectors, sets.gallery.vectors, metric=distance, device=compute_device)
            plain = evaluate_ranking(source, **protocol_kwargs(sets, protocol.value, junk, ap.value, max_rank),
                                     keep_top=KEEP_TOP, cmc_mode=cmc_mode.value, repeats=repeats, seed=seed,
                                     metric=distance, progress=progress)
            timings["distances_and_rank"] = time.perf_counter() - clock
        final = plain
        if rerank:
            if index is not None:
                _note("re-ranking uses the embeddings (it needs query-query and gallery-gallery neighbourhoods), not the index")
            clock = time.perf_counter()
            source = rerank_source(sets, k1, k2, lam, rerank_distance.value, distance, rerank_exclude_junk, junk,
                                   compute_device, progress)
            final = evaluate_ranking(source, **protocol_kwargs(sets, protocol.value, junk, ap.value, max_rank),
                                     keep_top=KEEP_TOP, cmc_mode=cmc_mode.value, repeats=repeats, seed=seed,
                                     metric=distance, progress=progress)
            timings["rerank"] = time.perf_counter() - clock

    result = result_object(final, plain, source.params if rerank else None)
    interval = confidence_intervals(final, ci, seed) if ci is not None else None
    if interval is not None:
        result["ci"] = interval
    run_dir = out if out is not None else new_run_dir(workspace, "evaluate")
    result["run_dir"] = str(run_dir)

    parameters = {
        "query_split": query_split, "gallery_split": gallery_split, "metric": distance, "protocol": protocol.value,
        "junk_pids": list(junk), "ap": ap.value, "cmc_ranks": ranks, "cmc_mode": cmc_mode.value, "repeats": repeats,
        "device": device.value, "compute_device": compute_device, "rerank": rerank, "k1": k1, "k2": k2,
        "lambda": lam, "rerank_distance": rerank_distance.value, "rerank_exclude_junk": rerank_exclude_junk,
        "index": str(index) if index else None, "k": k if index else None, "nprobe": nprobe, "topk_ap": topk_ap.value if index else None, "ci": ci, "seed": seed,
    }
    inputs = {
        "embeddings": str(embeddings), "content_hash": sets.file_hash,
        "gallery": str(gallery) if gallery else None, "index": str(index) if index else None,
    }
    record = {
        "kind": "evaluate", "command": command_line(ctx), "parameters": parameters, "inputs": inputs,
        "versions": library_versions(), "timings": timings, "result": result,
    }
    write_run(run_dir, record, run_tables(final, plain, ranks))

    if json_out:
        print_json(result)
    else:
        print_table(final, plain, ranks, interval, run_dir, result["rerank"])


def command_line(ctx: typer.Context) -> str:
    """The command as it was given, rebuilt from the parsed options (defaults left out)."""
    words = ["retrieve", ctx.info_name or "evaluate"]
    for param in ctx.command.params:
        value = ctx.params.get(param.name)
        if isinstance(value, Enum):
            value = value.value
        default = param.default.value if isinstance(param.default, Enum) else param.default
        if param.param_type_name == "argument":
            words.append(str(value))
        elif value is not None and value != default:
            flag = max(param.opts, key=len)
            words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)
