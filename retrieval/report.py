"""HTML run reports: one self-contained file, figures embedded as base64 PNG.

``write_report([run_dir], out)`` -> parameters, metric table, CMC curve, VAL/FAR curve for
verification runs, DET curve and score histograms for identify runs, cluster sizes, the sweep and
the clusters to review first for cluster runs (``retrieval.report_faces``), AP histogram, worst
queries with ranked image strips (images from the
``path`` column of the embeddings file named in ``run.json``; ids and distances otherwise).
Two runs -> overlaid curves and histograms, a metric table with deltas and the paired
comparison of ``retrieval.compare``. The report (and the PNGs of ``png_dir``) are written
atomically; the run folders are only read.
"""

from __future__ import annotations

import base64
import html
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from retrieval.catalogue import RunFolder, resolve_run
from retrieval.common.atomic import check_output, write_bytes
from retrieval.errors import RetrieveError
from retrieval.plots import (
    Curve,
    RankedItem,
    Strip,
    ap_histogram_figure,
    cmc_figure,
    figure_png,
    ranked_strips_figure,
    roc_figure,
)
from retrieval.report_faces import clustering_figures, identification_figures, review_section
from retrieval.run_schema import resolve_input
from retrieval.runs import read_run_table

WORST_QUERIES = 8
STRIP_LENGTH = 10


@dataclass(frozen=True)
class ReportFigure:
    """A rendered figure of the report."""

    name: str  # file stem of the PNG
    title: str
    png: bytes


def default_report_name(run_dirs: Sequence[Path]) -> str:
    """``report-<run id>.html`` or ``report-<A>-vs-<B>.html``."""
    return "report-" + "-vs-".join(Path(run).name for run in run_dirs) + ".html"


# ------------------------------------------------------------------------------ reading runs


def _curves(run: RunFolder, kind: str) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(stage, x, y) of each stage's curve of this kind, points sorted by x."""
    table = read_run_table(run.path, "curves")
    if table is None or "curve" not in table.column_names:
        return []
    rows = [row for row in table.to_pylist() if row.get("curve") == kind]
    stages = list(dict.fromkeys(row.get("stage") or "plain" for row in rows))
    result = []
    for stage in stages:
        points = sorted(((row["x"], row["y"]) for row in rows if (row.get("stage") or "plain") == stage), key=lambda p: p[0])
        result.append((stage, np.array([p[0] for p in points], dtype=float), np.array([p[1] for p in points], dtype=float)))
    return result


def _cmc_from_per_query(per_query: pa.Table, max_rank: int = 50) -> tuple[np.ndarray, np.ndarray] | None:
    if per_query is None or "first_match_rank" not in per_query.column_names:
        return None
    rows = _valid_rows(per_query)
    if not rows:
        return None
    first = np.array([row["first_match_rank"] or 0 for row in rows])
    ranks = np.arange(1, max_rank + 1)
    return ranks.astype(float), np.array([np.mean((first >= 1) & (first <= k)) for k in ranks])


def _valid_rows(per_query: pa.Table | None) -> list[dict[str, Any]]:
    if per_query is None:
        return []
    return [
        row for row in per_query.to_pylist()
        if row.get("valid", True) and row.get("ap") is not None and np.isfinite(row["ap"])
    ]


def _image_paths(run: RunFolder) -> dict[str, str]:
    """id -> image path from the embeddings file(s) named in run.json, when they have a path column.

    Inputs are found from any working folder (``run_schema.resolve_input``: absolute path, as given,
    or beside the run); relative image paths are tried as given, then beside the embeddings file.
    A missing embeddings file or missing image files are said once (a warning), not drawn as grey.
    """
    inputs = run.record.get("inputs") or {}
    paths: dict[str, str] = {}
    if not isinstance(inputs, dict):
        return paths
    for key in ("embeddings", "gallery", "queries"):
        if not inputs.get(key):
            continue
        source = resolve_input(inputs, key, run.path)
        if source is None or not source.is_file():
            warnings.warn(f"report: {inputs.get(key)} (the {key} of run {run.run_id}) was not found; "
                          "the ranked strips show ids instead of images", stacklevel=2)
            continue
        paths.update(_paths_column(source))
    return paths


def _paths_column(source: Path) -> dict[str, str]:
    try:
        if "path" not in pq.read_schema(source).names:
            return {}
        table = pq.read_table(source, columns=["id", "path"])
    except (OSError, pa.ArrowException):
        return {}
    paths = {}
    for item_id, image in zip(table["id"].to_pylist(), table["path"].to_pylist()):
        if image:
            candidate = Path(image)
            if not candidate.is_absolute() and not candidate.exists():
                candidate = source.parent / image
            paths[str(item_id)] = str(candidate)
    return paths


def _warn_missing_images(strips: list[Strip], run: RunFolder) -> None:
    named = [path for strip in strips for path in [strip.query_image, *(item.image for item in strip.items)] if path]
    missing = [path for path in named if not Path(path).is_file()]
    if missing:
        warnings.warn(f"report: {len(missing)} of {len(named)} images of run {run.run_id} were not found "
                      f"(first: {missing[0]}); those tiles show ids instead", stacklevel=2)


def worst_query_strips(run: RunFolder, count: int = WORST_QUERIES, length: int = STRIP_LENGTH) -> list[Strip]:
    """The ``count`` valid queries with the lowest AP and their top ``length`` ranked gallery items."""
    rows = _valid_rows(read_run_table(run.path, "per_query"))
    if not rows:
        return []
    rows.sort(key=lambda row: (row["ap"], str(row["query_id"])))
    worst = rows[:count]
    rankings = read_run_table(run.path, "rankings")
    ranked: dict[str, list[dict]] = {str(row["query_id"]): [] for row in worst}
    if rankings is not None:
        for row in rankings.to_pylist():
            query_id = str(row["query_id"])
            if query_id in ranked:
                ranked[query_id].append(row)
    images = _image_paths(run)
    strips = []
    for row in worst:
        query_id = str(row["query_id"])
        items = sorted(ranked[query_id], key=lambda r: r["rank"])[:length]
        strips.append(
            Strip(
                query_id=query_id,
                query_image=images.get(query_id),
                caption=f"AP {row['ap']:.3f}, first match #{row.get('first_match_rank')}",
                items=[
                    RankedItem(
                        item_id=str(item["gallery_id"]),
                        distance=item.get("distance"),
                        status="junk" if item.get("is_junk") else ("match" if item.get("is_match") else "non-match"),
                        image=images.get(str(item["gallery_id"])),
                    )
                    for item in items
                ],
            )
        )
    _warn_missing_images(strips, run)
    return strips


# ---------------------------------------------------------------------------------- figures


def _labels(runs: Sequence[RunFolder]) -> list[str]:
    if len(runs) == 1:
        return [runs[0].run_id]
    return [f"A: {runs[0].run_id}", f"B: {runs[1].run_id}"]


def report_figures(runs: Sequence[RunFolder]) -> list[ReportFigure]:
    """Every figure of the report, in order."""
    labels = _labels(runs)
    figures: list[ReportFigure] = []
    cmc: list[Curve] = []
    roc: list[Curve] = []
    histograms = []
    for run, label in zip(runs, labels):
        stages = _curves(run, "cmc")
        if not stages:
            fallback = _cmc_from_per_query(read_run_table(run.path, "per_query"))
            stages = [("final", *fallback)] if fallback else []
        cmc += [Curve(f"{label} ({stage})", x, y) for stage, x, y in stages]
        roc += [Curve(f"{label} ({stage})", x, y) for stage, x, y in _curves(run, "roc")]
        valid = _valid_rows(read_run_table(run.path, "per_query"))
        if valid:
            histograms.append((label, np.array([row["ap"] for row in valid])))
    if cmc:
        figures.append(ReportFigure("cmc", "CMC curve", figure_png(cmc_figure(cmc))))
    if roc:
        figures.append(ReportFigure("roc", "VAL / FAR (ROC) curve", figure_png(roc_figure(roc))))
    if histograms:
        figures.append(ReportFigure("ap_histogram", "AP per query", figure_png(ap_histogram_figure(histograms))))
    figures += [ReportFigure(*figure) for figure in identification_figures(runs, labels)]
    figures += [ReportFigure(*figure) for figure in clustering_figures(runs, labels)]
    for index, (run, label) in enumerate(zip(runs, labels)):
        strips = worst_query_strips(run)
        if strips:
            name = "worst_queries" if len(runs) == 1 else f"worst_queries_{'ab'[index]}"
            title = f"Worst queries by AP, {label}"
            figures.append(ReportFigure(name, title, figure_png(ranked_strips_figure(strips, title))))
    return figures


# ------------------------------------------------------------------------------------- HTML


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if np.isfinite(value) else "NaN"
    return _esc(value)


def _html_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _run_summary(runs: Sequence[RunFolder], labels: Sequence[str]) -> str:
    rows = [
        [label, run.record.get("kind"), run.record.get("created"), run.record.get("command"), str(run.path)]
        for run, label in zip(runs, labels)
    ]
    return _html_table(["run", "kind", "created", "command", "folder"], rows)


def _run_details(run: RunFolder, label: str) -> str:
    """Parameters, inputs, timings and versions of a run (folded: the results come first)."""
    parts = [f"<details><summary>Run {_esc(label)}: parameters, inputs, timings, versions</summary>"]
    for key in ("parameters", "inputs", "timings", "versions"):
        value = run.record.get(key)
        if value:
            parts.append(f"<h3>{key.capitalize()}</h3><pre>{_esc(json.dumps(value, indent=2, sort_keys=True, default=str))}</pre>")
    parts.append(f"<p>format version {_esc(run.record.get('format_version'))}</p></details>")
    return "\n".join(parts)


def _metric_rows(run: RunFolder) -> dict[tuple[str, str], dict]:
    table = read_run_table(run.path, "metrics")
    if table is None:
        return {}
    return {(row["metric"], row.get("stage") or ""): row for row in table.to_pylist()}


def _metrics_section(runs: Sequence[RunFolder]) -> str:
    tables = [_metric_rows(run) for run in runs]
    keys = list(dict.fromkeys(key for table in tables for key in table))
    if not keys:
        return "<h2>Metrics</h2><p>This run stored no metrics.</p>"
    conventions = ["protocol", "ap_variant", "metric_distance"]
    if len(runs) == 1:
        # One row per metric, one column per stage (plain, rerank).
        stages = list(dict.fromkeys(stage for _, stage in keys))
        names = list(dict.fromkeys(name for name, _ in keys))
        rows = []
        for name in names:
            first = next(tables[0][(name, stage)] for stage in stages if (name, stage) in tables[0])
            rows.append([name, *(tables[0].get((name, stage), {}).get("value") for stage in stages),
                         *(first.get(c) for c in conventions)])
        table = _html_table(["metric", *(stage or "value" for stage in stages), *conventions], rows)
    else:
        rows = []
        for m, s in keys:
            a = tables[0].get((m, s), {}).get("value")
            b = tables[1].get((m, s), {}).get("value")
            delta = None if a is None or b is None else b - a
            source = tables[0].get((m, s)) or tables[1].get((m, s))
            rows.append([m, s, a, b, delta, *(source.get(c) for c in conventions)])
        table = _html_table(["metric", "stage", "A", "B", "B - A", *conventions], rows)
    return f"<h2>Metrics</h2><p>Values are fractions (multiply by 100 for percent).</p>{table}"


def _comparison_section(runs: Sequence[RunFolder]) -> str:
    from retrieval.compare import compare_runs

    try:
        result = compare_runs(runs[0].path, runs[1].path)
    except RetrieveError as exc:
        return f"<h2>Per-query comparison</h2><p>{_esc(exc)}</p>"
    parts = ["<h2>Per-query comparison (B - A)</h2>"]
    if result["per_query_metrics"]:
        parts.append(
            f"<p>{result['matched_queries']} queries valid in both runs, matched by query_id; "
            f"paired percentile bootstrap, {int(round(100 * result['confidence']))}% interval, "
            f"{result['n_resamples']} resamples, seed {result['seed']}.</p>"
        )
        parts.append(
            _html_table(
                ["metric", "A", "B", "delta", "low", "high"],
                [[m["metric"], m["a"], m["b"], m["delta"], m["low"], m["high"]] for m in result["per_query_metrics"]],
            )
        )
        counts = result["counts"]
        parts.append(
            f"<p>By AP: {counts['improved']} improved, {counts['worsened']} worsened, {counts['unchanged']} unchanged.</p>"
        )
        if result["largest_drops"]:
            parts.append("<h3>Largest AP drops</h3>")
            parts.append(
                _html_table(
                    ["query_id", "pid", "AP A", "AP B", "delta"],
                    [[c["query_id"], c["pid"], c["ap_a"], c["ap_b"], c["delta"]] for c in result["largest_drops"]],
                )
            )
    for note in result["warnings"]:
        parts.append(f"<p class='note'>note: {_esc(note)}</p>")
    return "\n".join(parts)


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; max-width: 1400px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f0f0f0; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.85em; }
img { max-width: 100%; }
.note { color: #8a5a00; }
figure { margin: 1em 0; }
"""


def render_html(runs: Sequence[RunFolder], figures: Sequence[ReportFigure]) -> str:
    """The whole report as one HTML string (figures inline as data: URIs)."""
    labels = _labels(runs)
    title = "retrieve report: " + " vs ".join(run.run_id for run in runs)
    parts = [
        "<!DOCTYPE html>",
        f"<html lang='en'><head><meta charset='utf-8'><title>{_esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
    ]
    parts.append(_run_summary(runs, labels))
    parts.append(_metrics_section(runs))
    if len(runs) == 2:
        parts.append(_comparison_section(runs))
    parts += [review_section(run) for run in runs]
    parts.append("<h2>Figures</h2>")
    if not figures:
        parts.append("<p>The run stored no curves or per-query values to plot.</p>")
    for figure in figures:
        encoded = base64.b64encode(figure.png).decode("ascii")
        parts.append(
            f"<figure id='{figure.name}'><figcaption><b>{_esc(figure.title)}</b></figcaption>"
            f"<img alt='{_esc(figure.title)}' src='data:image/png;base64,{encoded}'></figure>"
        )
    parts.append("<h2>Run details</h2>")
    parts += [_run_details(run, label) for run, label in zip(runs, labels)]
    parts.append("</body></html>")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------ writing


def _check_output_outside_runs(out: Path, runs: Sequence[RunFolder]) -> None:
    target = out.resolve()
    for run in runs:
        if target == run.path or run.path in target.parents:
            raise RetrieveError(f"{out}: inside run folder {run.path}; run folders are never written to, choose another --out")


def write_report(run_dirs: Sequence[Path | str], out: Path | str, png_dir: Path | str | None = None, *,
                 overwrite: bool = True) -> Path:
    """Write the HTML report of one run (or two, overlaid) to ``out``; PNGs into ``png_dir`` if given.

    Files are written atomically (``retrieval.common.atomic``); with ``overwrite=False`` (what
    ``retrieve report`` passes unless ``--overwrite``) an existing report or PNG is refused.
    """
    if not 1 <= len(run_dirs) <= 2:
        raise RetrieveError(f"a report shows one run or two overlaid, got {len(run_dirs)}")
    runs = [resolve_run(run_dir) for run_dir in run_dirs]
    out = Path(out)
    if out.is_dir():
        raise RetrieveError(f"{out}: is a folder; --out takes the HTML file to write")
    _check_output_outside_runs(out, runs)
    if png_dir is not None:
        _check_output_outside_runs(Path(png_dir), runs)
        if Path(png_dir).exists() and not Path(png_dir).is_dir():
            raise RetrieveError(f"{png_dir}: exists and is not a folder (--png takes a folder)")
    check_output(out, overwrite=overwrite)
    figures = report_figures(runs)
    page = render_html(runs, figures)
    if png_dir is not None:
        for figure in figures:
            check_output(Path(png_dir) / f"{figure.name}.png", overwrite=overwrite)
        for figure in figures:
            write_bytes(Path(png_dir) / f"{figure.name}.png", figure.png, overwrite=overwrite)
    write_bytes(out, page.encode("utf-8"), overwrite=overwrite)
    return out
