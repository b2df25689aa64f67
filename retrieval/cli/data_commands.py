"""Commands that get embeddings in and describe them: import, layout, synth, info."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import typer

from retrieval.cli.app import app
from retrieval.cli.options import OVERWRITE_HELP, at_least
from retrieval.console import err_console, print_json, say, stdout_console
from retrieval.errors import OptionError
from retrieval.progress import stage_progress

if TYPE_CHECKING:
    import pyarrow as pa


class LayoutKind(str, Enum):
    market = "market"
    duke = "duke"
    msmt17 = "msmt17"
    veri = "veri"
    lfw = "lfw"
    cuhk03 = "cuhk03"


class VariantName(str, Enum):
    detected = "detected"
    labeled = "labeled"


class PresetName(str, Enum):
    small = "small"
    market = "market"
    msmt17 = "msmt17"
    veri = "veri"
    million = "million"
    lfw = "lfw"
    faces = "faces"
    faces_small = "faces-small"


def _write_table(out: Path, table: "pa.Table", model: Optional[str], overwrite: bool) -> None:
    """Validate an imported table and write it as an embeddings file (atomically; exclusive unless overwrite)."""
    from retrieval.data.store import embeddings_from_table
    from retrieval.data.writer import canonical_table, with_metadata, write_parquet_atomically

    emb = embeddings_from_table(table, out)
    say(emb.notes)
    write_parquet_atomically(with_metadata(canonical_table(table, emb), emb.dim, emb.normalized, model), out,
                             overwrite=overwrite)


@app.command("import")
def import_command(
    source: Path = typer.Argument(..., help="A .npy/.npz matrix, a MATLAB .mat export, a CSV/TSV manifest or a .pt dict."),
    out: Path = typer.Option(..., "--out", "-o", help="The embeddings Parquet file to write."),
    vectors: Optional[Path] = typer.Option(None, help="With a CSV/TSV manifest: the vector file (.npy/.npz/.parquet) whose rows match it."),
    labels: Optional[Path] = typer.Option(None, help="With a .npy matrix: a .npy of identity labels (pid)."),
    cams: Optional[Path] = typer.Option(None, help="With a .npy matrix: a .npy of camera ids."),
    names: Optional[Path] = typer.Option(None, help="With a .npy matrix: a .npy of item names (ids)."),
    features_key: str = typer.Option("features", help="Array name of the features in .npz/.pt."),
    labels_key: str = typer.Option("labels", help="Array name of the labels in .npz/.pt."),
    cams_key: str = typer.Option("cams", help="Array name of the cameras in .npz/.pt."),
    names_key: str = typer.Option("names", help="Array name of the item names in .npz/.pt."),
    split: Optional[str] = typer.Option(None, help="Split of every imported row (train/query/gallery/free); .mat files carry their own."),
    layout: Optional[LayoutKind] = typer.Option(None, help="Join pid/camid/split from this data set layout by path (needs --layout-root)."),
    layout_root: Optional[Path] = typer.Option(None, help="Root folder of the --layout data set."),
    layout_variant: Optional[VariantName] = typer.Option(None, help="With --layout cuhk03 and a root holding both: detected or labeled."),
    model: Optional[str] = typer.Option(None, help="Model name recorded in the file metadata."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Import embeddings from .npy/.npz, .mat, CSV/TSV manifest + vectors, or .pt into Parquet."""
    from retrieval.common.atomic import check_output
    from retrieval.data import importers
    from retrieval.data.errors import DataError

    check_output(out, overwrite=overwrite)
    if not source.exists():
        raise DataError(f"{source}: no such file")
    keys = importers.ArrayKeys(features_key, labels_key, cams_key, names_key)
    suffix = source.suffix.lower()
    if suffix in (".npy", ".npz"):
        table = importers.import_numpy(source, keys, split, labels, cams, names)
    elif suffix == ".mat":
        table = importers.import_mat(source)
    elif suffix in (".csv", ".tsv", ".tab"):
        if vectors is None:
            raise OptionError("a CSV/TSV manifest needs --vectors FILE", "--vectors")
        table = importers.import_manifest(source, vectors, keys)
    elif suffix in (".pt", ".pth"):
        table = importers.import_torch(source, keys, split)
    else:
        raise DataError(f"{source}: unknown input type '{suffix}' (expected .npy, .npz, .mat, .csv, .tsv or .pt)")
    if layout is not None:
        if layout_root is None:
            raise OptionError("--layout needs --layout-root", "--layout-root")
        from retrieval.data.layouts import build_manifest

        variant = layout_variant.value if layout_variant else None
        table = importers.join_manifest_by_path(build_manifest(layout.value, layout_root, variant), table)
    _write_table(out, table, model, overwrite)
    err_console().print(f"wrote {table.num_rows} rows to {out}")


@app.command("layout")
def layout_command(
    root: Path = typer.Argument(..., help="Root folder of the data set."),
    kind: LayoutKind = typer.Option(..., "--kind", help="Which data set layout the folder follows."),
    out: Path = typer.Option(..., "--out", "-o", help="Manifest Parquet file to write (id, path, pid, camid, split)."),
    variant: Optional[VariantName] = typer.Option(None, "--variant", help="cuhk03: detected or labeled images (needed when the root holds both)."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    json_output: bool = typer.Option(False, "--json", help="Print counts as JSON."),
) -> None:
    """Build the manifest (path, pid, camid, split) of Market-1501, Duke, MSMT17, VeRi-776, LFW or CUHK03-NP
    (new 767/700 protocol, detected or labeled; its evaluations default to single-gallery-shot CMC)."""
    import numpy as np

    from retrieval.common.atomic import check_output
    from retrieval.data.layouts import build_manifest
    from retrieval.data.writer import write_parquet_atomically

    check_output(out, overwrite=overwrite)
    from retrieval.data.layouts import layout_defaults

    table = build_manifest(kind.value, root, variant.value if variant else None)
    write_parquet_atomically(table, out, overwrite=overwrite)
    counts = {s: int(n) for s, n in zip(*np.unique(np.asarray(table.column("split").to_pylist()), return_counts=True))}
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    defaults = layout_defaults(meta)
    if json_output:
        print_json({"kind": kind.value, "dataset": meta.get("retrieve.dataset"), "rows": table.num_rows,
                    "splits": counts, "defaults": defaults, "out": str(out)})
    else:
        name = meta.get("retrieve.dataset", kind.value)
        stdout_console().print(f"{name}: {table.num_rows} images ({', '.join(f'{k} {v}' for k, v in counts.items())}) -> {out}",
                               markup=False)
        if defaults:
            say([f"evaluations of this data default to {', '.join(f'{k} {v}' for k, v in defaults.items())} "
                 "(recorded in the manifest's metadata, carried by import --layout)"])


@app.command("synth")
def synth_command(
    preset: PresetName = typer.Option(PresetName.small, "--preset", help="Shape of a real data set (docs/data.md lists them)."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same file."),
    out: Path = typer.Option(..., "--out", "-o", help="Embeddings Parquet file to write."),
    difficulty: float = typer.Option(1.0, "--difficulty", callback=at_least(0.0, "--difficulty"), help="Scales camera, pose and noise terms (1.0: realistic)."),
    pairs_out: Optional[Path] = typer.Option(
        None, "--pairs-out", help="With --preset lfw: where the pairs file goes (default: beside --out, lfw.parquet -> lfw.pairs.txt)."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Generate synthetic embeddings at the shape of Market-1501, MSMT17, VeRi-776, LFW or a million gallery."""
    if preset is PresetName.lfw:
        from retrieval.data.lfw_synth import generate_lfw

        _, pairs = generate_lfw(seed, out, pairs_out, difficulty=difficulty, overwrite=overwrite)
        err_console().print(f"wrote {out} and its pairs file {pairs}")
        return
    if pairs_out is not None:
        raise OptionError("only the lfw preset writes a pairs file", "--pairs-out")
    from retrieval.data.synth import generate

    with stage_progress() as progress:
        generate(preset.value, seed, out, difficulty=difficulty, progress=progress, overwrite=overwrite)
    err_console().print(f"wrote {out}")


def describe_embeddings(path: Path) -> dict:
    """Rows per split, dimension, identities, cameras, normalisation, metadata and content hash."""
    import numpy as np

    from retrieval.data.hashing import ContentHasher
    from retrieval.data.store import file_metadata, iter_embedding_batches

    hasher = ContentHasher()
    splits: dict[str, int] = {}
    pids: set[int] = set()
    cams: set[int] = set()
    normalized = True
    dim = 0
    for batch in iter_embedding_batches(path):
        hasher.update(batch.ids, batch.vectors)
        dim = batch.dim
        normalized = normalized and batch.normalized
        names = batch.split if batch.split is not None else np.full(len(batch), "(none)", dtype=object)
        for name, count in zip(*np.unique(names.astype(str), return_counts=True)):
            splits[str(name)] = splits.get(str(name), 0) + int(count)
        if batch.pid is not None:
            pids.update(np.unique(batch.pid).tolist())
        if batch.camid is not None:
            known = batch.camid if batch.camid_known is None else batch.camid[batch.camid_known]
            cams.update(np.unique(known).tolist())
    return {
        "file": str(path),
        "rows": hasher.rows,
        "splits": splits,
        "dim": dim,
        "identities": len([p for p in pids if p > 0]) if pids else None,
        "distractor_or_junk_pids": sorted(p for p in pids if p <= 0),
        "cameras": len(cams) if cams else None,
        "normalized": normalized,
        "metadata": file_metadata(path),
        "content_hash": hasher.hexdigest(),
    }


@app.command("info")
def info_command(
    path: Path = typer.Argument(..., help="Embeddings Parquet file."),
    json_output: bool = typer.Option(False, "--json", help="Print the description as one JSON object."),
) -> None:
    """Validate an embeddings file and describe it (splits, dim, identities, cameras, hash)."""
    info = describe_embeddings(path)
    if json_output:
        print_json(info)
        return
    from rich.table import Table

    table = Table(title=f"{path}", show_header=False)
    table.add_column("field")
    table.add_column("value", overflow="fold")  # long values wrap, never end in "…"
    table.add_row("rows", str(info["rows"]))
    table.add_row("splits", ", ".join(f"{k}: {v}" for k, v in info["splits"].items()))
    table.add_row("dimension", str(info["dim"]))
    table.add_row("identities", "-" if info["identities"] is None else str(info["identities"]))
    table.add_row("cameras", "-" if info["cameras"] is None else str(info["cameras"]))
    table.add_row("L2-normalised", "yes" if info["normalized"] else "no")
    for key, value in info["metadata"].items():
        table.add_row(key, value)
    stdout_console().print(table)
    # the whole hash on one line of its own, whatever the terminal width (to copy and compare)
    stdout_console().print(f"content hash {info['content_hash']}", soft_wrap=True, markup=False, highlight=False)
