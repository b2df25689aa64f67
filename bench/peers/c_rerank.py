"""Re-ranking contender: fast-reid's published dense k-reciprocal ``re_ranking``, then its evaluate_rank."""

from __future__ import annotations

from c_data import load_npy
from c_eval import _fastreid_evaluate, squared_euclidean

K1, K2, LAMBDA = 20, 6, 0.3


def euclidean(a, b):
    """Euclidean distances (float32): re_ranking squares its inputs itself (the paper's convention)."""
    import numpy as np

    d = squared_euclidean(a, b)
    np.maximum(d, 0.0, out=d)
    return np.sqrt(d, out=d)


def fastreid_rerank(args, ph) -> dict:
    with ph("import"):
        import peerlib

        re_ranking = peerlib.fastreid_rerank()
        rank = peerlib.fastreid_rank()
    with ph("load"):
        x = load_npy(args.data)
        q, g = x["query_vectors"], x["gallery_vectors"]
    with ph("distances"):  # the three dense inputs re_ranking takes: q×g, q×q, g×g
        q_g, q_q, g_g = euclidean(q, g), euclidean(q, q), euclidean(g, g)
    with ph("re_ranking"):
        final = re_ranking(q_g, q_q, g_g, k1=K1, k2=K2, lambda_value=LAMBDA)
    del q_q, g_g
    with ph("evaluate_rank"):
        out = _fastreid_evaluate(rank)(final, x["query_pid"], x["gallery_pid"], x["query_camid"], x["gallery_camid"])
    return {**out, "params": {"k1": K1, "k2": K2, "lambda": LAMBDA, "input": "euclidean distances (squared inside re_ranking)"}}
