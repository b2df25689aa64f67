"""Named index kinds -> faiss ``index_factory`` strings, with defaults chosen from the data's shape.

Defaults (the usual faiss guidance):

* ``nlist`` (IVF lists) = round(4 * sqrt(count)), clipped so that every centroid has at least
  39 training rows (faiss's minimum for a useful k-means), and at least 1.
* PQ sub-quantisers ``m`` = the largest divisor of the dimension that is <= dim / 4 and <= 64
  (about 4 dimensions per sub-quantiser, at most 64 bytes a vector); 8 bits each.
* HNSW ``M`` = 32.
* Default ``nprobe`` = max(8, nlist / 8), never more than nlist (never faiss's 1 unless nlist is 1);
  default HNSW ``efSearch`` = 128.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

from retrieval.indexes.errors import FaissIndexError

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
METRICS = ("l2", "ip", "cosine")
MIN_POINTS_PER_CENTROID = 39  # below this faiss warns that the k-means is poorly trained
TRAIN_POINTS_PER_CENTROID = 64  # how many rows per centroid we sample for training by default
DEFAULT_PQ_BITS = 8
DEFAULT_HNSW_M = 32
DEFAULT_EF_SEARCH = 128


@dataclass(frozen=True)
class IndexSpec:
    """What to build: the factory string and the parameters it was made from."""

    kind: str  # one of KINDS, or "factory" for a user-given string
    factory: str
    nlist: int | None = None
    pq_m: int | None = None
    pq_bits: int | None = None
    hnsw_m: int | None = None
    search_defaults: dict = field(default_factory=dict)

    @property
    def needs_training(self) -> bool:
        return self.nlist is not None or self.pq_m is not None or self.kind == "factory"

    def params(self) -> dict:
        """The build parameters, as recorded in the manifest."""
        return {"kind": self.kind, "nlist": self.nlist, "pq_m": self.pq_m, "pq_bits": self.pq_bits, "hnsw_m": self.hnsw_m}


def default_nlist(count: int) -> int:
    """4·sqrt(count), clipped so that each list gets >= 39 training rows."""
    by_size = int(round(4 * math.sqrt(max(count, 1))))
    by_training = count // MIN_POINTS_PER_CENTROID
    return max(1, min(by_size, by_training))


def default_pq_m(dim: int) -> int:
    """Largest divisor of ``dim`` that is <= dim/4 and <= 64 (1 for tiny dimensions)."""
    limit = max(1, min(64, dim // 4))
    return max(m for m in range(1, limit + 1) if dim % m == 0)


def default_nprobe(nlist: int) -> int:
    """max(8, nlist/8), at most nlist: a sensible start that ``retrieve tune`` refines."""
    return min(nlist, max(8, nlist // 8))


def _search_defaults(nlist: int | None, hnsw_m: int | None) -> dict:
    defaults: dict = {}
    if nlist is not None:
        defaults["nprobe"] = default_nprobe(nlist)
    if hnsw_m is not None:
        defaults["ef_search"] = DEFAULT_EF_SEARCH
    return defaults


def spec_for_kind(
    kind: str,
    dim: int,
    count: int,
    *,
    nlist: int | None = None,
    pq_m: int | None = None,
    pq_bits: int | None = None,
    hnsw_m: int | None = None,
) -> IndexSpec:
    """The spec of a named kind, filling unset parameters with the defaults above."""
    if kind not in KINDS:
        raise FaissIndexError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "flat":
        return IndexSpec(kind, "Flat")
    if kind == "hnsw":
        m = hnsw_m or DEFAULT_HNSW_M
        return IndexSpec(kind, f"HNSW{m},Flat", hnsw_m=m, search_defaults=_search_defaults(None, m))
    n_lists = nlist if nlist is not None else default_nlist(count)
    if n_lists < 1:
        raise FaissIndexError(f"nlist must be at least 1, got {n_lists}")
    if kind == "ivf":
        return IndexSpec(kind, f"IVF{n_lists},Flat", nlist=n_lists, search_defaults=_search_defaults(n_lists, None))
    m = pq_m if pq_m is not None else default_pq_m(dim)
    bits = pq_bits if pq_bits is not None else DEFAULT_PQ_BITS
    if m < 1 or dim % m:
        raise FaissIndexError(f"--pq-m {m} must divide the dimension {dim}")
    if not 1 <= bits <= 16:
        raise FaissIndexError(f"--pq-bits must be between 1 and 16, got {bits}")
    return IndexSpec(
        kind,
        f"IVF{n_lists},PQ{m}x{bits}",
        nlist=n_lists,
        pq_m=m,
        pq_bits=bits,
        search_defaults=_search_defaults(n_lists, None),
    )


def spec_for_factory(factory: str) -> IndexSpec:
    """The spec of a user-given faiss factory string; its IVF / PQ / HNSW parameters are read from it."""
    text = factory.strip()
    if not text:
        raise FaissIndexError("empty --factory string")
    ivf = re.search(r"IVF(\d+)", text)
    pq = re.search(r"(?<![O\w])PQ(\d+)(?:x(\d+))?", text)
    hnsw = re.search(r"HNSW(\d+)", text)
    nlist = int(ivf.group(1)) if ivf else None
    hnsw_m = int(hnsw.group(1)) if hnsw and not ivf else None
    return IndexSpec(
        "factory",
        text,
        nlist=nlist,
        pq_m=int(pq.group(1)) if pq else None,
        pq_bits=(int(pq.group(2)) if pq.group(2) else DEFAULT_PQ_BITS) if pq else None,
        hnsw_m=hnsw_m,
        search_defaults=_search_defaults(nlist, hnsw_m),
    )


def default_train_size(spec: IndexSpec, count: int) -> int:
    """Rows sampled for training: 64 per IVF list and per PQ centroid, at most the whole gallery."""
    if not spec.needs_training:
        return 0
    per_lists = TRAIN_POINTS_PER_CENTROID * (spec.nlist or 1)
    per_pq = TRAIN_POINTS_PER_CENTROID * (2 ** spec.pq_bits) if spec.pq_bits else 0
    return min(count, max(per_lists, per_pq, 1))


def check_trainable(spec: IndexSpec, count: int, train_size: int) -> list[str]:
    """Errors for impossible training, one-line warnings (returned) for poor training."""
    warnings: list[str] = []
    if spec.nlist is not None:
        if spec.nlist > count:
            raise FaissIndexError(
                f"nlist {spec.nlist} needs at least {spec.nlist} training rows "
                f"({MIN_POINTS_PER_CENTROID * spec.nlist} recommended) but the gallery has {count}; "
                f"use --nlist {max(1, count // MIN_POINTS_PER_CENTROID)} or less, or --kind flat"
            )
        if train_size < spec.nlist:
            raise FaissIndexError(
                f"nlist {spec.nlist} needs at least {spec.nlist} training rows, the training sample has {train_size}"
            )
        wanted = MIN_POINTS_PER_CENTROID * spec.nlist
        if train_size < wanted:
            warnings.append(
                f"IVF training: {train_size} rows for {spec.nlist} lists; faiss wants at least "
                f"{MIN_POINTS_PER_CENTROID} per list ({wanted} rows): the lists may be poor, consider --nlist "
                f"{max(1, train_size // MIN_POINTS_PER_CENTROID)}"
            )
    if spec.pq_bits is not None:
        centroids = 2 ** spec.pq_bits
        if train_size < centroids:
            raise FaissIndexError(
                f"PQ with {spec.pq_bits} bits needs at least {centroids} training rows, have {train_size}; "
                f"use fewer --pq-bits or --kind ivf"
            )
        wanted = MIN_POINTS_PER_CENTROID * centroids
        if train_size < wanted:
            warnings.append(
                f"PQ training: {train_size} rows for {centroids} centroids per sub-quantiser; faiss wants at least "
                f"{wanted} rows: codes may be poor, consider --pq-bits {max(1, int(math.log2(max(train_size // MIN_POINTS_PER_CENTROID, 2))))}"
            )
    return warnings
