"""Report pages of identify and cluster runs (FaceNet's other two tasks).

* identify: the DET curve (FNIR vs FPIR, log axes) and the scores of mated probes (their mate's)
  against non-mated probes' top scores; the CMC comes from the common ``cmc`` curve.
* cluster: cluster sizes at the chosen threshold (or the sweep's middle one without labels), the
  sweep (scores and cluster count against the threshold, the oracle choice marked), and the
  clusters to review first: the most coherent ones by mean pairwise similarity (no labels needed).
"""

from __future__ import annotations

import html
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from retrieval.catalogue import RunFolder
from retrieval.plots import Curve, cluster_size_figure, det_figure, figure_png, score_histogram_figure, sweep_figure
from retrieval.runs import read_run_table

REVIEW_CLUSTERS = 15
REVIEW_MEMBERS = 6
SWEEP_SCORES = ("pairwise_f", "bcubed_f", "nmi")


def identification_figures(runs: Sequence[RunFolder], labels: Sequence[str]) -> list[tuple[str, str, bytes]]:
    """(name, title, png) of the DET curve and the score histograms of identify runs."""
    figures = []
    det: list[Curve] = []
    for run, label in zip(runs, labels):
        curves = read_run_table(run.path, "curves")
        if curves is None:
            continue
        rows = [row for row in curves.to_pylist() if row["curve"] == "det"]
        if rows:
            det.append(Curve(label, np.array([r["x"] for r in rows]), np.array([r["y"] for r in rows])))
    if det:
        figures.append(("det", "DET curve (open set, rank-1 criterion)", figure_png(det_figure(det))))
    for index, (run, label) in enumerate(zip(runs, labels)):
        series = _score_series(run)
        if series:
            unit = "cosine similarity" if (run.record.get("parameters") or {}).get("metric") == "cosine" else "distance"
            name = "scores" if len(runs) == 1 else f"scores_{'ab'[index]}"
            figures.append((name, f"Scores, {label}", figure_png(score_histogram_figure(series, unit))))
    return figures


def _score_series(run: RunFolder) -> list[tuple[str, np.ndarray]]:
    table = read_run_table(run.path, "per_probe")
    if table is None or table.column("mated").null_count == table.num_rows:
        return []
    mated = np.asarray(table.column("mated").fill_null(False).to_pylist(), dtype=bool)
    mate = np.asarray(table.column("mate_score").to_pylist(), dtype=object)[mated]
    top = np.asarray(table.column("top1_score").to_pylist(), dtype=float)[~mated]
    mate = np.array([v for v in mate if v is not None], dtype=float)
    return [("mated probes: the mate's score", mate), ("non-mated probes: the top score", top)]


def _chosen_threshold(run: RunFolder, sweep: pa.Table) -> float | None:
    chosen = [row["threshold"] for row in sweep.to_pylist() if row.get("chosen")]
    if chosen:
        return float(chosen[0])
    values = sorted(sweep.column("threshold").to_pylist())
    return float(values[len(values) // 2]) if values else None


def clustering_figures(runs: Sequence[RunFolder], labels: Sequence[str]) -> list[tuple[str, str, bytes]]:
    """(name, title, png) of the cluster-size histogram and the sweep plot of cluster runs."""
    figures = []
    sizes = []
    for index, (run, label) in enumerate(zip(runs, labels)):
        sweep = read_run_table(run.path, "sweep")
        quality = read_run_table(run.path, "cluster_quality")
        if sweep is None or quality is None:
            continue
        threshold = _chosen_threshold(run, sweep)
        at = quality.filter(pc.equal(quality.column("threshold"), threshold))
        sizes.append((f"{label} at {threshold:.4g}", np.asarray(at.column("size").to_pylist(), dtype=float)))
        if sweep.num_rows > 1:
            rows = sorted(sweep.to_pylist(), key=lambda r: r["threshold"])
            scores = {name: np.array([r.get(name) if r.get(name) is not None else np.nan for r in rows], dtype=float)
                      for name in SWEEP_SCORES if name in sweep.column_names}
            chosen = next((r["threshold"] for r in rows if r.get("chosen")), None)
            figure = sweep_figure(np.array([r["threshold"] for r in rows]), scores,
                                  np.array([r["num_clusters"] for r in rows], dtype=float), chosen)
            name = "sweep" if len(runs) == 1 else f"sweep_{'ab'[index]}"
            figures.append((name, f"Threshold sweep, {label}", figure_png(figure)))
    if sizes:
        figures.insert(0, ("cluster_sizes", "Cluster sizes", figure_png(cluster_size_figure(sizes))))
    return figures


def review_section(run: RunFolder) -> str:
    """HTML: the most coherent clusters first (mean pairwise cosine similarity), with a few member ids."""
    sweep = read_run_table(run.path, "sweep")
    quality = read_run_table(run.path, "cluster_quality")
    clusters = read_run_table(run.path, "clusters")
    if sweep is None or quality is None or clusters is None:
        return ""
    threshold = _chosen_threshold(run, sweep)
    at = quality.filter(pc.and_(pc.equal(quality.column("threshold"), threshold), pc.greater(quality.column("size"), 1)))
    rows = sorted(at.to_pylist(), key=lambda r: (-(r["mean_similarity"] or -np.inf), r["cluster"]))[:REVIEW_CLUSTERS]
    members = clusters.filter(pc.equal(clusters.column("threshold"), threshold))
    wanted = {row["cluster"] for row in rows}
    by_cluster: dict[int, list[str]] = {}
    for cluster, item in zip(members.column("cluster").to_pylist(), members.column("id").to_pylist()):
        if cluster in wanted and len(by_cluster.setdefault(cluster, [])) < REVIEW_MEMBERS:
            by_cluster[cluster].append(str(item))
    body = "".join(
        f"<tr><td>{row['cluster']}</td><td>{row['size']}</td><td>{row['mean_similarity']:.4f}</td>"
        f"<td>{html.escape(', '.join(by_cluster.get(row['cluster'], [])))}</td></tr>"
        for row in rows
    )
    return (f"<h2>Clusters to review first (threshold {threshold:.4g})</h2><p>The most coherent clusters of two or "
            "more items by mean pairwise cosine similarity (no labels needed); "
            "<code>cluster_quality.parquet</code> holds every cluster.</p><table><thead><tr><th>cluster</th>"
            f"<th>size</th><th>mean similarity</th><th>first members</th></tr></thead><tbody>{body}</tbody></table>")
