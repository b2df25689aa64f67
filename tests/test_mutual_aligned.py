"""The AlignedReID local triplet term and the deep-mutual-learning terms against brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest

from _torch import imported_when_run, requires_torch

from retrieval.eval.aligned import aligned_distances, shortest_path

pytestmark = requires_torch
torch = L = build_loss = kl_towards = metric_towards = mutual_terms = None  # set by `imports`
imports = imported_when_run(
    globals(), torch="torch", L="retrieval.train.losses", build_loss="retrieval.train.combine:build_loss",
    kl_towards="retrieval.train.mutual:kl_towards", metric_towards="retrieval.train.mutual:metric_towards",
    mutual_terms="retrieval.train.mutual:mutual_terms",
)

LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 3]


def batch(seed=0, parts=3, dim=4):
    rng = np.random.default_rng(seed)
    embeddings = torch.tensor(rng.normal(size=(len(LABELS), 5)), dtype=torch.float64)
    stripes = torch.tensor(rng.normal(size=(len(LABELS), parts, dim)), dtype=torch.float64)
    return embeddings, stripes, torch.tensor(LABELS)


def unit_stripes(stripes: np.ndarray) -> np.ndarray:
    return stripes / np.linalg.norm(stripes, axis=2, keepdims=True)


def test_batch_aligned_matrix_equals_the_evaluation_kernel():
    _, stripes, _ = batch()
    got = L.aligned_distance_matrix(stripes).numpy()
    unit = unit_stripes(stripes.numpy())
    want = aligned_distances(unit, unit, 3)
    off = ~np.eye(len(LABELS), dtype=bool)
    # evaluation rounds each squared element distance once to float32 (the distance core's key)
    np.testing.assert_allclose(got[off], want[off], rtol=1e-7, atol=1e-7)
    # on the diagonal a stripe meets itself: training clamps a squared distance at 1e-12 before
    # the square root (a finite gradient), so each such cell counts 1e-6 instead of 0.
    np.testing.assert_allclose(np.diag(got), np.diag(want), atol=1e-5)


def test_aligned_triplet_loss_by_brute_force():
    embeddings, stripes, labels = batch(1)
    x = embeddings.numpy()
    d = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    unit = unit_stripes(stripes.numpy())
    element = np.sqrt(((unit[:, None, :, None, :] - unit[None, :, None, :, :]) ** 2).sum(-1))  # real float64
    local = shortest_path(element)
    terms = []
    for a in range(len(LABELS)):
        pos = [p for p in range(len(LABELS)) if p != a and LABELS[p] == LABELS[a]]
        neg = [n for n in range(len(LABELS)) if LABELS[n] != LABELS[a]]
        if not pos:
            continue
        p = max(pos, key=lambda j: d[a, j])  # hardest positive by the global distance
        n = min(neg, key=lambda j: d[a, j])  # hardest negative by the global distance
        terms.append(max(0.0, 0.3 + local[a, p] - local[a, n]))
    assert any(t > 0 for t in terms)
    got = L.AlignedTripletLoss(0.3)(embeddings, stripes, labels)
    assert float(got) == pytest.approx(sum(terms) / len(terms), rel=1e-9)


def test_combined_loss_passes_the_parts_and_needs_them():
    embeddings, stripes, labels = batch(2)
    loss = build_loss("triplet+0.5*aligned", 4, 5)
    total, parts = loss(embeddings, None, labels, stripes)
    assert set(parts) == {"triplet_batch_hard", "aligned"}
    assert float(total) == pytest.approx(float(parts["triplet_batch_hard"] + 0.5 * parts["aligned"]), rel=1e-12)
    with pytest.raises(ValueError, match="--parts"):
        loss(embeddings, None, labels)


def test_aligned_gradients_are_finite_with_identical_stripes():
    stripes = torch.ones(len(LABELS), 3, 4, dtype=torch.float64, requires_grad=True)
    embeddings = torch.zeros(len(LABELS), 5, dtype=torch.float64)
    L.AlignedTripletLoss(0.3)(embeddings, stripes, torch.tensor(LABELS)).backward()
    assert torch.isfinite(stripes.grad).all()


def softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def kl_by_hand(mine: np.ndarray, other: np.ndarray) -> float:
    p, q = softmax(other), softmax(mine)
    return float((p * (np.log(p) - np.log(q))).sum(1).mean())


def metric_by_hand(mine: np.ndarray, other: np.ndarray) -> float:
    def dist(x):
        return np.sqrt(np.maximum(((x[:, None] - x[None]) ** 2).sum(-1), 1e-12))

    return float(((dist(mine) - dist(other)) ** 2).mean())


@pytest.mark.parametrize("term_name, by_hand", [("kl_towards", kl_by_hand), ("metric_towards", metric_by_hand)])
def test_mutual_term_by_hand_and_the_target_is_detached(term_name, by_hand):
    term = {"kl_towards": kl_towards, "metric_towards": metric_towards}[term_name]
    rng = np.random.default_rng(3)
    mine = torch.tensor(rng.normal(size=(5, 3)), requires_grad=True)
    other = torch.tensor(rng.normal(size=(5, 3)), requires_grad=True)
    got = term(mine, other)
    assert float(got.detach()) == pytest.approx(by_hand(mine.detach().numpy(), other.detach().numpy()), rel=1e-5)
    got.backward()
    assert mine.grad is not None and other.grad is None


def test_mutual_terms_average_over_the_other_peers():
    rng = np.random.default_rng(5)
    embeddings = [torch.tensor(rng.normal(size=(6, 3)), dtype=torch.float32) for _ in range(3)]
    logits = [torch.tensor(rng.normal(size=(6, 4)), dtype=torch.float32) for _ in range(3)]
    terms = mutual_terms(embeddings, logits, with_kl=True)
    for i in range(3):
        others = [j for j in range(3) if j != i]
        assert float(terms[i]["mutual_kl"]) == pytest.approx(np.mean([float(kl_towards(logits[i], logits[j])) for j in others]), rel=1e-6)
        assert float(terms[i]["mutual_metric"]) == pytest.approx(
            np.mean([float(metric_towards(embeddings[i], embeddings[j])) for j in others]), rel=1e-6)
    assert set(mutual_terms(embeddings, logits, with_kl=False)[0]) == {"mutual_metric"}
    assert math.isclose(float(mutual_terms(embeddings[:1] * 2, logits[:1] * 2, True)[0]["mutual_kl"]), 0.0, abs_tol=1e-7)


@pytest.mark.parametrize("weight", [0.0, 1.0, 2.5])
def test_batch_losses_add_the_weighted_mutual_terms_to_each_peer(weight):
    from retrieval.train.network import build_network
    from retrieval.train.step import batch_losses

    torch.manual_seed(0)
    spec = {"backbone": "small-cnn", "width": 4, "in_channels": 1, "num_classes": 4, "image_size": [8, 8], "peers": 2}
    network = build_network(spec)
    losses = torch.nn.ModuleList(build_loss("softmax+triplet", 4, peer.feat_dim) for peer in network.peers)
    outputs = network(torch.randn(len(LABELS), 1, 8, 8))
    labels = torch.tensor(LABELS)
    total, values = batch_losses(outputs, losses, labels, with_kl=True, mutual_weight=weight)
    own = [loss(o.pre, o.logits, labels)[0] for o, loss in zip(outputs, losses)]
    terms = mutual_terms([o.pre for o in outputs], [o.logits for o in outputs], with_kl=True)
    mutual = [sum(t.values()) for t in terms]
    want = sum(float((o + weight * m).detach()) for o, m in zip(own, mutual))
    assert float(total.detach()) == pytest.approx(want, rel=1e-5)
    assert values["loss"] == pytest.approx(want / 2, rel=1e-5)
    assert values["loss_mutual_metric"] == pytest.approx(np.mean([float(t["mutual_metric"].detach()) for t in terms]), rel=1e-5)
    assert values["loss_mutual_metric"] > 0 and values["loss_mutual_kl"] > 0  # recorded even with weight 0
