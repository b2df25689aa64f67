"""Bootstrap confidence intervals over queries (pure numeric; no printing, no files).

Method (percentile bootstrap, Efron & Tibshirani 1993, ch. 13): draw ``n_resamples``
resamples of the n per-query values *with replacement* (each resample has n values),
take the statistic (the mean) of each, and report the ``(1 - confidence) / 2`` and
``1 - (1 - confidence) / 2`` quantiles of those statistics (numpy's default linear
quantile). The resample indices come from ``numpy.random.default_rng(seed).integers(0, n,
size=(n_resamples, n))``, drawn in row chunks to bound memory (the draws are the same as
one big call), so a given seed gives the same interval on every machine.

The paired form resamples the *same query indices* for both runs, so the interval of the
difference of means reflects per-query agreement between the runs (much tighter than two
independent intervals when the runs are correlated, as two models on one test set are).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from retrieval.eval.errors import EvaluationError

# Resample indices are drawn in chunks of about this many int64 values (~64 MB).
_CHUNK_VALUES = 8_000_000


def _as_values(values, name: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if array.size == 0:
        raise EvaluationError(f"{name}: no values to bootstrap (0 queries)")
    if not np.all(np.isfinite(array)):
        bad = np.flatnonzero(~np.isfinite(array))[:5].tolist()
        raise EvaluationError(f"{name}: values must be finite; NaN/inf at positions {bad}")
    return array


def _check_options(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise EvaluationError(f"confidence must be strictly between 0 and 1, got {confidence}")
    if int(n_resamples) < 1:
        raise EvaluationError(f"n_resamples must be at least 1, got {n_resamples}")


def _resample_indices(n: int, n_resamples: int, seed: int) -> Iterator[np.ndarray]:
    """Yield (rows, n) blocks of bootstrap indices; all blocks together are n_resamples rows."""
    rng = np.random.default_rng(seed)
    rows_per_chunk = max(1, _CHUNK_VALUES // n)
    done = 0
    while done < n_resamples:
        rows = min(rows_per_chunk, n_resamples - done)
        yield rng.integers(0, n, size=(rows, n))
        done += rows


def _percentile_interval(statistics: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(statistics, [tail, 1.0 - tail])
    return float(low), float(high)


def bootstrap_means(values, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
    """The n_resamples bootstrap means of ``values`` (shape (n_resamples,)), seeded."""
    array = _as_values(values, "values")
    _check_options(0.5, n_resamples)
    return np.concatenate(
        [array[idx].mean(axis=1) for idx in _resample_indices(array.size, int(n_resamples), seed)]
    )


def bootstrap_mean_interval(
    values, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval ``(low, high)`` of the mean of per-query ``values``.

    ``values``: 1-D, finite (e.g. AP of each valid query, or first-match-within-k as 0/1).
    Same values, confidence, n_resamples and seed -> the same interval.
    """
    _check_options(confidence, n_resamples)
    return _percentile_interval(bootstrap_means(values, n_resamples, seed), confidence)


def paired_bootstrap_delta(
    a, b, confidence: float = 0.95, n_resamples: int = 1000, seed: int = 0
) -> dict[str, float]:
    """Difference of means ``mean(b) - mean(a)`` with a paired percentile-bootstrap interval.

    ``a[i]`` and ``b[i]`` are the same query scored by run A and run B; every resample uses
    the same query indices for both. Returns ``{"delta", "low", "high"}``.
    """
    first = _as_values(a, "a")
    second = _as_values(b, "b")
    if first.shape != second.shape:
        raise EvaluationError(
            f"paired bootstrap needs one value per query in both runs; got {first.size} and {second.size}"
        )
    _check_options(confidence, n_resamples)
    differences = second - first
    # Resampling indices of the per-query differences is the same as resampling (a, b) pairs.
    low, high = _percentile_interval(bootstrap_means(differences, n_resamples, seed), confidence)
    return {"delta": float(differences.mean()), "low": low, "high": high}
