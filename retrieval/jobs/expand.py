"""What the evaluate job does to the vectors before ranking: multi-query pooling, query expansion, DBA.

Order (each step optional): the query set is pooled over (pid, camid) (``--multi-query mean|max``,
``eval.multi_query``); then DBA replaces the gallery vectors and the query expansion the query
vectors (``--expand``, ``eval.expansion``); re-ranking, when asked, runs on the expanded sets.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from retrieval.errors import OptionError
from retrieval.eval.errors import EvaluationError
from retrieval.labels import LabelledVectors

# The flag each parameter of the expansion comes from (for usage errors).
_FLAGS = {"qe_k": "--qe-k", "qe_alpha": "--qe-alpha", "dba_k": "--dba-k", "dba_alpha": "--dba-alpha"}


def expansion_option(methods, qe_k: int = 5, qe_alpha: float = 3.0, dba_k: int = 5):
    """``--expand`` and its parameters as an ``eval.expansion.Expansion`` (None when no method is
    named); a bad value is a usage error naming its flag."""
    from retrieval.eval.expansion import Expansion

    methods = parse_methods(methods) if isinstance(methods, str) or methods is None else tuple(methods)
    if not methods:
        return None
    try:
        return Expansion(methods, qe_k=qe_k, qe_alpha=qe_alpha, dba_k=dba_k)
    except EvaluationError as error:
        text = str(error)
        flag = next((f for name, f in _FLAGS.items() if text.startswith(name)), "--expand")
        raise OptionError(text, flag) from None


def parse_methods(text: str | None) -> tuple[str, ...] | None:
    """``"dba,alpha-qe"`` -> ("dba", "alpha-qe"); None or "" -> None."""
    if not text:
        return None
    return tuple(part.strip() for part in text.split(",") if part.strip())


def pooled_queries(queries: LabelledVectors, mode: str) -> tuple[LabelledVectors, dict[str, Any]]:
    """The query set with every query's vector replaced by its (pid, camid) group's pooled vector."""
    from retrieval.eval.multi_query import pool_queries

    if queries.pid is None:
        raise OptionError("--multi-query pools the queries of one identity: the queries carry no pid", "--multi-query")
    pooled = pool_queries(queries.vectors, queries.pid, queries.camid, queries.ids, mode=mode, per="query")
    return replace(queries, vectors=pooled.vectors), pooled.to_dict()


def expanded_sets(queries: LabelledVectors, gallery: LabelledVectors, expansion, device: str,
                  block_rows: int | None = None) -> tuple[LabelledVectors, LabelledVectors]:
    """The query and gallery sets with their expanded vectors (labels and ids unchanged)."""
    from retrieval.eval.expansion import expand

    out = expand(queries.vectors, gallery.vectors, expansion, block_rows=block_rows, device=device)
    return replace(queries, vectors=out.queries), replace(gallery, vectors=out.gallery)
