"""Each loss against its definition computed by brute force (every triplet / pair enumerated) on a fixed batch."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from _torch import imported_when_run, requires_torch

pytestmark = requires_torch
torch = build_loss = parse_loss_spec = CosineSimilarity = EuclideanDistance = L = None  # set by `imports`
all_triplets = batch_hard = semi_hard = None
imports = imported_when_run(
    globals(), torch="torch", build_loss="retrieval.train.combine:build_loss",
    parse_loss_spec="retrieval.train.combine:parse_loss_spec", CosineSimilarity="retrieval.train.distances:CosineSimilarity",
    EuclideanDistance="retrieval.train.distances:EuclideanDistance", L="retrieval.train.losses",
    all_triplets="retrieval.train.miners:all_triplets", batch_hard="retrieval.train.miners:batch_hard",
    semi_hard="retrieval.train.miners:semi_hard",
)

LABELS = [0, 0, 0, 1, 1, 2, 2, 2, 3]
MARGIN = 0.3


@pytest.fixture
def batch():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(len(LABELS), 4)) * 0.6
    return torch.tensor(x, dtype=torch.float64), torch.tensor(LABELS)


def dist(x: np.ndarray) -> np.ndarray:
    return np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))


def positives(a):
    return [p for p in range(len(LABELS)) if p != a and LABELS[p] == LABELS[a]]


def negatives(a):
    return [n for n in range(len(LABELS)) if LABELS[n] != LABELS[a]]


def hinge(v):
    return max(0.0, v)


def softplus(v):
    return math.log1p(math.exp(v))


def test_batch_all_is_mean_of_violating_triplets(batch):
    x, y = batch
    d = dist(x.numpy())
    terms = [hinge(d[a, p] - d[a, n] + MARGIN) for a in range(len(LABELS)) for p in positives(a) for n in negatives(a)]
    active = [t for t in terms if t > 0]
    assert active, "the fixed batch must have violating triplets for this test to mean something"
    got = L.TripletMarginLoss(MARGIN, miner="batch-all")(x, y)
    assert float(got) == pytest.approx(sum(active) / len(active), rel=1e-9)


def test_batch_hard_uses_hardest_positive_and_negative(batch):
    x, y = batch
    d = dist(x.numpy())
    anchors = [a for a in range(len(LABELS)) if positives(a)]  # label 3 has no positive
    expected = np.mean([hinge(max(d[a, p] for p in positives(a)) - min(d[a, n] for n in negatives(a)) + MARGIN) for a in anchors])
    assert float(L.TripletMarginLoss(MARGIN, miner="batch-hard")(x, y)) == pytest.approx(expected, rel=1e-9)


def test_soft_margin_is_softplus_of_batch_hard_gap(batch):
    x, y = batch
    d = dist(x.numpy())
    anchors = [a for a in range(len(LABELS)) if positives(a)]
    expected = np.mean([softplus(max(d[a, p] for p in positives(a)) - min(d[a, n] for n in negatives(a))) for a in anchors])
    assert float(L.TripletMarginLoss(MARGIN, soft=True)(x, y)) == pytest.approx(expected, rel=1e-9)


def semi_hard_negative(d, a, p):
    farther = [n for n in negatives(a) if d[a, n] > d[a, p]]
    if farther:
        return min(farther, key=lambda n: d[a, n])
    return max(negatives(a), key=lambda n: d[a, n])


def test_semi_hard_loss_over_positive_pairs(batch):
    x, y = batch
    d = dist(x.numpy())
    pairs = [(a, p) for a in range(len(LABELS)) for p in positives(a)]
    expected = np.mean([hinge(d[a, p] - d[a, semi_hard_negative(d, a, p)] + MARGIN) for a, p in pairs])
    assert float(L.TripletMarginLoss(MARGIN, miner="semi-hard")(x, y)) == pytest.approx(expected, rel=1e-9)


def test_soft_batch_hard_weights(batch):
    x, y = batch
    d = dist(x.numpy())
    values = []
    for a in range(len(LABELS)):
        if not positives(a):
            continue
        wp = np.array([math.exp(d[a, p]) for p in positives(a)])
        wn = np.array([math.exp(-d[a, n]) for n in negatives(a)])
        dp = (wp / wp.sum()) @ np.array([d[a, p] for p in positives(a)])
        dn = (wn / wn.sum()) @ np.array([d[a, n] for n in negatives(a)])
        values.append(hinge(dp - dn + MARGIN))
    assert float(L.SoftBatchHardTripletLoss(MARGIN)(x, y)) == pytest.approx(np.mean(values), rel=1e-9)


def test_contrastive_over_all_pairs(batch):
    x, y = batch
    d = dist(x.numpy())
    terms = []
    for i, j in itertools.combinations(range(len(LABELS)), 2):
        terms.append(0.5 * d[i, j] ** 2 if LABELS[i] == LABELS[j] else 0.5 * hinge(1.0 - d[i, j]) ** 2)
    assert float(L.ContrastiveLoss(0.0, 1.0)(x, y)) == pytest.approx(np.mean(terms), rel=1e-9)


def test_improved_triplet_adds_absolute_positive_bound(batch):
    x, y = batch
    d = dist(x.numpy())
    triplets = [hinge(d[a, p] - d[a, n] + MARGIN) for a in range(len(LABELS)) for p in positives(a) for n in negatives(a)]
    pos = [hinge(d[a, p] - 0.8) for a in range(len(LABELS)) for p in positives(a)]
    expected = np.mean(triplets) + 0.5 * np.mean(pos)
    assert float(L.ImprovedTripletLoss(MARGIN, pos_bound=0.8, beta=0.5)(x, y)) == pytest.approx(expected, rel=1e-9)


def test_quadruplet_with_hardest_terms(batch):
    x, y = batch
    d = dist(x.numpy())
    m1, m2 = 0.3, 0.15
    values = []
    for a in range(len(LABELS)):
        if not positives(a):
            continue
        first = max(hinge(d[a, p] - d[a, n] + m1) for p in positives(a) for n in negatives(a))
        quads = [(p, i, j) for p in positives(a) for i in negatives(a) for j in negatives(a) if LABELS[i] != LABELS[j]]
        second = max(hinge(d[a, p] - d[i, j] + m2) for p, i, j in quads)
        values.append(first + second)
    assert float(L.QuadrupletLoss(m1, m2)(x, y)) == pytest.approx(np.mean(values), rel=1e-9)


def test_margin_sample_mining_one_pair_of_each_kind(batch):
    x, y = batch
    d = dist(x.numpy())
    n = len(LABELS)
    hardest_pos = max(d[i, j] for i in range(n) for j in range(n) if i != j and LABELS[i] == LABELS[j])
    hardest_neg = min(d[i, j] for i in range(n) for j in range(n) if LABELS[i] != LABELS[j])
    expected = hinge(hardest_pos - hardest_neg + MARGIN)
    assert expected > 0
    assert float(L.MarginSampleMiningLoss(MARGIN)(x, y)) == pytest.approx(expected, rel=1e-9)


def test_center_loss_half_squared_distance_to_class_centre(batch):
    x, y = batch
    loss = L.CenterLoss(4, 4).double()
    centres = loss.centers.detach().numpy()
    expected = np.mean([0.5 * ((x[i].numpy() - centres[LABELS[i]]) ** 2).sum() for i in range(len(LABELS))])
    assert float(loss(x, y).detach()) == pytest.approx(expected, rel=1e-9)


def test_label_smoothing_cross_entropy_by_hand():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], dtype=torch.float64)
    labels = torch.tensor([0, 1])
    eps, k = 0.1, 3
    expected = 0.0
    for row, label in zip(logits.numpy(), labels.numpy()):
        log_p = row - math.log(np.exp(row).sum())
        target = np.full(k, eps / k)
        target[label] += 1 - eps
        expected -= (target * log_p).sum()
    got = L.LabelSmoothingCrossEntropy(eps)(logits, labels)
    assert float(got) == pytest.approx(expected / 2, rel=1e-12)


ALL_LOSSES = [
    "softmax", "contrastive", "triplet:batch-hard", "triplet:batch-all", "triplet:semi-hard", "triplet:soft-margin",
    "triplet:soft-batch-hard", "improved-triplet", "quadruplet", "msml", "center",
]


@pytest.mark.parametrize("spec", ALL_LOSSES)
def test_gradients_are_finite_even_with_identical_embeddings(spec):
    x = torch.randn(8, 5, dtype=torch.float64)
    x[1] = x[0]  # a zero distance: sqrt must not give an infinite gradient
    x.requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    logits = (x @ torch.randn(5, 4, dtype=torch.float64)).requires_grad_(True)
    loss = build_loss(spec, num_classes=4, feat_dim=5).double()
    total, parts = loss(x, logits, labels)
    total.backward()
    assert torch.isfinite(total)
    grad = x.grad if x.grad is not None else torch.zeros(1)
    assert torch.isfinite(grad).all()


def test_combined_loss_is_weighted_sum(batch):
    x, y = batch
    logits = torch.randn(len(LABELS), 4, dtype=torch.float64)
    total, parts = build_loss("0.5*softmax+2*triplet:batch-all", 4, 4).double()(x, logits, y)
    assert set(parts) == {"softmax", "triplet_batch_all"}
    assert float(total) == pytest.approx(0.5 * float(parts["softmax"]) + 2 * float(parts["triplet_batch_all"]))


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("softmax+triplet:batch-hard", [(1.0, "softmax", None), (1.0, "triplet", "batch-hard")]),
        ("1.0*softmax + 0.5*triplet:soft-margin", [(1.0, "softmax", None), (0.5, "triplet", "soft-margin")]),
        ("triplet", [(1.0, "triplet", "batch-hard")]),
        ("5e-4*center", [(5e-4, "center", None)]),
    ],
)
def test_parse_loss_spec(spec, expected):
    assert [(t.weight, t.name, t.variant) for t in parse_loss_spec(spec)] == expected


@pytest.mark.parametrize("spec", ["", "softmax+", "foo", "triplet:hardest", "softmax:x", "-1*softmax", "softmax+softmax"])
def test_parse_loss_spec_rejects(spec):
    with pytest.raises(ValueError):
        parse_loss_spec(spec)


# --- miners select what their definitions say ---------------------------------------------


def test_all_triplets_enumerates_every_valid_triplet():
    y = torch.tensor(LABELS)
    t = all_triplets(y)
    got = sorted(zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist()))
    expected = sorted((a, p, n) for a in range(len(LABELS)) for p in positives(a) for n in negatives(a))
    assert got == expected


@pytest.mark.parametrize("distance_name", ["euclidean", "cosine"])
def test_batch_hard_miner_picks_hardest(batch, distance_name):
    distance = {"euclidean": EuclideanDistance, "cosine": CosineSimilarity}[distance_name]()
    x, y = batch
    m = distance.matrix(x).numpy()
    t = batch_hard(distance.matrix(x), y, distance)
    sign = -1 if distance.is_inverted else 1  # "harder positive" = farther = larger distance / smaller similarity
    assert sorted(t.anchor.tolist()) == [a for a in range(len(LABELS)) if positives(a)]
    for a, p, n in zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist()):
        assert LABELS[p] == LABELS[a] and p != a and LABELS[n] != LABELS[a]
        assert sign * m[a, p] == pytest.approx(max(sign * m[a, q] for q in positives(a)))
        assert sign * m[a, n] == pytest.approx(min(sign * m[a, q] for q in negatives(a)))


def test_semi_hard_miner_picks_closest_negative_beyond_positive(batch):
    x, y = batch
    distance = EuclideanDistance()
    d = dist(x.numpy())
    t = semi_hard(distance.matrix(x), y, distance)
    pairs = list(zip(t.anchor.tolist(), t.positive.tolist()))
    assert sorted(pairs) == sorted((a, p) for a in range(len(LABELS)) for p in positives(a))
    for a, p, n in zip(t.anchor.tolist(), t.positive.tolist(), t.negative.tolist()):
        assert n == semi_hard_negative(d, a, p)


def test_mining_statistics_by_hand():
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 2.5]])
    y = torch.tensor([0, 0, 1, 1])
    stats = L.mining_statistics(x, y, margin=0.3)
    d = dist(x.numpy())
    trip = [(a, p, n) for a in range(4) for p in range(4) for n in range(4) if p != a and y[p] == y[a] and y[n] != y[a]]
    active = np.mean([d[a, n] < d[a, p] + 0.3 for a, p, n in trip])
    assert stats["active_triplets"] == pytest.approx(active)
    assert stats["mean_d_ap"] == pytest.approx((1.0 + 0.5) / 2)
    assert stats["mean_d_an"] == pytest.approx(np.mean([d[i, j] for i in range(4) for j in range(4) if y[i] != y[j]]))


def test_collapse_warning_only_when_negatives_are_at_zero_distance():
    from retrieval.train.trainer import collapse_warning

    assert collapse_warning({"epoch": 3, "mean_d_an": 1e-5, "mean_d_ap": 1e-6}).startswith("epoch 3: embeddings collapsed")
    assert collapse_warning({"epoch": 3, "mean_d_an": 0.5, "mean_d_ap": 0.1}) is None
    assert collapse_warning({"epoch": 3, "mean_d_an": float("nan"), "mean_d_ap": 0.1}) is None


def test_collapsed_embeddings_show_in_mining_statistics():
    x = torch.zeros(6, 3)
    stats = L.mining_statistics(x, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert stats["active_triplets"] == 1.0 and stats["mean_d_an"] < 1e-3
