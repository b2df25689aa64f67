"""Children that describe the machine and make the data (no timing of interest)."""

from __future__ import annotations

from pathlib import Path


def machine(args, ph) -> dict:
    """BLAS / OpenMP libraries loaded once numpy, faiss and torch are imported (threadpoolctl)."""
    import faiss
    import numpy as np
    import torch
    from threadpoolctl import threadpool_info

    libs = [{k: lib.get(k) for k in ("user_api", "internal_api", "prefix", "version", "architecture",
                                     "threading_layer", "num_threads", "filepath")} for lib in threadpool_info()]
    return {"numpy": np.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "faiss": faiss.__version__, "faiss_omp_threads": faiss.omp_get_max_threads(), "threadpools": libs}


def generate(args, ph) -> dict:
    import ours

    fields = {f: getattr(args, f) for f in ("dim", "gallery", "queries", "identities") if getattr(args, f)}
    if "gallery" in fields:
        fields["name"] = f"{args.preset}-{fields['gallery']}"
    elif "dim" in fields:
        fields["name"] = f"{args.preset}-{fields['dim']}d"
    ours.generate(args.preset, Path(args.out), **fields)
    return {"generated": str(args.out), "overrides": fields}


def export(args, ph) -> dict:
    """Query and gallery of embeddings.parquet as .npy files for the peers (gallery junk pid -1 left out)."""
    import numpy as np

    import ours

    folder = Path(args.data)
    data = ours.read_split(folder / "embeddings.parquet")
    keep = data["gallery_pid"] != -1
    out = folder / "npy"
    out.mkdir(exist_ok=True)
    arrays = {
        "query_vectors": np.ascontiguousarray(data["query"], dtype=np.float32),
        "query_pid": np.asarray(data["query_pid"], dtype=np.int64),
        "query_camid": np.asarray(data["query_camid"], dtype=np.int64),
        "gallery_vectors": np.ascontiguousarray(data["gallery"][keep], dtype=np.float32),
        "gallery_pid": np.asarray(data["gallery_pid"][keep], dtype=np.int64),
        "gallery_camid": np.asarray(data["gallery_camid"][keep], dtype=np.int64),
    }
    for name, array in arrays.items():
        np.save(out / f"{name}.npy", array)
    return {"export": {"queries": int(len(data["query"])), "gallery": int(len(data["gallery"])),
                       "dim": int(data["query"].shape[1]), "gallery_junk_left_out_of_npy": int((~keep).sum()),
                       "gallery_distractors_pid0": int((data["gallery_pid"] == 0).sum()),
                       "parquet_bytes": (folder / "embeddings.parquet").stat().st_size}}


def load_npy(folder: str | Path) -> dict:
    """The peers' input: the .npy exports, as a user of a toolkit would np.load them."""
    import numpy as np

    npy = Path(folder) / "npy"
    names = ("query_vectors", "query_pid", "query_camid", "gallery_vectors", "gallery_pid", "gallery_camid")
    return {name: np.load(npy / f"{name}.npy") for name in names}
