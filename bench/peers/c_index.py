"""Index contenders: exact ground truth, raw faiss (same index file, or built from the same factory
string), our library search, hnswlib. Search times are in-process minima over --repeats."""

from __future__ import annotations

import time
from pathlib import Path


def _queries_gallery(args, gallery: bool = True):
    import numpy as np

    npy = Path(args.data) / "npy"
    q = np.load(npy / "query_vectors.npy")
    return q, (np.load(npy / "gallery_vectors.npy") if gallery else None)


def _exact(args):
    import numpy as np

    return np.load(Path(args.work) / f"exact_k{args.k}.npy")


def recall_at_k(found, exact) -> float:
    """Mean over queries of |found ∩ exact top-k| / k."""
    k = exact.shape[1]
    hits = (found[:, :k, None] == exact[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / k)


def _best_time(fn, repeats: int):
    times, out = [], None
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def _sweep(search, values: list[int], args, exact, name: str) -> list[dict]:
    rows = []
    for value in values:
        seconds, found = _best_time(lambda: search(value), args.repeats)
        rows.append({name: value, "search_s": seconds, "qps": len(found) / seconds, "recall": recall_at_k(found, exact)})
    return rows


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def index_exact(args, ph) -> dict:
    """Exhaustive search (faiss IndexFlatL2) of every query: the ground truth of recall@k."""
    with ph("import"):
        import faiss
        import numpy as np
    with ph("load"):
        q, g = _queries_gallery(args)
    with ph("build"):
        index = faiss.IndexFlatL2(g.shape[1])
        index.add(g)
    with ph("search"):
        _, rows = index.search(q, args.k)
    Path(args.work).mkdir(parents=True, exist_ok=True)
    np.save(Path(args.work) / f"exact_k{args.k}.npy", rows)
    return {"queries": len(q), "gallery": len(g), "qps": len(q) / ph.times["search"]}


def faiss_raw(args, ph) -> dict:
    """faiss alone: read our index file (--index-file) or build from --factory; nprobe via ParameterSpace."""
    with ph("import"):
        import faiss
        import numpy as np
    with ph("load"):
        q, g = _queries_gallery(args, gallery=not args.index_file)
    out: dict = {}
    if args.index_file:
        with ph("read_index"):
            index = faiss.read_index(args.index_file)
    else:
        with ph("build"):
            index = faiss.index_factory(g.shape[1], args.factory, faiss.METRIC_L2)
            rng = np.random.default_rng(0)
            train_rows = args.train_rows or len(g)
            sample = g[np.sort(rng.choice(len(g), size=min(train_rows, len(g)), replace=False))]
            index.train(sample)
            index.add(g)
        out["build_s"] = ph.times["build"]
    params = faiss.ParameterSpace()

    def search(nprobe: int):
        params.set_index_parameter(index, "nprobe", nprobe)
        return index.search(q, args.k)[1]

    with ph("search"):
        out["sweep"] = _sweep(search, _ints(args.nprobe), args, _exact(args), "nprobe")
    return out


def ours_search_lib(args, ph) -> dict:
    """Our library search on our index folder, the same query vectors."""
    with ph("import"):
        import ours
    with ph("load"):
        q, _ = _queries_gallery(args, gallery=False)
        handle = ours.load_index(Path(args.index_dir))
    with ph("search"):
        sweep = _sweep(lambda p: ours.index_search(handle, q, args.k, p)[1], _ints(args.nprobe), args, _exact(args),
                       "nprobe")
    return {"sweep": sweep}


def hnswlib(args, ph) -> dict:
    """hnswlib HNSW (space l2): build, then an efSearch sweep; all threads for both."""
    with ph("import"):
        import hnswlib as hl
    with ph("load"):
        q, g = _queries_gallery(args)
    with ph("build"):
        index = hl.Index(space="l2", dim=g.shape[1])
        index.init_index(max_elements=len(g), ef_construction=args.ef_construction, M=args.hnsw_m, random_seed=0)
        index.add_items(g, num_threads=-1)

    def search(ef: int):
        index.set_ef(ef)
        return index.knn_query(q, k=args.k, num_threads=-1)[0].astype("int64")

    with ph("search"):
        sweep = _sweep(search, [e for e in _ints(args.ef) if e >= args.k], args, _exact(args), "ef")
    return {"build_s": ph.times["build"], "M": args.hnsw_m, "ef_construction": args.ef_construction, "sweep": sweep}
