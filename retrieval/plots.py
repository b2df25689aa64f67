"""matplotlib figures for reports and notebooks: CMC, ROC (VAL/FAR), DET, AP and score histograms,
cluster sizes, threshold sweeps, ranked image strips.

Every function builds a ``matplotlib.figure.Figure`` on the Agg canvas (no pyplot, no global
state), so reports can be drawn anywhere; notebooks display the returned figure.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# Frame colours of ranked items.
STATUS_COLOURS = {"query": "#1f4e9c", "match": "#1a9641", "non-match": "#d7191c", "junk": "#8c8c8c",
                  "unlabelled": "#404040"}
JUNK_FADE = 0.35  # junk images are drawn at this contrast over white (greyed)


@dataclass(frozen=True)
class Curve:
    """One line of a plot: a label and its points."""

    label: str
    x: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class RankedItem:
    item_id: str
    distance: float | None
    status: str  # "match" | "non-match" | "junk" | "unlabelled"
    image: str | None = None
    rank: int | None = None  # the protocol's rank, junk not counted (rankings' kept_rank); None: counted here


def kept_ranks(items: Sequence[RankedItem]) -> list[int | None]:
    """One rank numbering everywhere: the protocol's rank of each item, junk not counted (None).

    Items carry it (``kept_rank`` of the run's rankings); otherwise it is counted along the list,
    which starts at the first ranked item."""
    ranks, counted = [], 0
    for item in items:
        if item.status == "junk":
            ranks.append(None)
            continue
        counted += 1
        ranks.append(item.rank if item.rank is not None else counted)
    return ranks


@dataclass(frozen=True)
class Strip:
    """A query and its ranked gallery items, drawn as one row."""

    query_id: str
    items: Sequence[RankedItem]
    query_image: str | None = None
    caption: str = ""


class DisplayFigure(Figure):
    """A Figure that notebooks display by itself (``_repr_png_``), without pyplot or %matplotlib."""

    def _repr_png_(self) -> bytes:
        return figure_png(self)


def new_figure(width: float, height: float) -> Figure:
    figure = DisplayFigure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def figure_png(figure: Figure) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")  # layouts are fixed when built: one draw, no "tight" second pass
    return buffer.getvalue()


def cmc_figure(curves: Sequence[Curve], title: str = "CMC curve") -> Figure:
    """Cumulative matching characteristic: match rate (%) within the first k ranks."""
    figure = new_figure(6.0, 4.0)
    axes = figure.add_subplot()
    for curve in curves:
        axes.plot(curve.x, 100.0 * np.asarray(curve.y), marker="o", markersize=3, label=curve.label)
    axes.set_xlabel("rank k")
    axes.set_ylabel("matching rate within top k (%)")
    axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if curves:
        axes.set_xlim(left=1)
        axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def roc_figure(curves: Sequence[Curve], title: str = "VAL / FAR (ROC)") -> Figure:
    """TAR (VAL) against FAR on a log FAR axis; points with FAR = 0 cannot be drawn on it and are left out."""
    figure = new_figure(6.0, 4.0)
    axes = figure.add_subplot()
    for curve in curves:
        x, y = np.asarray(curve.x, dtype=float), np.asarray(curve.y, dtype=float)
        keep = x > 0
        axes.step(x[keep], 100.0 * y[keep], where="post", label=curve.label)
    axes.set_xscale("log")
    axes.set_xlabel("false accept rate (FAR, log scale)")
    axes.set_ylabel("true accept rate (TAR / VAL, %)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    if curves:
        axes.legend(loc="lower right", fontsize="small")
    figure.tight_layout()
    return figure


def ap_histogram_figure(series: Sequence[tuple[str, np.ndarray]], bins: int = 20) -> Figure:
    """Histogram of per-query average precision in % (valid queries), one outline per run and stage."""
    figure = new_figure(6.0, 4.0)
    axes = figure.add_subplot()
    edges = np.linspace(0.0, 100.0, bins + 1)
    for label, values in series:
        values = 100.0 * np.asarray(values, dtype=float)
        axes.hist(values[np.isfinite(values)], bins=edges, alpha=0.5 if len(series) > 1 else 0.8,
                  label=f"{label} (n={np.isfinite(values).sum()})", edgecolor="black", linewidth=0.5)
    axes.set_xlabel("average precision of the query (%)")
    axes.set_ylabel("queries")
    axes.set_title("AP per query")
    if series:
        axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    return figure


TILE_WIDTH, TILE_HEIGHT, TILE_BORDER, TILE_GAP = 64, 128, 4, 6


def _hex_rgb(colour: str) -> np.ndarray:
    return np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)], dtype=np.uint8)


def load_thumbnail(path: str | None, size: tuple[int, int] = (TILE_WIDTH, TILE_HEIGHT)) -> np.ndarray | None:
    """The image at ``path`` as an RGB array fitted inside ``size`` (w, h), or None when it cannot be read."""
    if not path:
        return None
    try:
        from PIL import Image

        with Image.open(Path(path)) as image:
            image = image.convert("RGB")
            image.thumbnail(size)
            return np.asarray(image)
    except (OSError, ValueError):
        return None


def framed_tile(image: np.ndarray | None, colour: str) -> np.ndarray:
    """A fixed-size RGB tile: the image centred on light grey (or grey alone), framed in ``colour``."""
    tile = np.full((TILE_HEIGHT, TILE_WIDTH, 3), 244, dtype=np.uint8)
    if image is not None:
        h, w = image.shape[:2]
        top, left = (TILE_HEIGHT - h) // 2, (TILE_WIDTH - w) // 2
        tile[top:top + h, left:left + w] = image
    rgb = _hex_rgb(colour)
    tile[:TILE_BORDER], tile[-TILE_BORDER:] = rgb, rgb
    tile[:, :TILE_BORDER], tile[:, -TILE_BORDER:] = rgb, rgb
    return tile


def strip_mosaic(strip: Strip, columns: int) -> tuple[np.ndarray, list[bool]]:
    """The row mosaic of one strip (query first) and which tiles hold a real image; junk greyed."""
    images = [load_thumbnail(strip.query_image)] + [
        _faded(load_thumbnail(item.image)) if item.status == "junk" else load_thumbnail(item.image)
        for item in strip.items
    ]
    colours = [STATUS_COLOURS["query"]] + [STATUS_COLOURS.get(item.status, "#000000") for item in strip.items]
    row = np.full((TILE_HEIGHT, columns * (TILE_WIDTH + TILE_GAP), 3), 255, dtype=np.uint8)
    for i, (image, colour) in enumerate(zip(images, colours)):
        left = i * (TILE_WIDTH + TILE_GAP)
        row[:, left:left + TILE_WIDTH] = framed_tile(image, colour)
    return row, [image is not None for image in images]


def _faded(image: np.ndarray | None) -> np.ndarray | None:
    if image is None:
        return None
    return (image.astype(np.float32) * JUNK_FADE + 255.0 * (1.0 - JUNK_FADE)).astype(np.uint8)


def _tile_text(text: str, image_path: str | None) -> str:
    """What a tile without an image says: the id (and distance), and "image missing" when one was named."""
    return f"image missing\n{text}" if image_path else text


def ranked_strips_figure(strips: Sequence[Strip], title: str = "") -> Figure:
    """One row per query: the query, then its ranked gallery items framed match / non-match / junk.

    Each row is drawn as one mosaic image (fast for many tiles). Images come from the items'
    paths; items are numbered by the protocol's rank (junk not counted, as "first match #r" and
    the CMC count); junk items are faded and headed "unranked junk". A tile without a readable
    image shows the item's id and distance instead, labelled "image missing" when a path was named.
    """
    columns = 1 + max((len(strip.items) for strip in strips), default=0)
    rows = max(len(strips), 1)
    height = 2.2 * rows + 1.0
    figure = new_figure(0.95 * columns + 0.3, height)
    step = TILE_WIDTH + TILE_GAP
    for number, strip in enumerate(strips):
        axes = figure.add_subplot(rows, 1, number + 1)
        mosaic, has_image = strip_mosaic(strip, columns)
        axes.imshow(mosaic, interpolation="nearest")
        axes.set_axis_off()
        # (heading, text: in the tile when it has no image, else under it, colour, text always under it)
        labels = [("query", strip.query_id, STATUS_COLOURS["query"], strip.caption, strip.query_image)]
        for rank, item in zip(kept_ranks(strip.items), strip.items):
            distance = "" if item.distance is None else f"\n{item.distance:.3f}"
            heading = "unranked junk" if rank is None else f"#{rank} {item.status}"
            labels.append((heading, f"{item.item_id}{distance}", STATUS_COLOURS.get(item.status, "black"), "",
                           item.image))
        for i, (heading, text, colour, under, image_path) in enumerate(labels):
            centre = i * step + TILE_WIDTH / 2
            axes.text(centre, -4, heading, ha="center", va="bottom", fontsize=7.5, color=colour, fontweight="bold")
            if not has_image[i]:
                axes.text(centre, TILE_HEIGHT / 2, _tile_text(text, image_path), ha="center", va="center", fontsize=6.5)
            below = "\n".join(part for part in ((text if has_image[i] else ""), under) if part)
            if below:
                axes.text(centre, TILE_HEIGHT + 3, below, ha="center", va="top", fontsize=6.5)
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.6 / height, hspace=0.45, top=1 - 0.7 / height)
    if title:
        figure.suptitle(title, fontsize=11)
    return figure


def det_figure(curves: Sequence[Curve], title: str = "DET (open-set identification)") -> Figure:
    """FNIR against FPIR, both on log axes (the NIST FRVT convention); points at 0 cannot be drawn and are left out."""
    figure = new_figure(6.0, 4.0)
    axes = figure.add_subplot()
    drawn = []
    for curve in curves:
        x, y = np.asarray(curve.x, dtype=float), np.asarray(curve.y, dtype=float)
        keep = x > 0
        axes.step(x[keep], y[keep], where="post", label=curve.label)
        drawn.append(y[keep])
    log_y = any(np.any(y > 0) for y in drawn)  # a perfect curve (FNIR 0 throughout) stays on a linear axis
    if any(len(y) for y in drawn):
        axes.set_xscale("log")
    if log_y:
        axes.set_yscale("log")
    axes.set_xlabel("false positive identification rate (FPIR, log scale)")
    axes.set_ylabel("false negative identification rate (FNIR" + (", log scale)" if log_y else ")"))
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    if curves:
        axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    return figure


def score_histogram_figure(series: Sequence[tuple[str, np.ndarray]], unit: str, bins: int = 40) -> Figure:
    """Overlaid histograms of scores (e.g. mated probes' mate scores vs non-mated probes' top scores)."""
    figure = new_figure(6.0, 4.0)
    axes = figure.add_subplot()
    finite = [np.asarray(v, dtype=float)[np.isfinite(v)] for _, v in series]
    everything = np.concatenate(finite) if finite else np.zeros(0)
    edges = np.linspace(everything.min(), everything.max(), bins + 1) if len(everything) and np.ptp(everything) > 0 else bins
    for (label, _), values in zip(series, finite):
        axes.hist(values, bins=edges, alpha=0.55, label=f"{label} (n={len(values)})", edgecolor="black", linewidth=0.4)
    axes.set_xlabel(unit)
    axes.set_ylabel("probes")
    axes.set_title("Scores of mated and non-mated probes")
    if series:
        axes.legend(loc="upper left", fontsize="small")
    figure.tight_layout()
    return figure


def cluster_size_figure(series: Sequence[tuple[str, np.ndarray]]) -> Figure:
    """How many clusters of each size (log-spaced size bins, log counts)."""
    figure = new_figure(6.0, 4.0)
    axes = figure.add_subplot()
    largest = max((int(np.max(sizes)) for _, sizes in series if len(sizes)), default=1)
    edges = np.unique(np.round(np.logspace(0, np.log10(largest + 1), 30)).astype(int))
    for label, sizes in series:
        axes.hist(sizes, bins=edges, alpha=0.6, label=f"{label} ({len(sizes)} clusters)", edgecolor="black", linewidth=0.4)
    axes.set_xscale("log")
    axes.set_yscale("log")
    axes.set_xlabel("cluster size (items)")
    axes.set_ylabel("clusters")
    axes.set_title("Cluster sizes")
    if series:
        axes.legend(loc="upper right", fontsize="small")
    figure.tight_layout()
    return figure


def sweep_figure(thresholds: np.ndarray, scores: dict[str, np.ndarray], clusters: np.ndarray,
                 chosen: float | None = None) -> Figure:
    """Scores (pairwise F, BCubed F, NMI …) and the number of clusters against the threshold."""
    figure = new_figure(6.0, 5.0)
    top, bottom = figure.subplots(2, 1, sharex=True)
    for name, values in scores.items():
        top.plot(thresholds, values, marker="o", markersize=3, label=name)
    top.set_ylabel("score")
    top.set_ylim(0, 1.02)
    top.grid(True, alpha=0.3)
    if scores:
        top.legend(loc="lower left", fontsize="small")
    bottom.plot(thresholds, clusters, marker="o", markersize=3, color="#444444")
    bottom.set_yscale("log")
    bottom.set_ylabel("clusters")
    bottom.set_xlabel("threshold (merge below)")
    bottom.grid(True, which="both", alpha=0.3)
    for axes in (top, bottom):
        if chosen is not None:
            axes.axvline(chosen, color="#d7191c", linestyle="--", linewidth=1)
    top.set_title("Threshold sweep" + ("" if chosen is None else " (dashed: chosen with the labels, an oracle)"))
    figure.tight_layout()
    return figure
