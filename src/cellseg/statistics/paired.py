"""Paired tests of two models on shared crops, and Holm's adjustment (:mod:`cellseg.statistics`)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import stats

from cellseg.metrics import Statistic, scores_from_counts
from cellseg.statistics.intervals import (
    _check,
    _to_numpy,
    class_mean_interval,
    class_values,
    cluster_labels,
    mean_over_classes,
)

DEFAULT_PERMUTATIONS = 2**16
"""Sign flips of a paired test: exact (all ``2^N``) up to 16 crops, Monte Carlo above."""


class PairedComparison(NamedTuple):
    """Difference ``A - B`` of a statistic on shared crops: interval and sign-flip p-value.

    Attributes:
        estimate, low, high: the difference and its t-interval (as :class:`Interval`).
        p_value: two-sided sign-flip permutation p-value.
        estimate_a, estimate_b: the statistic of each model.
        n_crops: shared crops.
        exact: whether all ``2^N`` flips were enumerated.
        conservative: the interval rests on the conservative variance (:class:`Interval`).
    """

    estimate: float
    low: float
    high: float
    p_value: float
    estimate_a: float
    estimate_b: float
    n_crops: int
    exact: bool
    conservative: bool = False


# ------------------------------------------------------------------------------ paired tests


def smallest_p_value(n_crops: int) -> float:
    """Smallest two-sided p-value an exact sign-flip test over ``n_crops`` can give: ``2/2^N``."""
    return min(1.0, 2.0 / 2.0**n_crops)


def _pair(
    data_a: np.ndarray | torch.Tensor, data_b: np.ndarray | torch.Tensor
) -> tuple[np.ndarray, np.ndarray]:
    a, b = _check(_to_numpy(data_a)), _check(_to_numpy(data_b))
    if a.shape != b.shape:
        raise ValueError(
            f"paired data must have the same crops and classes: {a.shape} vs {b.shape}"
        )
    if not np.array_equal(
        np.isnan(class_values(a, Statistic.MEAN)), np.isnan(class_values(b, Statistic.MEAN))
    ):
        raise ValueError("paired data must annotate the same crop x class pairs")
    return a, b


def _flip_statistic(
    a: np.ndarray, b: np.ndarray, statistic: Statistic
) -> Callable[[np.ndarray], np.ndarray]:
    """``keep (..., N) bool`` (crop keeps its labels) → ``θ̂(A') - θ̂(B')`` ``(...)``.

    Per-class sums over crops of the flipped models are ``keep @ A + (1 - keep) @ B``: one matrix
    product per batch of flips, for the mean statistic (sums of per-crop Dice) and the pooled
    one (summed counts) alike.
    """
    annotated = ~np.isnan(class_values(a, Statistic.MEAN))
    present = annotated.any(axis=0)  # (C,)
    n = annotated.sum(axis=0)
    if statistic is Statistic.POOLED:
        flat_a = np.where(annotated[..., None], a, 0.0).reshape(a.shape[0], -1)
        flat_b = np.where(annotated[..., None], b, 0.0).reshape(b.shape[0], -1)
    else:
        flat_a = np.where(annotated, class_values(a, Statistic.MEAN), 0.0)
        flat_b = np.where(annotated, class_values(b, Statistic.MEAN), 0.0)

    def per_class(sums: np.ndarray) -> np.ndarray:
        if statistic is Statistic.POOLED:
            return scores_from_counts(sums.reshape(*sums.shape[:-1], -1, 4)).dice
        return sums / np.maximum(n, 1)

    def difference(keep: np.ndarray) -> np.ndarray:
        k = keep.astype(np.float64)
        sums_a = k @ flat_a + (1.0 - k) @ flat_b
        sums_b = k @ flat_b + (1.0 - k) @ flat_a  # the same arithmetic: identical models give 0
        delta = per_class(sums_a) - per_class(sums_b)
        theta = np.where(present, delta, 0.0).sum(axis=-1) / max(int(present.sum()), 1)
        return np.round(theta, 12)  # flips equal up to rounding are ties

    return difference


def _rng_keyword() -> str:
    # scipy >= 1.15 takes ``rng``; older versions ``random_state``
    return (
        "rng" if "rng" in inspect.signature(stats.permutation_test).parameters else "random_state"
    )


def sign_patterns(
    units: int, n_resamples: int, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    """``(R, units)`` signs (+1 keeps a unit's labels): all ``2^units`` patterns when that is at
    most ``n_resamples`` (``exact``), else ``n_resamples`` random ones; ``(signs, exact)``."""
    if 2.0**units <= n_resamples:
        patterns = (np.arange(2**units)[:, None] >> np.arange(units)[None, :]) & 1
        return 1.0 - 2.0 * patterns, True
    return rng.choice((-1.0, 1.0), size=(n_resamples, units)), False


def _cluster_flip_p_value(
    flipped: Callable[[np.ndarray], np.ndarray], groups: np.ndarray, n_resamples: int, seed: int
) -> tuple[float, bool]:
    """Two-sided p-value of flips of whole clusters (``groups``: cluster index of each crop)."""
    signs, exact = sign_patterns(int(groups.max()) + 1, n_resamples, np.random.default_rng(seed))
    observed = abs(float(flipped(np.ones(groups.size, dtype=bool))))
    extreme = 0
    for start in range(0, len(signs), 4096):
        keep = signs[start : start + 4096][:, groups] > 0
        extreme += int(np.count_nonzero(np.abs(flipped(keep)) >= observed - 1e-12))
    if exact:
        return min(1.0, extreme / len(signs)), True
    return min(1.0, (1 + extreme) / (1 + len(signs))), False


def sign_flip_p_value(
    data_a: np.ndarray | torch.Tensor,
    data_b: np.ndarray | torch.Tensor,
    statistic: Statistic | str = Statistic.MEAN,
    n_resamples: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    clusters: Sequence[Any] | np.ndarray | None = None,
) -> tuple[float, bool]:
    """Two-sided sign-flip permutation test of ``θ̂(A) = θ̂(B)`` over shared crops.

    A flip swaps the two models' results on a crop; the statistic ``θ̂(A') - θ̂(B')`` is recomputed
    for every flip (also for the non-linear ``pooled`` statistic), via
    :func:`scipy.stats.permutation_test` (``permutation_type="samples"``) on crop indices. With
    ``clusters`` a flip swaps the two models on every crop of a cluster at once (the clusters,
    e.g. datasets, are the exchangeable units): all ``2^G`` flips when that is at most
    ``n_resamples``, else that many seeded random ones.

    Args:
        data_a: model A, ``(N, C, 4)`` counts or ``(N, C)`` Dice; row ``n`` is the same crop in B.
        data_b: model B, same shape (same annotation).
        statistic: :class:`~cellseg.metrics.Statistic`.
        n_resamples: flips; exact (all ``2^N``) when ``2^N <= n_resamples``, else a Monte Carlo
            sample of this many (p-value ``(1 + #) / (1 + n_resamples)``).
        seed: seed of the Monte Carlo flips.
        clusters: ``(N,)`` cluster label of each crop, or ``None`` (each crop its own).

    Raises:
        ValueError: shapes differ, or fewer than 2 crops (clusters).

    Returns:
        ``(p_value, exact)``.
    """
    statistic = Statistic(statistic)
    a, b = _pair(data_a, data_b)
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"a paired test over crops needs at least 2 crops, got {n}")
    flipped = _flip_statistic(a, b, statistic)
    groups = cluster_labels(clusters, n)
    if groups is not None:
        return _cluster_flip_p_value(flipped, groups, int(n_resamples), seed)

    def difference(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
        # x holds crop i's index in the stacked (A, B): i keeps its labels, N + i is flipped
        return flipped(np.moveaxis(x, axis, -1) < n)

    exact = 2.0**n <= n_resamples
    result = stats.permutation_test(
        (np.arange(n), np.arange(n) + n),
        difference,
        permutation_type="samples",
        vectorized=True,
        n_resamples=int(n_resamples),
        batch=4096,
        alternative="two-sided",
        **{_rng_keyword(): np.random.default_rng(seed)},
    )
    return float(min(1.0, result.pvalue)), exact


def paired_comparison(
    data_a: np.ndarray | torch.Tensor,
    data_b: np.ndarray | torch.Tensor,
    statistic: Statistic | str = Statistic.MEAN,
    confidence: float = 0.95,
    n_resamples: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
    clusters: Sequence[Any] | np.ndarray | None = None,
    strata: Sequence[Any] | np.ndarray | None = None,
) -> PairedComparison:
    """Difference of a statistic between two models on the same crops.

    The interval is :func:`class_mean_interval` of the per-crop differences of
    :func:`class_values` (between-crop variation common to both models cancels), with variance
    bound 1 for a class of one crop; the p-value is :func:`sign_flip_p_value`. With
    ``clusters`` both count the clusters (datasets) as the units. The interval is centred on
    the reported estimate (the two computations differ by rounding only), so the estimate is
    always inside it.

    Args:
        data_a: model A, as in :func:`class_values`; row ``n`` is the same crop in both.
        data_b: model B, same shape.
        statistic: :class:`~cellseg.metrics.Statistic`.
        confidence: CI level.
        n_resamples: sign flips (see :func:`sign_flip_p_value`).
        seed: seed of Monte Carlo flips.
        clusters: ``(N,)`` cluster label of each crop, or ``None``.
        strata: ``(N,)`` stratum label of each crop for the interval given the strata
            (:func:`class_mean_interval`), or ``None``.

    Raises:
        ValueError: shapes differ, fewer than 2 crops, or as :func:`class_values`.

    Returns:
        :class:`PairedComparison` of ``A - B``.
    """
    statistic = Statistic(statistic)
    a, b = _pair(data_a, data_b)
    values_a, values_b = class_values(a, statistic), class_values(b, statistic)
    interval = class_mean_interval(values_a - values_b, confidence, 1.0, clusters, strata)
    p_value, exact = sign_flip_p_value(a, b, statistic, n_resamples, seed, clusters)
    estimate_a, estimate_b = mean_over_classes(values_a), mean_over_classes(values_b)
    estimate = estimate_a - estimate_b
    shift = estimate - interval.estimate  # rounding: keeps the estimate inside
    return PairedComparison(
        estimate,
        min(interval.low + shift, estimate),
        max(interval.high + shift, estimate),
        p_value,
        estimate_a,
        estimate_b,
        interval.n_crops,
        exact,
        interval.conservative,
    )


def holm(p_values: Sequence[float] | Any) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN and does not count as a comparison).

    Args:
        p_values: ``m`` raw p-values.

    Returns:
        ``m`` adjusted p-values: sorted ascending, ``max_{j<=k} min(1, (m - j) p_(j))``.
    """
    p = np.asarray(p_values, dtype=float)
    finite = np.flatnonzero(np.isfinite(p))
    adjusted = np.full_like(p, np.nan)
    order = finite[np.argsort(p[finite], kind="stable")]
    m, running = len(order), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()
