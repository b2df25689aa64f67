"""Embedding images with a trained model: the retrieval feature of one peer or of all peers, the
part features, and ``retrieve embed`` (a model folder + a data source -> an embeddings file).

Every feature is L2-normalised. With several peers (``--mutual N``), ``peer="all"`` concatenates
the peers' normalised features and divides by √N, so the result has unit norm again; the parts
are concatenated stripe by stripe the same way. Each part (stripe) is L2-normalised on its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from retrieval.errors import RetrieveError
from retrieval.train.network import FEATURES, PeerGroup, build_network

PEER_ALL = "all"


def peer_indices(network: PeerGroup, peer: int | str) -> list[int]:
    """0-based indices of the peers an export uses; ``peer`` is 1..N or "all"."""
    if peer == PEER_ALL:
        return list(range(len(network)))
    if not isinstance(peer, int) or not 1 <= peer <= len(network):
        raise RetrieveError(f"--peer {peer}: the model has {len(network)} peer(s); choose 1..{len(network)} or all")
    return [peer - 1]


def joined(features: list[torch.Tensor]) -> torch.Tensor:
    """Unit-norm rows: each tensor normalised along its last axis, concatenated, divided by √count."""
    parts = [F.normalize(f.float(), dim=-1) for f in features]
    return torch.cat(parts, dim=-1) / len(parts) ** 0.5


@torch.no_grad()
def embed_rows(network: PeerGroup, image_set, rows, device, feature: str = "post-bn", peer: int | str = PEER_ALL,
               batch_size: int = 256, with_parts: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """(vectors (n, d), parts (n, P, d_part) or None) of ``rows``, float32, the network in eval mode."""
    if feature not in FEATURES:
        raise RetrieveError(f"unknown feature {feature!r}; choose from {', '.join(FEATURES)}")
    chosen = peer_indices(network, peer)
    was_training = network.training
    network.eval()
    rows = np.asarray(rows)
    vectors, parts = [], []
    for start in range(0, len(rows), batch_size):
        images = image_set.load(rows[start : start + batch_size]).to(device)
        outputs = [network.peers[i](images) for i in chosen]  # float32 on every device (TF32 off on CUDA)
        vectors.append(joined([out.feature(feature) for out in outputs]).cpu().numpy())
        if with_parts and outputs[0].parts is not None:
            parts.append(joined([out.parts for out in outputs]).cpu().numpy())
    network.train(was_training)
    dim = sum(network.peers[i].dims()[feature] for i in chosen)
    out_vectors = np.concatenate(vectors) if vectors else np.zeros((0, dim), np.float32)
    return out_vectors, (np.concatenate(parts) if parts else None)


def load_network(model_dir: Path | str, device) -> tuple[dict[str, Any], PeerGroup]:
    """The configuration and the trained network of a model folder, on ``device``, in eval mode."""
    from retrieval.train.trainer import WEIGHTS_FILE, read_model_config

    saved = read_model_config(model_dir)
    network = build_network(saved["model"])
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.is_file():
        raise RetrieveError(f"{model_dir}: no {WEIGHTS_FILE}")
    state = torch.load(weights, map_location="cpu", weights_only=True)
    if saved.get("format_version") == 1:  # one BNNeck network, saved before peers existed
        state = {f"peers.0.{key}": value for key, value in state.items()}
    network.load_state_dict(state)
    return saved, network.to(device).eval()


def embed_to_file(model_dir, out, dataset=None, layout=None, root=None, feature: str | None = None,
                  peer: int | str = PEER_ALL, device="auto", batch_size: int = 256, workers: int = 0,
                  progress=None) -> dict[str, Any]:
    """Embed every image of a data source with a trained model and write an embeddings file.

    The digits are also written as PNG files next to the output (``digits-images/``), and the
    file's ``path`` column points at them (relative to the embeddings file's folder).
    """
    from retrieval.data.store import write_embeddings
    from retrieval.train.trainer import load_image_set, resolve_device

    dev = resolve_device(device)
    saved, network = load_network(model_dir, dev)
    spec = saved["model"]
    feature = feature or saved["train"].get("feature") or "post-bn"
    image_set = load_image_set(dataset, layout, root, spec["image_size"], workers)
    if image_set.channels != spec["in_channels"]:
        raise RetrieveError(f"{model_dir}: the model takes {spec['in_channels']}-channel images, {image_set.name} has {image_set.channels}")
    rows = np.arange(len(image_set))
    vectors, parts = [], []
    for start in range(0, len(rows), batch_size):
        v, p = embed_rows(network, image_set, rows[start : start + batch_size], dev, feature, peer, batch_size, True)
        vectors.append(v)
        parts += [] if p is None else [p]
        if progress:
            progress("embed", min(start + batch_size, len(rows)), len(rows))
    vectors = np.concatenate(vectors)
    parts = np.concatenate(parts) if parts else None
    if dataset == "digits":
        from retrieval.train.digits import IMAGE_FOLDER, write_digit_images

        write_digit_images(Path(out).parent / IMAGE_FOLDER, image_set.images, image_set.ids)
    camid = None if image_set.camid is None else pa.array(image_set.camid, pa.int32(), mask=image_set.camid < 0)
    label = f"{saved['name']} [{feature}{'' if len(network) == 1 else f', peer {peer}'}]"
    write_embeddings(out, image_set.ids, vectors, pid=image_set.pid, camid=camid, split=image_set.split,
                     paths=image_set.path, model=label, parts=parts)
    return {"out": str(out), "rows": int(len(rows)), "dim": int(vectors.shape[1]), "feature": feature,
            "peer": peer, "parts": 0 if parts is None else int(parts.shape[1]), "normalized": True,
            "model": saved["name"], "device": dev.type}
