"""PK sampler properties (numpy only: these run without torch)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrieval.train.sampler import PKSampler


def labels_from_counts(counts):
    return np.repeat(np.arange(len(counts)) * 10 + 3, counts)  # pids need not be 0..n-1


@settings(max_examples=40, deadline=None)
@given(
    counts=st.lists(st.integers(1, 12), min_size=2, max_size=12),
    p=st.integers(1, 4),
    k=st.integers(1, 5),
    seed=st.integers(0, 1000),
)
def test_every_batch_is_p_identities_times_k_images(counts, p, k, seed):
    labels = labels_from_counts(counts)
    if p > len(counts):
        with pytest.raises(ValueError):
            PKSampler(labels, p, k, seed)
        return
    sampler = PKSampler(labels, p, k, seed)
    batches = sampler.batches()
    for batch in batches:
        assert len(batch) == p * k
        per_id = Counter(labels[batch])
        assert len(per_id) == p and set(per_id.values()) == {k}
        for pid in per_id:
            rows = [r for r in batch if labels[r] == pid]
            n_images = int((labels == pid).sum())
            # an identity with at least K images never repeats one in its chunk
            if n_images >= k:
                assert len(set(rows)) == k
            else:
                assert set(rows) == set(np.flatnonzero(labels == pid))  # all its images, some repeated
    # an epoch ends only when fewer than P identities have chunks left
    chunks = Counter({pid: -(-c // k) for pid, c in zip(np.unique(labels), counts)})
    used: Counter = Counter()
    for batch in batches:
        for pid in set(labels[batch]):
            used[pid] += 1
    left = [pid for pid in chunks if chunks[pid] - used[pid] > 0]
    assert all(used[pid] <= chunks[pid] for pid in chunks)
    assert len(left) < p


def test_every_image_of_an_epoch_is_used_with_one_identity_per_batch():
    labels = np.repeat(np.arange(6), 8)
    sampler = PKSampler(labels, p=1, k=4, seed=1)
    rows = [r for b in sampler for r in b]
    assert sorted(rows) == list(range(len(labels)))  # K divides every count: each image exactly once
    assert len(sampler) == 12


def test_seeded_and_changes_with_epoch():
    labels = np.repeat(np.arange(10), 7)
    a, b = PKSampler(labels, 4, 4, seed=3), PKSampler(labels, 4, 4, seed=3)
    assert a.batches() == b.batches()
    a.set_epoch(1)
    assert a.batches() != b.batches()
    assert PKSampler(labels, 4, 4, seed=4).batches() != b.batches()


def test_identity_with_one_image_is_repeated_k_times():
    labels = np.array([0, 1, 1, 1, 1])
    batch = PKSampler(labels, 2, 4, seed=0).batches()[0]
    assert sorted(batch) == [0, 0, 0, 0, 1, 2, 3, 4]


def test_rejects_more_identities_per_batch_than_exist():
    with pytest.raises(ValueError, match="only 2"):
        PKSampler([0, 0, 1, 1], p=3, k=2)


def test_schedule_matches_the_baseline_at_120_epochs_and_scales_down():
    from retrieval.train.optim import Schedule

    s = Schedule.scaled(120, 3.5e-4)
    assert s.warmup_epochs == 10 and s.milestones == (40, 70)
    assert s.lr(0, 0, 100) == pytest.approx(3.5e-6)  # warm-up starts at 1 %
    assert s.lr(5, 0, 100) == pytest.approx(3.5e-4 * (0.01 + 0.99 * 0.5))
    assert s.lr(10, 0, 100) == pytest.approx(3.5e-4)
    assert s.lr(40, 0, 100) == pytest.approx(3.5e-5) and s.lr(70, 0, 100) == pytest.approx(3.5e-6)
    short = Schedule.scaled(12, 1e-3)
    assert short.warmup_epochs == 1 and short.milestones == (4, 7)
    assert short.lr(0, 5, 10) == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5))  # warms up within the first epoch
