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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from retrieval.catalogue import RunFolder, resolve_run
from retrieval.common.atomic import check_output, write_bytes
from retrieval.errors import RetrieveError
from retrieval.plots import (
    Curve,
    Strip,
    ap_histogram_figure,
    cmc_figure,
    figure_png,
    ranked_strips_figure,
    roc_figure,
)
from retrieval.report_faces import clustering_figures, identification_figures, review_section
from retrieval.runs import read_run_table
from retrieval.show import run_strips, valid_rows, worst_query_ids

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


def _ap_series(per_query: pa.Table | None, label: str) -> list[tuple[str, np.ndarray]]:
    """Per-query AP of the valid queries, one series per stage (plain and re-ranked when the run re-ranked)."""
    valid = valid_rows(per_query)
    if not valid:
        return []
    final = np.array([row["ap"] for row in valid])
    before = [row.get("ap_before_rerank") for row in valid]
    if all(value is None for value in before):
        return [(label, final)]
    before = np.array([np.nan if value is None else value for value in before], dtype=float)
    return [(f"{label} (plain)", before), (f"{label} (rerank)", final)]


def _cmc_from_per_query(per_query: pa.Table, max_rank: int = 50) -> tuple[np.ndarray, np.ndarray] | None:
    if per_query is None or "first_match_rank" not in per_query.column_names:
        return None
    rows = valid_rows(per_query)
    if not rows:
        return None
    first = np.array([row["first_match_rank"] or 0 for row in rows])
    ranks = np.arange(1, max_rank + 1)
    return ranks.astype(float), np.array([np.mean((first >= 1) & (first <= k)) for k in ranks])


def worst_query_strips(run: RunFolder, count: int = WORST_QUERIES, length: int = STRIP_LENGTH) -> list[Strip]:
    """The ``count`` valid queries with the lowest AP and their top ``length`` ranked gallery items
    (``retrieval.show``: numbered by kept rank, junk greyed, missing images said once)."""
    if not valid_rows(read_run_table(run.path, "per_query")) or read_run_table(run.path, "rankings") is None:
        return []
    return run_strips(run, worst_query_ids(run, count), length, warn_prefix="report")


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
        histograms += _ap_series(read_run_table(run.path, "per_query"), label)
    if cmc:
        figures.append(ReportFigure("cmc", "CMC curve", figure_png(cmc_figure(cmc))))
    if roc:
        figures.append(ReportFigure("roc", "VAL / FAR (ROC) curve", figure_png(roc_figure(roc))))
    if histograms:
        figures.append(ReportFigure("ap_histogram", "AP per query (valid queries, each stage)",
                                    figure_png(ap_histogram_figure(histograms))))
    figures += [ReportFigure(*figure) for figure in identification_figures(runs, labels)]
    figures += [ReportFigure(*figure) for figure in clustering_figures(runs, labels)]
    for index, (run, label) in enumerate(zip(runs, labels)):
        strips = worst_query_strips(run)
        if strips:
            name = "worst_queries" if len(runs) == 1 else f"worst_queries_{'ab'[index]}"
            title = (f"Worst queries by AP, {label}: the top {STRIP_LENGTH} of the final stage, "
                     "numbered by the protocol's rank (junk not counted)")
            figures.append(ReportFigure(name, title, figure_png(ranked_strips_figure(strips, title))))
    return figures


# ------------------------------------------------------------------------------------- HTML


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}" if np.isfinite(value) else "NaN"
    return _esc(value)


def _percent(value: Any) -> str | None:
    """A stored fraction shown as the CLI shows it: percent with two decimals."""
    if value is None or not np.isfinite(value):
        return None
    return f"{100.0 * value:.2f}"


def _points(delta: Any) -> str | None:
    """A difference of fractions in percentage points, signed."""
    if delta is None or not np.isfinite(delta):
        return None
    return f"{100.0 * delta:+.2f}"


def _interval(run: RunFolder, name: str) -> str | None:
    """The run's bootstrap interval of one metric (``evaluate --ci``), in percent."""
    ci = (run.record.get("result") or {}).get("ci") or {}
    bounds = ci.get(name)
    if not bounds or len(bounds) != 2:
        return None
    return f"{_percent(bounds[0])} – {_percent(bounds[1])}"


def _ci_level(run: RunFolder) -> str | None:
    ci = (run.record.get("result") or {}).get("ci") or {}
    return f"{int(round(100 * ci['level']))}% CI" if ci.get("level") else None


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
    """Metrics in percent (as the CLI prints them), differences in points, with ``--ci`` intervals."""
    tables = [_metric_rows(run) for run in runs]
    keys = list(dict.fromkeys(key for table in tables for key in table))
    if not keys:
        return "<h2>Metrics</h2><p>This run stored no metrics.</p>"
    conventions = ["protocol", "ap_variant", "metric_distance"]
    levels = [_ci_level(run) for run in runs]
    if len(runs) == 1:
        # One row per metric, one column per stage (plain, rerank); the interval is of the final stage.
        stages = list(dict.fromkeys(stage for _, stage in keys))
        names = list(dict.fromkeys(name for name, _ in keys))
        rows = []
        for name in names:
            first = next(tables[0][(name, stage)] for stage in stages if (name, stage) in tables[0])
            ci = [_interval(runs[0], name)] if levels[0] else []
            rows.append([name, *(_percent(tables[0].get((name, stage), {}).get("value")) for stage in stages),
                         *ci, *(first.get(c) for c in conventions)])
        ci_head = [f"{levels[0]} ({stages[-1] or 'value'})"] if levels[0] else []
        table = _html_table(["metric", *(f"{stage or 'value'} %" for stage in stages), *ci_head, *conventions], rows)
    else:
        rows = []
        for m, s in keys:
            a = tables[0].get((m, s), {}).get("value")
            b = tables[1].get((m, s), {}).get("value")
            delta = None if a is None or b is None else b - a
            source = tables[0].get((m, s)) or tables[1].get((m, s))
            ci = [_interval(run, m) for run, level in zip(runs, levels) if level]
            rows.append([m, s, _percent(a), _percent(b), _points(delta), *ci, *(source.get(c) for c in conventions)])
        ci_head = [f"{'AB'[i]} {level}" for i, level in enumerate(levels) if level]
        table = _html_table(["metric", "stage", "A %", "B %", "B - A (points)", *ci_head, *conventions], rows)
    return f"<h2>Metrics</h2><p>Values in percent, differences in percentage points, as the command line prints them.</p>{table}"


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
                ["metric", "A %", "B %", "B - A (points)", "interval (points)"],
                [[m["metric"], _percent(m["a"]), _percent(m["b"]), _points(m["delta"]),
                  f"{_points(m['low'])} – {_points(m['high'])}"] for m in result["per_query_metrics"]],
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
                    ["query_id", "pid", "AP A %", "AP B %", "B - A (points)"],
                    [[c["query_id"], c["pid"], _percent(c["ap_a"]), _percent(c["ap_b"]), _points(c["delta"])]
                     for c in result["largest_drops"]],
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
