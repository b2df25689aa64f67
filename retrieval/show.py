"""A run's ranked lists as pictures or text, from the run folder alone (``retrieve show``, the report's
worst queries).

The lists come from ``rankings.parquet`` (its top items per query, junk included and flagged by
the run's protocol), the images from the ``path`` column of the embeddings file(s) the run read
(``run_schema.resolve_input`` finds them from any working folder; relative image paths are tried
as given, then beside the embeddings file). Items are numbered by ``kept_rank``, the protocol's
rank with junk removed; junk items carry no number, are greyed and flagged. A missing image is a
labelled placeholder, and all missing images of a picture are said in one warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from retrieval.catalogue import RunFolder
from retrieval.errors import RetrieveError
from retrieval.plots import RankedItem, Strip
from retrieval.run_schema import resolve_input
from retrieval.runs import read_run_table


@dataclass(frozen=True)
class RankedList:
    """One query's stored list: its rows (rank order) and the query's per-query row, when the run has one."""

    query_id: str
    rows: list[dict[str, Any]]
    per_query: dict[str, Any] | None


def status_of(row: dict[str, Any]) -> str:
    """match / non-match / junk from the row's flags; "unlabelled" when the run knew no identities."""
    if row.get("is_junk") is None and row.get("is_match") is None:
        return "unlabelled"
    return "junk" if row.get("is_junk") else ("match" if row.get("is_match") else "non-match")


def kept_ranks(rows: list[dict[str, Any]]) -> list[int | None]:
    """The protocol's rank of each row (junk removed): ``kept_rank`` when stored, else counted from the flags."""
    if rows and "kept_rank" in rows[0]:
        return [row.get("kept_rank") for row in rows]
    out, kept = [], 0
    for row in rows:
        if row.get("is_junk"):
            out.append(None)
        else:
            kept += 1
            out.append(kept)
    return out


def ranked_lists(run: RunFolder, query_ids: list[str], top: int) -> list[RankedList]:
    """The first ``top`` stored items of each query (an error naming the ids the run does not hold)."""
    rankings = read_run_table(run.path, "rankings")
    if rankings is None:
        raise RetrieveError(f"{run.path}: the run holds no rankings.parquet (a {run.record.get('kind')} run); "
                            "show draws evaluate and search runs")
    wanted = set(query_ids)
    grouped: dict[str, list[dict[str, Any]]] = {q: [] for q in query_ids}
    column = rankings.column("query_id")
    mask = pc.is_in(column.cast(pa.string()), value_set=pa.array(sorted(wanted), pa.string()))
    for row in rankings.filter(mask).to_pylist():
        grouped[str(row["query_id"])].append(row)
    missing = [q for q in query_ids if not grouped[q]]
    if missing:
        known = rankings.column("query_id").unique().to_pylist()[:3]
        raise RetrieveError(f"{run.path}: no ranked list for query {', '.join(map(repr, missing[:5]))} "
                            f"(the run's queries are ids such as {', '.join(map(repr, known))})")
    per_query = _per_query_rows(run)
    return [RankedList(q, sorted(grouped[q], key=lambda r: r["rank"])[:top], per_query.get(q)) for q in query_ids]


def _per_query_rows(run: RunFolder) -> dict[str, dict[str, Any]]:
    table = read_run_table(run.path, "per_query")
    return {} if table is None else {str(row["query_id"]): row for row in table.to_pylist()}


def worst_query_ids(run: RunFolder, count: int) -> list[str]:
    """The ``count`` valid queries with the lowest AP (ties by query id)."""
    rows = valid_rows(read_run_table(run.path, "per_query"))
    if not rows:
        raise RetrieveError(f"{run.path}: the run has no valid queries with an AP to order by")
    rows.sort(key=lambda row: (row["ap"], str(row["query_id"])))
    return [str(row["query_id"]) for row in rows[:count]]


def valid_rows(per_query: pa.Table | None) -> list[dict[str, Any]]:
    if per_query is None:
        return []
    return [row for row in per_query.to_pylist()
            if row.get("valid", True) and row.get("ap") is not None and np.isfinite(row["ap"])]


# ------------------------------------------------------------------------------------- images


def image_paths(run: RunFolder, warn_prefix: str = "show") -> dict[str, str]:
    """id -> image path from the embeddings file(s) named in run.json, when they have a path column.

    A missing embeddings file is said once (a warning); its items are drawn without images.
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
            warnings.warn(f"{warn_prefix}: {inputs.get(key)} (the {key} of run {run.run_id}) was not found; "
                          "the ranked items show ids instead of images", stacklevel=2)
            continue
        paths.update(path_column(source))
    return paths


def path_column(source: Path) -> dict[str, str]:
    """id -> image path of an embeddings file (relative paths: as given, else beside the file)."""
    try:
        if "path" not in pq.read_schema(source).names:
            return {}
        table = pq.read_table(source, columns=["id", "path"])
    except (OSError, pa.ArrowException):
        return {}
    from retrieval.data.store import resolve_image_path  # the one rule: as given, else beside the file

    return {str(item_id): resolve_image_path(image, source)
            for item_id, image in zip(table["id"].to_pylist(), table["path"].to_pylist()) if image}


def warn_missing_images(strips: list[Strip], run: RunFolder, warn_prefix: str = "show") -> None:
    """One warning for all the images named but not found (their tiles are labelled placeholders)."""
    named = [path for strip in strips for path in [strip.query_image, *(item.image for item in strip.items)] if path]
    missing = [path for path in named if not Path(path).is_file()]
    if missing:
        warnings.warn(f"{warn_prefix}: {len(missing)} of {len(named)} images of run {run.run_id} were not found "
                      f"(first: {missing[0]}); their tiles are labelled placeholders", stacklevel=2)


# ------------------------------------------------------------------------------------- strips


def strip_of(ranked: RankedList, images: dict[str, str]) -> Strip:
    """The picture row of one ranked list: query, then its items numbered by kept rank."""
    numbers = kept_ranks(ranked.rows)
    items = [
        RankedItem(item_id=str(row["gallery_id"]), distance=row.get("distance"), status=status_of(row),
                   image=images.get(str(row["gallery_id"])), rank=number)
        for row, number in zip(ranked.rows, numbers)
    ]
    info = ranked.per_query or {}
    caption = ""
    if info.get("ap") is not None:
        caption = f"AP {100 * info['ap']:.1f} %\nfirst match #{info.get('first_match_rank')}"
    elif info.get("pid") is not None:
        caption = f"pid {info['pid']}"
    return Strip(query_id=ranked.query_id, items=items, query_image=images.get(ranked.query_id), caption=caption)


def run_strips(run: RunFolder, query_ids: list[str], top: int, warn_prefix: str = "show",
               lists: list[RankedList] | None = None) -> list[Strip]:
    """The strips of the given queries (or of ``lists`` already read), images looked up once,
    missing images said once."""
    images = image_paths(run, warn_prefix)
    lists = lists if lists is not None else ranked_lists(run, query_ids, top)
    strips = [strip_of(ranked, images) for ranked in lists]
    warn_missing_images(strips, run, warn_prefix)
    return strips


def text_rows(ranked: RankedList, images: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """The rows ``retrieve show --text`` prints (and ``--json`` gives): kept rank, id, distance, status."""
    images = images or {}
    return [
        {"rank": number, "position": int(row["rank"]), "gallery_id": str(row["gallery_id"]),
         "distance": row.get("distance"), "status": status_of(row), "path": images.get(str(row["gallery_id"]))}
        for row, number in zip(ranked.rows, kept_ranks(ranked.rows))
    ]
