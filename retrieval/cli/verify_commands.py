"""`retrieve verify`: 1:1 verification metrics from an LFW-format pairs file or query × gallery trials.

Pairs mode reads the pairs file (header ``<folds>\\t<pairs per fold>``; ``name i j`` is a same
pair, ``name1 i name2 j`` a different pair), finds each image (name, n) as the row whose ``id``
is ``name_%04d`` or whose ``path`` ends in ``name/name_%04d.<ext>``, and reports exact ROC
metrics plus k-fold accuracy (eval.verification). A missing image is an error, never skipped.
"""

from __future__ import annotations

import shlex
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePath
from typing import Any, Optional

import numpy as np
import pyarrow as pa
import typer

from retrieval.cli.app import app
from retrieval.cli.choices import DeviceName, ProtocolName
from retrieval.console import err_console, print_json, stdout_console
from retrieval.errors import RetrieveError
from retrieval.progress import stage_progress

CURVE_POINTS = 2000


class DistanceName(str, Enum):
    sqeuclidean = "sqeuclidean"
    cosine = "cosine"


class ThresholdGrid(str, Enum):
    exact = "exact"
    lfw = "lfw"


class TrialsKind(str, Enum):
    query_gallery = "query-gallery"


# ----------------------------------------------------------------------------- the pairs file


@dataclass(frozen=True)
class PairsFile:
    """The parsed pairs file: image keys ``name_%04d`` of each pair, its label, and the header."""

    first: list[str]
    second: list[str]
    is_same: np.ndarray
    folds: int
    pairs_per_fold: int


def image_key(name: str, number: int) -> str:
    return f"{name}_{number:04d}"


def parse_pairs_file(path: Path) -> PairsFile:
    """Parse an LFW pairs file; any malformed line is a one-line error with its line number."""
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError:
        raise RetrieveError(f"{path}: not a text pairs file") from None
    if not lines or not lines[0].split():
        raise RetrieveError(f"{path}:1: empty header; expected '<folds>\\t<pairs per fold>'")
    header = lines[0].split()
    try:
        numbers = [int(field) for field in header]
    except ValueError:
        numbers = []
    if len(numbers) not in (1, 2) or any(n < 1 for n in numbers):
        raise RetrieveError(f"{path}:1: bad header {lines[0]!r}; expected '<folds>\\t<pairs per fold>' (positive integers)")
    folds, per_fold = (1, numbers[0]) if len(numbers) == 1 else (numbers[0], numbers[1])
    first, second, same = [], [], []
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split()
        if not fields:
            continue
        a, b, is_same = _parse_pair_line(path, number, fields)
        first.append(a)
        second.append(b)
        same.append(is_same)
    expected = folds * 2 * per_fold
    if len(first) != expected:
        raise RetrieveError(
            f"{path}: the header announces {folds} × 2 × {per_fold} = {expected} pairs, the file has {len(first)}"
        )
    return PairsFile(first, second, np.array(same, dtype=bool), folds, per_fold)


def _parse_pair_line(path: Path, number: int, fields: list[str]) -> tuple[str, str, bool]:
    where = f"{path}:{number}"
    if len(fields) == 3:
        name, i, j = fields
        return image_key(name, _image_number(where, i)), image_key(name, _image_number(where, j)), True
    if len(fields) == 4:
        name1, i, name2, j = fields
        return image_key(name1, _image_number(where, i)), image_key(name2, _image_number(where, j)), False
    raise RetrieveError(
        f"{where}: expected 'name i j' (same pair) or 'name1 i name2 j' (different pair), got {len(fields)} fields"
    )


def _image_number(where: str, text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise RetrieveError(f"{where}: image number {text!r} is not an integer") from None
    if value < 0:
        raise RetrieveError(f"{where}: image number {value} is negative")
    return value


def image_rows(ids: np.ndarray, paths: np.ndarray | None) -> dict[str, int]:
    """Row of each image key: from ``id`` (``name_%04d``) or from ``path`` (``…/name/name_%04d.<ext>``).

    An id match wins over a path match. Two rows whose paths give one key is an error.
    """
    rows: dict[str, int] = {}
    if paths is not None:
        seen: dict[str, int] = {}
        for row, path in enumerate(paths):
            if path is None:
                continue
            pure = PurePath(str(path).replace("\\", "/"))
            stem, folder = pure.stem, pure.parent.name
            if folder and stem.startswith(folder + "_"):
                if stem in seen:
                    raise RetrieveError(f"image {stem} is given by two rows' paths ({paths[seen[stem]]} and {path})")
                seen[stem] = row
        rows.update(seen)
    rows.update({str(item): row for row, item in enumerate(ids)})
    return rows


def resolve_pairs(pairs: PairsFile, rows: dict[str, int], source: str, pairs_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of both images of every pair; missing images are listed in the error."""
    missing: list[str] = []
    for key in pairs.first + pairs.second:
        if key not in rows and key not in missing:
            missing.append(key)
    if missing:
        shown = ", ".join(missing[:8]) + (f", … ({len(missing)} in all)" if len(missing) > 8 else "")
        raise RetrieveError(
            f"{len(missing)} image(s) named in {pairs_path} are not in {source} "
            f"(looked for id 'name_NNNN' or path '…/name/name_NNNN.ext'): {shown}"
        )
    first = np.fromiter((rows[k] for k in pairs.first), dtype=np.int64, count=len(pairs.first))
    second = np.fromiter((rows[k] for k in pairs.second), dtype=np.int64, count=len(pairs.second))
    return first, second


# ----------------------------------------------------------------------------- option parsing


def parse_fars(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated numbers such as 1e-1,1e-3, got {text!r}", param_hint="--far")
    if not values or any(not 0 < v < 1 for v in values):
        raise typer.BadParameter(f"FAR targets must lie strictly between 0 and 1, got {text!r}", param_hint="--far")
    return values


def parse_junk_pids(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}", param_hint="--junk-pids") from None


# ----------------------------------------------------------------------------- the command


@app.command("verify")
def verify_command(
    embeddings: Path = typer.Argument(..., help="The embeddings Parquet file."),
    pairs: Optional[Path] = typer.Option(None, "--pairs", help="LFW-format pairs file (header '<folds>\\t<pairs per fold>')."),
    trials: Optional[TrialsKind] = typer.Option(None, "--trials", help="query-gallery: every query × gallery pair is a trial."),
    folds: Optional[int] = typer.Option(None, "--folds", help="k for k-fold accuracy (default: the pairs file's fold count, else 10)."),
    distance: DistanceName = typer.Option(DistanceName.sqeuclidean, "--distance", help="Distance (smaller = closer)."),
    threshold_grid: Optional[ThresholdGrid] = typer.Option(
        None, "--threshold-grid", help="exact (every split of the training distances, default) or lfw (0, 0.01, …, 3.99; same if d < t)."
    ),
    far: str = typer.Option("1e-1,1e-2,1e-3", "--far", help="Comma-separated FAR targets for TAR@FAR."),
    query_split: str = typer.Option("query", "--query-split", help="With --trials: split of the queries."),
    gallery_split: str = typer.Option("gallery", "--gallery-split", help="With --trials: split of the gallery."),
    protocol: ProtocolName = typer.Option(ProtocolName.market, "--protocol", help="With --trials: junk rules (as retrieve evaluate)."),
    junk_pids: str = typer.Option("-1", "--junk-pids", help="With --trials: comma-separated junk identities."),
    device: DeviceName = typer.Option(DeviceName.auto, "--device", help="With --trials: where distances are computed."),
    json_output: bool = typer.Option(False, "--json", help="Print one JSON object on stdout (fractions)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Run folder to write (default: a new folder in the workspace)."),
    workspace: Optional[Path] = typer.Option(None, "--workspace", help="Workspace folder (default $RETRIEVE_WORKSPACE or ./retrieve-runs)."),
) -> None:
    """Verification metrics: exact ROC (TAR vs FAR), AUC, EER, TAR@FAR and LFW-style k-fold accuracy."""
    fars = parse_fars(far)
    if (pairs is None) == (trials is None):
        raise typer.BadParameter("give exactly one of --pairs FILE and --trials query-gallery", param_hint="--pairs/--trials")
    if trials is not None and (folds is not None or threshold_grid is not None):
        raise typer.BadParameter("k-fold accuracy is for pairs files; drop --folds/--threshold-grid with --trials", param_hint="--folds")
    grid = (threshold_grid or ThresholdGrid.exact).value
    if grid == "lfw" and distance is not DistanceName.sqeuclidean:
        raise typer.BadParameter(
            "the lfw grid (0 … 3.99) is defined on squared Euclidean distance; use --distance sqeuclidean or --threshold-grid exact",
            param_hint="--threshold-grid",
        )
    if folds is not None and folds < 2:
        raise typer.BadParameter(f"k-fold accuracy needs at least 2 folds, got {folds}", param_hint="--folds")

    options = {
        "pairs": pairs, "trials": trials.value if trials else None, "folds": folds, "distance": distance.value,
        "threshold_grid": grid, "far": fars, "query_split": query_split, "gallery_split": gallery_split,
        "protocol": protocol.value, "junk_pids": parse_junk_pids(junk_pids), "device": device.value,
    }
    timings: dict[str, float] = {}
    with stage_progress(quiet=json_output) as progress:
        if pairs is not None:
            result, inputs = _verify_pairs(embeddings, pairs, options, timings)
        else:
            result, inputs = _verify_trials(embeddings, options, timings, progress)

    from retrieval.runs import library_versions, write_run
    from retrieval.workspace import new_run_dir

    run_dir = out if out is not None else new_run_dir(workspace, "verify")
    summary = {**result.to_dict(), "run_dir": str(run_dir)}
    curve = result.roc.curve.downsampled(CURVE_POINTS)
    parameters = {**_json_options(options), "curve_points": {"exact": len(result.roc.curve.threshold), "stored": len(curve.threshold)}}
    record = {
        "kind": "verify",
        "command": _command_line(embeddings, options),
        "parameters": parameters,
        "inputs": inputs,
        "versions": library_versions(),
        "timings": timings,
        "result": summary,
    }
    tables = {"metrics": _metrics_table(result), "curves": _curve_table(curve)}
    if result.kfold is not None:
        tables["folds"] = _folds_table(result.kfold)
    write_run(run_dir, record, tables)

    if json_output:
        print_json(summary)
        return
    _print_summary(summary, curve_note=parameters["curve_points"])


def _verify_pairs(embeddings: Path, pairs_path: Path, options: dict[str, Any], timings: dict[str, float]):
    from retrieval.data.store import read_embeddings
    from retrieval.eval.verification import evaluate_pairs, pair_distances

    started = time.perf_counter()
    pairs = parse_pairs_file(pairs_path)
    emb = read_embeddings(embeddings)
    first, second = resolve_pairs(pairs, image_rows(emb.ids, emb.path), str(embeddings), pairs_path)
    timings["read"] = time.perf_counter() - started
    started = time.perf_counter()
    folds = options["folds"] or (pairs.folds if pairs.folds > 1 else 10)
    options["folds"] = folds
    distances = pair_distances(emb.vectors[first], emb.vectors[second], options["distance"])
    result = evaluate_pairs(
        distances, pairs.is_same, distance=options["distance"], folds=folds,
        threshold_grid=options["threshold_grid"], fars=options["far"],
    )
    timings["metrics"] = time.perf_counter() - started
    inputs = {"embeddings": str(embeddings), "content_hash": emb.content_hash(), "pairs": str(pairs_path)}
    return result, inputs


def _verify_trials(embeddings: Path, options: dict[str, Any], timings: dict[str, float], progress):
    from retrieval.data.store import read_embeddings
    from retrieval.eval.distances import EmbeddingDistances
    from retrieval.eval.errors import EvaluationError
    from retrieval.eval.protocol import RankingLabels
    from retrieval.eval.trials import query_gallery_verification

    started = time.perf_counter()
    emb = read_embeddings(embeddings, splits=[options["query_split"], options["gallery_split"]])
    query, gallery = emb.by_split(options["query_split"]), emb.by_split(options["gallery_split"])
    timings["read"] = time.perf_counter() - started
    for part, name in ((query, "query"), (gallery, "gallery")):
        if part.pid is None:
            raise RetrieveError(f"{embeddings}: no 'pid' column; --trials needs identities for the {name} split")
    market = options["protocol"] == "market"
    if market:
        for part, name in ((query, options["query_split"]), (gallery, options["gallery_split"])):
            if part.camid is None or (part.camid_known is not None and not part.camid_known.all()):
                raise EvaluationError(
                    f"{embeddings}: the market protocol needs a camid for every {name} row; "
                    "use --protocol no-camera for data without cameras"
                )
    labels = RankingLabels(
        query.pid, gallery.pid, query.camid if market else None, gallery.camid if market else None,
        protocol=options["protocol"], junk_pids=options["junk_pids"], query_ids=query.ids, gallery_ids=gallery.ids,
    )
    started = time.perf_counter()
    source = EmbeddingDistances(query.vectors, gallery.vectors, metric=options["distance"], device=options["device"])
    result = query_gallery_verification(
        source, labels, fars=options["far"], distance=options["distance"], progress=progress
    )
    timings["metrics"] = time.perf_counter() - started
    inputs = {"embeddings": str(embeddings), "content_hash": emb.content_hash()}
    return result, inputs


# ----------------------------------------------------------------------------- outputs


def _json_options(options: dict[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in options.items()}


def _command_line(embeddings: Path, options: dict[str, Any]) -> str:
    parts = ["retrieve", "verify", str(embeddings)]
    if options["pairs"] is not None:
        parts += ["--pairs", str(options["pairs"]), "--folds", str(options["folds"]), "--threshold-grid", options["threshold_grid"]]
    else:
        parts += ["--trials", options["trials"], "--query-split", options["query_split"], "--gallery-split", options["gallery_split"],
                  "--protocol", options["protocol"], "--junk-pids", ",".join(str(p) for p in options["junk_pids"])]
    parts += ["--distance", options["distance"], "--far", ",".join(repr(x) for x in options["far"])]
    return shlex.join(parts)


def _metrics_table(result) -> pa.Table:
    summary = result.to_dict()
    rows: list[tuple[str, float]] = []
    for key in ("accuracy_mean", "accuracy_std", "roc_auc", "eer"):
        if summary[key] is not None:
            rows.append((key, float(summary[key])))
    for label, point in summary["tar_at_far"].items():
        rows.append((f"tar@far={label}", float(point["tar"])))
    for label, point in (summary["val_at_far"] or {}).items():
        rows.append((f"val@far={label}", float(point["val_mean"])))
    protocol = summary.get("protocol") or "pairs"
    n = len(rows)
    return pa.table({
        "metric": pa.array([r[0] for r in rows], pa.string()),
        "value": pa.array([r[1] for r in rows], pa.float64()),
        "stage": pa.array(["plain"] * n, pa.string()),
        "protocol": pa.array([protocol] * n, pa.string()),
        "ap_variant": pa.array([None] * n, pa.string()),
        "metric_distance": pa.array([result.distance] * n, pa.string()),
    })


def _curve_table(curve) -> pa.Table:
    n = len(curve.threshold)
    threshold = np.asarray(curve.threshold, dtype=np.float64)
    return pa.table({
        "curve": pa.array(["roc"] * n, pa.string()),
        "stage": pa.array(["plain"] * n, pa.string()),
        "x": pa.array(curve.far, pa.float64()),
        "y": pa.array(curve.tar, pa.float64()),
        "threshold": pa.array(threshold, pa.float64(), mask=np.isnan(threshold)),
    })


def _folds_table(kfold) -> pa.Table:
    columns: dict[str, list] = {
        "fold": [f.fold for f in kfold.folds],
        "start": [f.start for f in kfold.folds],
        "stop": [f.stop for f in kfold.folds],
        "threshold": [f.threshold for f in kfold.folds],
        "accuracy": [f.accuracy for f in kfold.folds],
    }
    for label in kfold.folds[0].val_at_far:
        columns[f"val@far={label}"] = [f.val_at_far[label]["val"] for f in kfold.folds]
        columns[f"far@far={label}"] = [f.val_at_far[label]["far"] for f in kfold.folds]
        columns[f"threshold@far={label}"] = [f.val_at_far[label]["threshold"] for f in kfold.folds]
    return pa.table({k: pa.array(v, pa.int64() if k in ("fold", "start", "stop") else pa.float64()) for k, v in columns.items()})


def _percent(value: float | None) -> str:
    return "—" if value is None or value != value else f"{100 * value:.2f}"


def _print_summary(summary: dict[str, Any], curve_note: dict[str, int]) -> None:
    from rich.table import Table

    if summary["mode"] == "pairs":
        title = (f"Verification: {summary['num_pairs']} pairs ({summary['num_same']} same, {summary['num_different']} different), "
                 f"distance {summary['distance']}, {summary['folds']}-fold, threshold grid {summary['threshold_grid']}")
    else:
        title = (f"Verification: {summary['num_pairs']} query × gallery trials ({summary['num_same']} genuine, "
                 f"{summary['num_different']} impostor), protocol {summary['protocol']}, distance {summary['distance']}")
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value %", justify="right")
    table.add_column("detail")
    if summary["accuracy_mean"] is not None:
        table.add_row("accuracy (k-fold)", f"{_percent(summary['accuracy_mean'])} ± {_percent(summary['accuracy_std'])}",
                      "mean ± population std over folds")
    table.add_row("ROC AUC", _percent(summary["roc_auc"]), "trapezoid over the exact curve")
    table.add_row("EER", _percent(summary["eer"]), "where FAR = 1 − TAR, interpolated on the curve")
    for label, point in summary["tar_at_far"].items():
        threshold = "none accepted" if point["threshold"] is None else f"{point['threshold']:.6g}"
        table.add_row(f"TAR@FAR={label}", _percent(point["tar"]), f"achieved FAR {point['far']:.3g}, threshold d ≤ {threshold}")
    for label, point in (summary["val_at_far"] or {}).items():
        table.add_row(f"VAL@FAR={label} (k-fold)", f"{_percent(point['val_mean'])} ± {_percent(point['val_std'])}",
                      f"mean held-out FAR {point['far_mean']:.3g}")
    stdout_console().print(table)
    err = err_console()
    for warning in summary["warnings"]:
        err.print(f"warning: {warning}")
    err.print(f"run folder: {summary['run_dir']} (ROC: {curve_note['stored']} of {curve_note['exact']} curve points stored)")
