"""The metric vocabulary: one meaning per name (smaller = closer for every distance).

Kept free of numpy so that the command line can offer the names without importing the engine.
The arithmetic behind each name is ``indexes.distance`` (exact keys, float32 blocks).
"""

from __future__ import annotations

from enum import Enum


class Metric(str, Enum):
    EUCLIDEAN = "euclidean"  # ‖q − g‖
    SQEUCLIDEAN = "sqeuclidean"  # ‖q − g‖²
    COSINE = "cosine"  # 1 − cos(q, g), as ½‖q̂ − ĝ‖² of the L2-normalised vectors
    INNER_PRODUCT = "ip"  # −q·g

    @property
    def squared(self) -> bool:
        """Ranked by a squared euclidean key (everything but the inner product)."""
        return self is not Metric.INNER_PRODUCT

    @property
    def normalises(self) -> bool:
        return self is Metric.COSINE


# Other names for the same conventions (faiss's, and older manifests).
ALIASES = {"l2": Metric.EUCLIDEAN, "inner_product": Metric.INNER_PRODUCT, "dot": Metric.INNER_PRODUCT}

# What query-gallery evaluation, k-NN and the notebook gallery accept.
EVAL_METRICS = (Metric.EUCLIDEAN.value, Metric.SQEUCLIDEAN.value, Metric.COSINE.value)

# AlignedReID's distance: ‖q − g‖ of the embeddings + w · the aligned local distance of their
# part features (``eval.aligned``); ranking and re-ranking only (it needs the ``parts`` column).
ALIGNED = "aligned"
RANKING_METRICS = (*EVAL_METRICS, ALIGNED)
