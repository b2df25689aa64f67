"""`retrieve evaluate`: query–gallery evaluation under a named protocol, with optional query
expansion / DBA, re-ranking, multi-query pooling, index top-k mode and bootstrap intervals. Parses the options, runs ``retrieval.jobs.evaluate``,
prints a table (or one JSON object); the job writes the run folder.
"""

from __future__ import annotations

import shlex
from enum import Enum
from pathlib import Path
from typing import Optional

import math
import typer

from retrieval.common.metrics import RANKING_METRICS
from retrieval.cli.app import app
from retrieval.cli.choices import DeviceName, ProtocolName
from retrieval.cli.options import OVERWRITE_HELP, RAY_HELP, at_least, parse_cmc_ranks, parse_junk_pids


MetricName = Enum("MetricName", {name: name for name in RANKING_METRICS}, type=str)  # the distance core's names + aligned


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


class MultiQueryName(str, Enum):
    mean = "mean"
    max = "max"


# ----------------------------------------------------------------------------- printing


def _pct(value: Optional[float]) -> str:
    return "—" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"


def print_table(evaluation, run_dir: Path) -> None:
    from rich.table import Table

    from retrieval.console import err_console, stdout_console

    final, ci = evaluation.final, evaluation.ci
    cmc_ranks = evaluation.options.cmc_ranks
    table = Table(title=_title(final, evaluation.rerank_params, evaluation.expansion, evaluation.multi_query,
                               evaluation.options.aligned_weight),
                  title_justify="left", caption=_caption(final), caption_justify="left")
    table.add_column("metric (%)")
    stages = _stages(evaluation)
    for name, _ in stages:
        table.add_column(name, justify="right")
    if len(stages) > 1:
        table.add_column("Δ", justify="right")
    if ci:
        table.add_column(f"{int(round(ci['level'] * 100))}% CI", justify="right")
    ap_label = "mAP" if final.topk is None else f"mAP@{final.topk} ({final.topk_ap})"
    names = [(ap_label, "mAP"), ("mINP", "mINP"), ("mAP@R", "mAP_at_R")] + [(f"rank-{k}", k) for k in cmc_ranks]
    for label, key in names:
        table.add_row(*_row(evaluation, label, key))
    stdout_console().print(table)
    err_console().print(f"run folder: {run_dir}")


def _caption(final) -> Optional[str]:
    """Top-k mode: the AP@k convention, named under the table (not only in the JSON)."""
    from retrieval.eval.evaluate import TOPK_AP_CONVENTIONS

    if final.topk is None:
        return None
    words = TOPK_AP_CONVENTIONS[final.topk_ap].format(k=final.topk)
    return f"mAP@{final.topk} ({final.topk_ap}, --topk-ap): {words}."


def _stages(evaluation) -> list[tuple[str, object]]:
    """The columns of the table: each stage that ran, in order (one "value" column for a plain run)."""
    stages = []
    if evaluation.unexpanded is not None:
        stages += [("as given", evaluation.unexpanded), ("expanded", evaluation.plain)]
    elif evaluation.reranked:
        stages.append(("before re-rank", evaluation.plain))
    if evaluation.reranked:
        stages.append(("re-ranked", evaluation.final))
    return stages or [("value", evaluation.final)]


def _title(final, rerank_params: Optional[dict], expansion: Optional[dict] = None,
           multi_query: Optional[dict] = None, local_weight: Optional[float] = None) -> str:
    distance = final.metric if local_weight is None else f"{final.metric} (global + {local_weight:g}·local)"
    title = (
        f"protocol {final.protocol} · AP {final.ap_variant} · distance {distance} · "
        f"{final.num_valid_queries}/{final.num_queries} valid queries · {final.num_gallery} gallery"
    )
    if final.topk is not None:
        title += f" · top-{final.topk} lists"
    if final.cmc_mode != "multi-gallery-shot":
        title += f" · CMC {final.cmc_mode}"
    if multi_query:
        title += f" · multi-query: {multi_query['multi_query']} ({multi_query['groups']} groups)"
    if expansion:
        params = ", ".join(f"{k}={expansion[k]}" for k in ("dba_k", "qe_k", "qe_alpha") if k in expansion)
        title += f" · expanded {expansion['order']} ({params})"
    if rerank_params:
        title += (f" · re-ranked k1={rerank_params['k1']} k2={rerank_params['k2']} "
                  f"λ={rerank_params['lambda']} ({rerank_params['distance']} distance)")
    return title


def _row(evaluation, label: str, key) -> list[str]:
    final, ci = evaluation.final, evaluation.ci
    values = [_value(result, key) for _, result in _stages(evaluation)]
    cells = [label] + [_pct(value) for value in values]
    if len(values) > 1:
        first, last = values[0], values[-1]
        cells.append("—" if first is None or last is None else f"{100 * (last - first):+.2f}")
    if ci:
        interval = ci.get(final.ap_key if key == "mAP" else label)
        cells.append(f"{_pct(interval[0])} – {_pct(interval[1])}" if interval else "")
    return cells


def _value(result, key) -> Optional[float]:
    if isinstance(key, int):
        return result.rank(key) if key <= len(result.cmc) else None
    value = getattr(result, key)
    return float(value) if math.isfinite(value) else None


# ----------------------------------------------------------------------------- the command


@app.command("evaluate")
def evaluate_command(
    ctx: typer.Context,
    embeddings: Path = typer.Argument(..., help="Embeddings Parquet file (or folder of Parquet files) holding the queries (and usually the gallery)."),
    query_split: Optional[str] = typer.Option(None, help="Split of the queries (default: query; leave-one-out: all rows)."),
    gallery_split: Optional[str] = typer.Option(None, help="Split of the gallery (default: gallery; with --gallery: all rows of that file; leave-one-out: the queries)."),
    gallery: Optional[Path] = typer.Option(None, "--gallery", help="Take the gallery from another embeddings file (or folder of Parquet files)."),
    metric: Optional[MetricName] = typer.Option(None, "--metric", "--distance", help="Distance (default: euclidean); aligned: AlignedReID's ‖q − g‖ + w · aligned local distance of the 'parts' column."),
    local_weight: Optional[float] = typer.Option(None, "--local-weight", help="With --metric aligned: w, the weight of the aligned local distance [default: 1]."),
    protocol: ProtocolName = typer.Option(ProtocolName.market, help="market: same pid & camid junk; no-camera; leave-one-out: only the item itself removed (by id)."),
    junk_pids: str = typer.Option("-1", help="Comma-separated junk identities removed from every ranking ('none' for none)."),
    ap: ApName = typer.Option(ApName.standard, "--ap", help="AP variant: standard (non-interpolated) or market (official trapezoid)."),
    cmc_ranks: str = typer.Option("1,5,10,20", help="CMC ranks shown in the table (the whole curve to 50 is always stored)."),
    cmc_mode: Optional[CmcModeName] = typer.Option(None, help="CMC: multi-gallery-shot, or CUHK03 single-gallery-shot (sampled, seeded) [default: the data's layout default (cuhk03: single-gallery-shot), else multi-gallery-shot]."),
    repeats: int = typer.Option(10, callback=at_least(1, "--repeats"), help="Repetitions of single-gallery-shot sampling."),
    device: DeviceName = typer.Option(DeviceName.auto, help="Where distances are computed: auto uses a CUDA GPU when torch sees one."),
    rerank: bool = typer.Option(False, "--rerank", help="Apply k-reciprocal re-ranking (Zhong et al. 2017)."),
    k1: int = typer.Option(20, "--k1", help="Re-ranking k1."),
    k2: int = typer.Option(6, "--k2", help="Re-ranking k2 (local query expansion)."),
    lam: float = typer.Option(0.3, "--lambda", help="Re-ranking weight of the original distance."),
    rerank_distance: RerankDistanceName = typer.Option(RerankDistanceName.squared, help="squared (the paper) or toolkit (a squared distance squared again, as common toolkits do)."),
    rerank_exclude_junk: bool = typer.Option(False, "--rerank-exclude-junk", help="Leave junk-pid items out of the re-ranking graph."),
    expand: Optional[str] = typer.Option(None, "--expand", help="Query expansion before ranking (and before --rerank): aqe, alpha-qe, dba, or dba with one of the others (dba,alpha-qe)."),
    qe_k: int = typer.Option(5, "--qe-k", help="With --expand aqe / alpha-qe: gallery neighbours averaged into each query."),
    qe_alpha: float = typer.Option(3.0, "--qe-alpha", help="With --expand alpha-qe: neighbours weigh cos^alpha."),
    dba_k: int = typer.Option(5, "--dba-k", help="With --expand dba: gallery neighbours averaged into each gallery item."),
    multi_query: Optional[MultiQueryName] = typer.Option(None, "--multi-query", help="Market-1501 multi-query: each query's vector pooled (mean or max) over the queries of its identity and camera."),
    index: Optional[Path] = typer.Option(None, "--index", help="Evaluate an index's top-k lists instead of full rankings (AP labelled mAP@k)."),
    k: int = typer.Option(100, "--k", callback=at_least(1, "--k"), help="With --index: list length."),
    nprobe: Optional[int] = typer.Option(None, "--nprobe", callback=at_least(1, "--nprobe"), help="With --index: IVF cells probed (default: the index's)."),
    topk_ap: TopkApName = typer.Option(TopkApName.in_list, "--topk-ap", help="With --index: AP@k divides by the matches found in the list (in-list) or by min(R, k) (min-r-k)."),
    keep_top: int = typer.Option(10, "--keep-top", min=0, help="Items per query kept in rankings.parquet (each with its exact distance; more costs a little time)."),
    ci: Optional[float] = typer.Option(None, "--ci", help="Bootstrap confidence level for mAP and rank-1 over queries, e.g. 0.95."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and of single-gallery-shot sampling."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to write (default: a new folder in the workspace)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Workspace folder (default: $RETRIEVE_WORKSPACE or ./retrieve-runs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object (values as fractions) instead of the table."),
    ray: Optional[str] = typer.Option(None, "--ray", help=RAY_HELP),
) -> None:
    """Evaluate queries against a gallery: CMC, mAP, mINP, mAP@R (Market-1501 protocol by default; ties by gallery row order)."""
    from retrieval.console import print_json, say
    from retrieval.distributed.cluster import cluster_for
    from retrieval.jobs.evaluate import EvaluateOptions, IndexOptions, RerankOptions, evaluate_files, save
    from retrieval.jobs.expand import expansion_option
    from retrieval.progress import stage_progress
    from retrieval.runs import check_run_target
    from retrieval.workspace import new_run_dir

    options = EvaluateOptions(
        metric=metric.value if metric else None, protocol=protocol.value, junk_pids=parse_junk_pids(junk_pids),
        ap=ap.value, cmc_ranks=parse_cmc_ranks(cmc_ranks), cmc_mode=cmc_mode.value if cmc_mode else None,
        repeats=repeats, seed=seed, device=device.value, ci=ci, keep_top=keep_top,
        rerank=RerankOptions(k1, k2, lam, rerank_distance.value, rerank_exclude_junk) if rerank else None,
        index=IndexOptions(index, k, nprobe, topk_ap.value) if index is not None else None,
        expand=expansion_option(expand, qe_k, qe_alpha, dba_k),
        multi_query=multi_query.value if multi_query else None, local_weight=local_weight,
    )
    options.check()
    if ray is not None:
        options.check_on_cluster()
    run_dir = check_run_target(out if out is not None else new_run_dir(workspace, "evaluate"), overwrite=overwrite)
    with cluster_for(ray) as cluster, stage_progress(quiet=json_out) as progress:
        evaluation = evaluate_files(embeddings, gallery, query_split, gallery_split, options, progress, cluster=cluster)
    save(evaluation, run_dir, command=command_line(ctx), overwrite=overwrite)
    say(evaluation.notes)
    if json_out:
        print_json({**evaluation.summary(), "run_dir": str(run_dir)})
    else:
        print_table(evaluation, run_dir)


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
            flag = next((o for o in param.opts if o.startswith("--")), param.opts[0])  # the first long name
            words += [flag] if value is True else [flag, str(value)]
    return shlex.join(words)
