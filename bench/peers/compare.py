"""Comparing metrics between contenders, and saying in one line why they differ."""

from __future__ import annotations

from typing import Any

RANKING_KEYS = ("mAP", "mINP", "mAP_at_R", "R_precision", "rank1")


def _pairs(ours: dict, peer: dict) -> dict[str, tuple[float, float]]:
    """The metrics both report: scalar keys, and CMC rank by rank (rank-1 from either form)."""
    pairs = {}
    ours_cmc, peer_cmc = ours.get("cmc") or [], peer.get("cmc") or []
    for key in RANKING_KEYS:
        a = ours.get(key, ours_cmc[0] if key == "rank1" and ours_cmc else None)
        b = peer.get(key, peer_cmc[0] if key == "rank1" and peer_cmc else None)
        if a is not None and b is not None:
            pairs[key] = (float(a), float(b))
    for i, (a, b) in enumerate(zip(ours_cmc, peer_cmc)):
        pairs[f"cmc{i + 1}"] = (float(a), float(b))
    return pairs


def max_difference(ours: dict | None, peer: dict | None) -> tuple[float | None, str | None]:
    """Largest |ours − peer| over the metrics both report, and which metric it is."""
    if not ours or not peer:
        return None, None
    pairs = _pairs(ours, peer)
    if not pairs:
        return None, None
    key = max(pairs, key=lambda k: abs(pairs[k][0] - pairs[k][1]))
    return abs(pairs[key][0] - pairs[key][1]), key


# What each peer does that can move the last digits even on the very same distances:
# peer -> (metrics it touches, the convention)
CONVENTIONS = {
    "fastreid-cy": (("mAP", "mINP", "cmc", "rank1"), "its Cython loop sums each AP and averages CMC in float32"),
    "fastreid-py": (("cmc", "rank1"), "CMC averaged in float32"),
    "torchreid": (("cmc", "rank1"), "CMC averaged in float32"),
    "pml": (("mAP", "mAP_at_R", "R_precision", "rank1"), "no camera filtering (compared with ours --protocol no-camera)"),
}


def explain(peer: str, difference: float | None, tied_queries: int | None, worst: str | None = None,
            tolerance: float = 1e-6) -> str:
    """One line: agreement, or the cause of a difference (ties measured on the shared matrix)."""
    if difference is None:
        return "—"
    if difference == 0:
        return "identical"
    parts = [f"agrees to {difference:.1e}" if difference <= tolerance else f"differs by {difference:.1e}"]
    if tied_queries:
        parts.append(f"{tied_queries} queries have a true match at exactly the distance of a non-match: "
                     "np.argsort (quicksort) puts ties in arbitrary order, ours in gallery row order")
    touches, convention = CONVENTIONS.get(peer, ((), ""))
    if convention and (worst is None or worst.startswith(touches)):
        parts.append(convention)
    if len(parts) == 1:
        parts.append("no tie or known convention explains it: investigate")
    return "; ".join(parts)


def phases_text(report: dict[str, Any] | None) -> str:
    phases = (report or {}).get("phases_s") or {}
    return ", ".join(f"{k} {v:.2f}" for k, v in phases.items())
