"""The aligned local distance of AlignedReID (Zhang et al. 2017) between two rows' part features.

Each row carries P part features of d values (horizontal stripes, top to bottom; the ``parts``
column of an embeddings file, ``retrieve.parts`` = P). For a query row q and a gallery row g,
the element distance of stripe i of q and stripe j of g is the euclidean distance
‖q_i − g_j‖; the aligned distance is the length of the shortest path from (0, 0) to
(P − 1, P − 1) through that P × P matrix, moving one step down or right at a time:

    S[0, 0] = D[0, 0];  S[i, j] = D[i, j] + min(S[i − 1, j], S[i, j − 1]);  distance = S[P − 1, P − 1]

so stripes are matched top to bottom in order, each stripe at least once (the paper's
"dynamically matching local information").

Convention (differs from the paper, on purpose): AlignedReID squashes element distances with
tanh(d / 2) because its local features are not normalised; ``retrieve embed`` writes each
stripe L2-normalised, so element distances already lie in [0, 2] and are used as they are.

Exact by construction: every element distance is a float64 sum of squared float64
differences in a fixed order (no GEMM, whose rounding depends on the block shape and the CPU
kernel), and the path sums are formed in a fixed order. So a (query, gallery) pair gets the
same float64 value whatever block of rows it is computed in, at any row position, on any CPU
(subtraction, multiplication, addition and sqrt are correctly rounded IEEE operations).
Cost: b·G·P²·d multiply-adds for a (b, G) block, in gallery chunks of bounded memory.
"""

from __future__ import annotations

import numpy as np

CHUNK_BYTES = 32 << 20  # memory of one chunk's (b, g, P, P, d) float64 differences


def as_parts(parts: np.ndarray, num_parts: int) -> np.ndarray:
    """(n, P·d) or (n, P, d) part features as a float64 (n, P, d) array; ValueError when the shapes disagree."""
    parts = np.asarray(parts)
    if parts.ndim == 2:
        if num_parts < 1 or parts.shape[1] % num_parts:
            raise ValueError(f"{parts.shape[1]} part values per row is not a multiple of {num_parts} parts")
        parts = parts.reshape(len(parts), num_parts, parts.shape[1] // num_parts)
    if parts.ndim != 3 or parts.shape[1] != num_parts:
        raise ValueError(f"expected part features of shape (n, {num_parts}, d) or (n, {num_parts}·d), got {parts.shape}")
    return parts.astype(np.float64, copy=False)


def element_distances(query: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """(b, g, P, P) euclidean distances between every stripe of every query and gallery row (float64 (·, P, d) inputs)."""
    diff = query[:, None, :, None, :] - gallery[None, :, None, :, :]
    return np.sqrt(np.square(diff, out=diff).sum(axis=-1))


def shortest_path(element: np.ndarray) -> np.ndarray:
    """The monotone shortest path from the top-left to the bottom-right of the last two axes (P × P)."""
    rows, cols = element.shape[-2:]
    total = np.empty_like(element)
    for i in range(rows):
        for j in range(cols):
            if i == 0 and j == 0:
                total[..., 0, 0] = element[..., 0, 0]
            elif i == 0:
                total[..., 0, j] = total[..., 0, j - 1] + element[..., 0, j]
            elif j == 0:
                total[..., i, 0] = total[..., i - 1, 0] + element[..., i, 0]
            else:
                total[..., i, j] = np.minimum(total[..., i - 1, j], total[..., i, j - 1]) + element[..., i, j]
    return total[..., rows - 1, cols - 1]


def aligned_distances(query_parts: np.ndarray, gallery_parts: np.ndarray, num_parts: int,
                      chunk_bytes: int = CHUNK_BYTES) -> np.ndarray:
    """The (b, G) float64 aligned local distances of a block of queries against gallery rows.

    ``query_parts`` (b, P·d) and ``gallery_parts`` (G, P·d), e.g. ``Embeddings.parts`` rows, or
    (·, P, d) arrays; ``num_parts`` = P (``Embeddings.num_parts``). Deterministic: the same
    value for a pair whatever the block size, chunking or row order.
    """
    query = as_parts(query_parts, num_parts)
    gallery = as_parts(gallery_parts, num_parts)
    if query.shape[2] != gallery.shape[2]:
        raise ValueError(f"query parts have {query.shape[2]} values per part, gallery parts {gallery.shape[2]}")
    out = np.empty((len(query), len(gallery)), dtype=np.float64)
    if not out.size:
        return out
    per_pair = num_parts * num_parts * query.shape[2] * 8
    rows = max(1, min(len(query), chunk_bytes // (per_pair * len(gallery)) or 1))
    cols = max(1, min(len(gallery), chunk_bytes // (per_pair * rows)))
    for r in range(0, len(query), rows):
        for c in range(0, len(gallery), cols):
            block = element_distances(query[r : r + rows], gallery[c : c + cols])
            out[r : r + rows, c : c + cols] = shortest_path(block)
    return out
