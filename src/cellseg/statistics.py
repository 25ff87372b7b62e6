"""Confidence intervals and paired tests of a model's mean Dice over test crops (SPEC §8).

The statistic is the **mean over classes of per-class scores aggregated over crops**:
``θ̂ = (1/K) Σ_c x̄_c`` where ``x̄_c`` is the mean of per-crop Dice over the ``n_c`` crops annotating
class ``c`` (``mean``), or the Dice of the summed counts over them (``pooled``), and ``K`` the
classes annotated by at least one crop. What it estimates, ``θ = (1/K) Σ_c μ_c`` with ``μ_c`` the
expected Dice of class ``c`` on a crop annotating it, is defined on the **fixed class set of the
sample**: an interval must not change which classes are averaged.

Why not a bootstrap over crops: a crop resample leaves out the classes it happens not to annotate,
so its mean runs over another class set, and a crop carrying the rare, hard classes pulls every
resample containing it down; the percentile interval is shifted and under-covers, its misses
all on one side. Resampling crops within each class keeps the class set but breaks the
correlation between the classes of one crop (a hard crop is hard for all its classes) and, with
classes annotated by 2-4 crops, under-covers badly (``bench/coverage.py`` measures both against
this module's interval; its figures are in docs/benchmarks.md).

The interval used here is **analytic**. ``θ̂ = Σ_n Σ_c a_nc x_nc / (K n_c)`` is linear in the
per-crop values of independent crops (the annotation pattern ``a`` is held fixed), so

* its variance is ``(1/K²) Σ_cd n_cd σ_cd / (n_c n_d)`` (``n_cd``: crops annotating both ``c`` and
  ``d``; ``σ_cd``: covariance of a crop's ``c`` and ``d`` scores), estimated without bias, for any
  within-crop covariance, by ``(1/K²) Σ_cd Σ_n r_nc r_nd / (n_c n_d - n_c - n_d + n_cd)`` with the
  residuals ``r_nc = x_nc - x̄_c`` (the diagonal terms are Welch's ``s_c² / n_c``);
* its degrees of freedom come from Satterthwaite's approximation for that quadratic form under a
  working model of independent per-class variances ``s_c²`` (without shared crops it is exactly
  the Welch-Satterthwaite ``ν``), capped at ``N - 1`` (when every crop annotates every class the
  estimate is the mean of ``N`` crop means and the interval is the one-sample t-interval of those),
  and the interval is ``θ̂ ± t_ν s``.

A class annotated by a single crop has no variance estimate; its score lies in ``[0, 1]``, so its
variance is at most ``1/4`` (Popoviciu), which is used (conservative, treated as known). The
interval is symmetric, so the estimate is always inside it. Its coverage on synthetic data of
known truth (6-40 crops, classes annotated by 2-40 crops nested like CellMap's, shared crop
effects, zero-inflated hard classes) is measured by ``bench/coverage.py`` (docs/benchmarks.md),
and ``tests/test_statistics.py`` requires 0.93-0.97 in two of its settings.

The pooled statistic is a ratio per class; it goes through the same machinery on its linearised
per-crop values (delta method): ``z_nc = D_c + n_c (A_nc - D_c B_nc) / Σ_n B_nc`` with
``A = 2 TP``, ``B = 2 TP + FP + FN``, whose mean over crops is ``D_c`` exactly.

Paired comparisons of two models on the same crops use an exact **sign-flip permutation test**
over crops (swapping the two models' results on a crop; valid at any ``N`` when, under the null,
the two are exchangeable on each crop): all ``2^N`` flips when ``2^N`` is at most the number of
resamples, otherwise a seeded Monte Carlo sample of flips (:func:`scipy.stats.permutation_test`
with ``permutation_type="samples"`` does both). Its smallest two-sided p-value with ``N`` crops is
``2 / 2^N`` (:func:`smallest_p_value`): below 6 crops nothing can be significant at 0.05, which is
why :mod:`cellseg.reporting` reports no interval and no p-value below a minimum number of crops.
Multiple comparisons are Holm-adjusted (:func:`holm`); comparisons with a best chosen from the
same data are step-down max-T permutation tests (:func:`compare_with_best` over crops,
:func:`compare_runs_with_best` over training runs), and :func:`rank_sets` says how firm a ranking
is.

Why one module of about 900 lines: the intervals, the paired tests, the comparisons with the best
and the rank sets all run on the same per-crop class values and their variance estimator
(:func:`class_values`, the class-set weights, the pooled ratio); split apart, each part would
import the others' private helpers.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import stats

from cellseg.metrics import Statistic, scores_from_counts

__all__ = [
    "DEFAULT_PERMUTATIONS",
    "BestComparison",
    "Interval",
    "PairedComparison",
    "RankSets",
    "class_mean_interval",
    "class_values",
    "compare_runs_with_best",
    "compare_with_best",
    "holm",
    "mean_dice_interval",
    "mean_over_classes",
    "paired_comparison",
    "rank_sets",
    "sign_flip_p_value",
    "smallest_p_value",
]

DEFAULT_PERMUTATIONS = 2**16
"""Sign flips of a paired test: exact (all ``2^N``) up to 16 crops, Monte Carlo above."""

SCORE_VARIANCE_BOUND = 0.25
"""Largest variance of a score in ``[0, 1]`` (of a difference of two: 1)."""


class Interval(NamedTuple):
    """A mean over classes, its t-interval and what it rests on.

    Attributes:
        estimate: ``θ̂``.
        low, high: the interval (``θ̂ ± t_ν s``).
        se: standard error ``s``.
        df: Satterthwaite degrees of freedom ``ν`` (at most ``N - 1``).
        n_crops: crops with at least one annotated class.
        conservative: the unbiased variance estimate was not positive, so the interval rests on
            the conservative one that cannot be (:func:`class_mean_interval`): wider, never a
            point.
    """

    estimate: float
    low: float
    high: float
    se: float
    df: float
    n_crops: int
    conservative: bool = False


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


# ------------------------------------------------------------------------------ per-crop values


def _to_numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def _check(data: np.ndarray) -> np.ndarray:
    if not (data.ndim == 3 and data.shape[-1] == 4) and data.ndim != 2:
        raise ValueError(f"expected counts (N, C, 4) or per-crop Dice (N, C), got {data.shape}")
    return data


def class_values(
    data: np.ndarray | torch.Tensor, statistic: Statistic | str = Statistic.MEAN
) -> np.ndarray:
    """Per-crop values whose per-class means over crops are the per-class scores.

    Args:
        data: per-crop counts ``(N, C, 4)`` (a crop annotates a class when its counts are not all
            zero), or per-crop Dice ``(N, C)`` with NaN where not annotated (``mean`` only).
        statistic: ``mean``: per-crop Dice. ``pooled``: the linearised values ``z_nc`` of the
            module docstring, whose mean over the crops annotating ``c`` is the pooled Dice.

    Raises:
        ValueError: bad shape, or ``pooled`` without counts.

    Returns:
        ``(N, C)`` float64, NaN where the crop does not annotate the class.
    """
    statistic = Statistic(statistic)
    arr = _check(_to_numpy(data))
    if arr.ndim == 2:
        if statistic is Statistic.POOLED:
            raise ValueError("the pooled statistic needs counts (N, C, 4), not per-crop scores")
        return arr
    annotated = arr.sum(axis=-1) > 0
    if statistic is Statistic.MEAN:
        return np.where(annotated, scores_from_counts(arr).dice, np.nan)
    tp, fp, fn = (np.where(annotated, arr[..., k], 0.0) for k in range(3))
    a, b = 2 * tp, 2 * tp + fp + fn
    sum_a, sum_b = a.sum(axis=0), b.sum(axis=0)
    n = annotated.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        dice = np.where(sum_b > 0, sum_a / sum_b, 1.0)  # all empty: 1 (SPEC §8)
        z = dice + n * (a - dice * b) / sum_b
    z = np.where(sum_b > 0, z, 1.0)
    return np.where(annotated, z, np.nan)


def mean_over_classes(values: np.ndarray) -> float:
    """``θ̂``: the mean over annotated classes of per-class means over crops.

    Args:
        values: ``(N, C)``, NaN where not annotated (see :func:`class_values`).

    Returns:
        the estimate; NaN when no crop annotates any class.
    """
    annotated = ~np.isnan(values)
    n = annotated.sum(axis=0)
    if not n.any():
        return float("nan")
    per_class = np.where(annotated, values, 0.0).sum(axis=0)[n > 0] / n[n > 0]
    return float(per_class.mean())


# ------------------------------------------------------------------------------ the interval


def _variance_and_df(values: np.ndarray, bound: float) -> tuple[float, float, bool]:
    """Variance of ``θ̂`` over independent crops, its Satterthwaite df, and whether the variance
    is the conservative fallback.

    The unbiased estimate weighs every pair of classes by their covariance within crops; in
    small designs the cross terms can come out so negative that it is not positive. Then the
    variance is Welch's per-class sum ``(1/K²) Σ_c s_c² / n_c``: the variance if the classes of
    a crop were uncorrelated, which is never negative, positive unless every class's values are
    all equal, and larger than the truth when the covariances really are negative, as the
    failed estimate says. (A crop-level sandwich ``Σ_n u_n²`` is no fallback: when the classes'
    residuals cancel within each crop it is 0 too.)

    Args:
        values: ``(N, K)`` with every column annotated by at least one crop, NaN elsewhere.
        bound: variance used for a class annotated by a single crop.

    Returns:
        ``(variance, df, conservative)``.
    """
    annotated = ~np.isnan(values)
    n_crops, k = values.shape
    a = annotated.astype(np.float64)
    n = a.sum(axis=0)
    means = np.where(annotated, values, 0.0).sum(axis=0) / n
    r = np.where(annotated, values - means, 0.0)  # (N, K) residuals
    shared = a.T @ a  # n_cd
    denominator = np.outer(n, n) - n[:, None] - n[None, :] + shared
    weights = np.where(denominator > 0, 1.0 / np.where(denominator > 0, denominator, 1.0), 0.0)
    weights /= k**2
    known = bound * np.count_nonzero(n < 2) / k**2  # single-crop classes: bounded, no df
    products = r.T @ r
    variance = float(np.sum(products * weights))
    conservative = variance <= 0
    if conservative:
        variance = float(np.sum(np.diag(products) * np.diag(weights)))
    variance += known

    # Satterthwaite: the estimate is y' B y + known over the annotated observations y, with
    # B = M W M (M removes class means, W the crop-block weights); under a working covariance
    # Ω = diag(s_c²), E = tr(BΩ) + known and Var = 2 tr(BΩBΩ), so ν = E² / tr(BΩBΩ).
    crop, cls = np.nonzero(annotated)
    w = np.where(crop[:, None] == crop[None, :], weights[cls][:, cls], 0.0)  # W
    w_p = a[crop][:, cls] * weights[cls][:, cls] / n[cls][None, :]  # W P, P: class means
    p_w_p = shared[cls][:, cls] * weights[cls][:, cls] / np.outer(n[cls], n[cls])
    b = w - w_p - w_p.T + p_w_p  # (I - P) W (I - P), elementwise: O(L²), no L³ product
    s2 = np.where(n > 1, (r**2).sum(axis=0) / np.maximum(n - 1, 1), 0.0)[cls]
    trace = float(np.sum(np.diag(b) * s2))
    spread = float(np.sum(b**2 * np.outer(s2, s2)))  # tr(BΩBΩ), B symmetric, Ω diagonal
    df = (trace + known) ** 2 / spread if spread > 0 else float("inf")
    # the working model ignores correlation between the classes of a crop; when they are
    # strongly correlated the N crops are the independent units: never more than N - 1 df
    return variance, min(df, n_crops - 1.0), conservative


def class_mean_interval(
    values: np.ndarray | torch.Tensor,
    confidence: float = 0.95,
    bound: float = SCORE_VARIANCE_BOUND,
) -> Interval:
    """t-interval of the mean over classes of per-class means over crops (module docstring).

    Args:
        values: ``(N, C)`` per-crop values, NaN where the crop does not annotate the class;
            classes no crop annotates are left out (of the estimate and the interval alike).
        confidence: e.g. 0.95.
        bound: variance assumed for a class annotated by one crop (0.25 for scores in [0, 1],
            1 for differences of two).

    Raises:
        ValueError: ``confidence`` outside (0, 1) or ``values`` not 2-D.

    Returns:
        :class:`Interval`; all NaN without any annotated class, and without an interval (NaN
        bounds) with fewer than 2 crops.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arr = _to_numpy(values)
    if arr.ndim != 2:
        raise ValueError(f"expected per-crop values (N, C), got {arr.shape}")
    arr = arr[~np.isnan(arr).all(axis=1)][:, ~np.isnan(arr).all(axis=0)]
    estimate = mean_over_classes(arr)
    if arr.shape[0] < 2:
        nan = float("nan")
        return Interval(estimate, nan, nan, nan, nan, arr.shape[0])
    variance, df, conservative = _variance_and_df(arr, bound)
    se = float(np.sqrt(variance))
    quantile = float(stats.t.ppf(0.5 + confidence / 2, df))
    return Interval(
        estimate,
        estimate - quantile * se,
        estimate + quantile * se,
        se,
        df,
        arr.shape[0],
        conservative,
    )


def mean_dice_interval(
    data: np.ndarray | torch.Tensor,
    statistic: Statistic | str = Statistic.MEAN,
    confidence: float = 0.95,
) -> Interval:
    """The interval of a model's mean Dice over classes.

    Args:
        data: per-crop counts ``(N, C, 4)`` or Dice ``(N, C)`` (see :func:`class_values`).
        statistic: :class:`~cellseg.metrics.Statistic`.
        confidence: CI level.

    Returns:
        :class:`Interval` (see :func:`class_mean_interval`).
    """
    return class_mean_interval(class_values(data, statistic), confidence)


def replicate_mean_interval(
    values: np.ndarray | torch.Tensor,
    confidence: float = 0.95,
    bound: float = SCORE_VARIANCE_BOUND,
) -> Interval:
    """t-interval of ``θ̄ = (1/S) Σ_s θ̂_s``: a model trained with ``S`` seeds, each scored on the
    same ``N`` test crops, accounting for both the crops and the seeds.

    Crops and seeds are crossed random factors: ``x_snc = μ_c + (crop n) + (seed s) +
    (seed s on crop n)``. ``θ̄`` is linear in the per-crop values, so its variance is the crop
    part plus the seed part, each estimated without bias by the method of moments:

    * the crop part (crop effects and the seed × crop interaction averaged over seeds) is
      :func:`class_mean_interval`'s estimate on the seed-averaged values ``x̄_nc``, with its
      class structure;
    * the seed part: the variance of the per-seed estimates ``θ̂_s`` over seeds, ``s_θ² / S``,
      estimates ``(σ_A² + σ_E²) / S``, where ``σ_E²`` is the interaction's share of one seed's
      estimate, ``N Σ ε̂_sn² / ((S - 1)(N - 1))`` from the two-way residuals ``ε̂`` of the
      per-crop contributions ``u_sn = Σ_c x_snc / (K n_c)`` to ``θ̂_s``. The crop part already
      holds the interaction averaged over seeds, so ``σ̂_E² / S`` is taken out of the seed part:
      ``max(s_θ² - σ̂_E², 0) / S`` is the ANOVA estimator of the seed component, clamped at 0.
      The interval is never narrower than the crops-only interval of the seed-averaged values,
      and equals it when the seeds differ no more than the interaction explains.

    Degrees of freedom combine the three estimated mean squares by Satterthwaite: the crop
    part, the per-seed spread (``S - 1``) and the subtracted interaction (``(S - 1)(N - 1)``),
    also when the seed component is clamped at 0 (its estimate is uncertain all the same, and
    the crop part's df alone made the tails too thin). With ``S = 1`` this is
    :func:`class_mean_interval`. Its coverage on synthetic data of known variance components is
    measured by ``bench/coverage.py --replicates`` (docs/benchmarks.md) and checked by
    ``tests/test_statistics.py``, 2 seeds with a strong seed effect included; with 2 seeds the
    seed part rests on one degree of freedom and the interval is wide: train 3 or more seeds
    when seeds matter.

    Args:
        values: ``(S, N, C)`` per-crop values (see :func:`class_values`) of each seed; the same
            crops in the same order, annotating the same classes, in every seed.
        confidence: CI level.
        bound: variance of a class annotated by one crop (see :func:`class_mean_interval`).

    Raises:
        ValueError: not 3-D, or the seeds' annotation differs.

    Returns:
        :class:`Interval` of ``θ̄``.
    """
    arr = _to_numpy(values)
    if arr.ndim != 3:
        raise ValueError(f"expected per-seed per-crop values (S, N, C), got {arr.shape}")
    annotated = ~np.isnan(arr)
    if not (annotated == annotated[:1]).all():
        raise ValueError("every seed must be scored on the same crop x class pairs")
    seeds = arr.shape[0]
    averaged = class_mean_interval(arr.mean(axis=0), confidence, bound)
    if seeds < 2 or not np.isfinite(averaged.se):
        return averaged
    keep_crops = annotated[0].any(axis=1)
    keep_classes = annotated[0].any(axis=0)
    arr = arr[:, keep_crops][:, :, keep_classes]
    present = ~np.isnan(arr[0])
    n_crops = arr.shape[1]
    weights = present / (present.sum(axis=0) * present.shape[1])  # a_nc / (K n_c)
    contributions = (np.where(present, arr, 0.0) * weights).sum(axis=2)  # u_sn, (S, N)
    per_seed = contributions.sum(axis=1)  # θ̂_s
    residuals = (
        contributions
        - contributions.mean(axis=0, keepdims=True)
        - contributions.mean(axis=1, keepdims=True)
        + contributions.mean()
    )
    interaction = n_crops * float((residuals**2).sum()) / ((seeds - 1) * max(n_crops - 1, 1))
    # The crop part is the seed-averaged crops' own estimate (it holds the interaction
    # averaged over seeds); the per-seed spread estimates the seed effect plus the interaction
    # again, so the interaction comes out of the seed part: the ANOVA estimator of the seed
    # component, clamped at 0. The interval is then never narrower than the crops-only one, and
    # can never collapse while that one cannot.
    seed_spread = float(per_seed.var(ddof=1)) / seeds
    interaction_share = interaction / seeds
    seed_variance = max(seed_spread - interaction_share, 0.0)
    variance = averaged.se**2 + seed_variance
    # Satterthwaite over the three mean squares as estimated, each on its own df: the crop
    # part, the per-seed spread (S - 1) and the subtracted interaction ((S - 1)(N - 1))
    interaction_df = (seeds - 1) * max(n_crops - 1, 1)
    spread = (
        averaged.se**4 / averaged.df
        + seed_spread**2 / (seeds - 1)
        + interaction_share**2 / interaction_df
    )
    df = variance**2 / spread if spread > 0 else averaged.df
    conservative = averaged.conservative
    se = float(np.sqrt(variance))
    quantile = float(stats.t.ppf(0.5 + confidence / 2, df))
    estimate = averaged.estimate  # θ̂ is linear: the mean of the θ̂_s
    return Interval(
        estimate,
        estimate - quantile * se,
        estimate + quantile * se,
        se,
        df,
        n_crops,
        conservative,
    )


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


def sign_flip_p_value(
    data_a: np.ndarray | torch.Tensor,
    data_b: np.ndarray | torch.Tensor,
    statistic: Statistic | str = Statistic.MEAN,
    n_resamples: int = DEFAULT_PERMUTATIONS,
    seed: int = 0,
) -> tuple[float, bool]:
    """Two-sided sign-flip permutation test of ``θ̂(A) = θ̂(B)`` over shared crops.

    A flip swaps the two models' results on a crop; the statistic ``θ̂(A') - θ̂(B')`` is recomputed
    for every flip (also for the non-linear ``pooled`` statistic), via
    :func:`scipy.stats.permutation_test` (``permutation_type="samples"``) on crop indices.

    Args:
        data_a: model A, ``(N, C, 4)`` counts or ``(N, C)`` Dice; row ``n`` is the same crop in B.
        data_b: model B, same shape (same annotation).
        statistic: :class:`~cellseg.metrics.Statistic`.
        n_resamples: flips; exact (all ``2^N``) when ``2^N <= n_resamples``, else a Monte Carlo
            sample of this many (p-value ``(1 + #) / (1 + n_resamples)``).
        seed: seed of the Monte Carlo flips.

    Raises:
        ValueError: shapes differ, or fewer than 2 crops.

    Returns:
        ``(p_value, exact)``.
    """
    statistic = Statistic(statistic)
    a, b = _pair(data_a, data_b)
    n = a.shape[0]
    if n < 2:
        raise ValueError(f"a paired test over crops needs at least 2 crops, got {n}")
    flipped = _flip_statistic(a, b, statistic)

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
) -> PairedComparison:
    """Difference of a statistic between two models on the same crops.

    The interval is :func:`class_mean_interval` of the per-crop differences of
    :func:`class_values` (between-crop variation common to both models cancels), with variance
    bound 1 for a class of one crop; the p-value is :func:`sign_flip_p_value`.

    Args:
        data_a: model A, as in :func:`class_values`; row ``n`` is the same crop in both.
        data_b: model B, same shape.
        statistic: :class:`~cellseg.metrics.Statistic`.
        confidence: CI level.
        n_resamples: sign flips (see :func:`sign_flip_p_value`).
        seed: seed of Monte Carlo flips.

    Raises:
        ValueError: shapes differ, fewer than 2 crops, or as :func:`class_values`.

    Returns:
        :class:`PairedComparison` of ``A - B``.
    """
    statistic = Statistic(statistic)
    a, b = _pair(data_a, data_b)
    values_a, values_b = class_values(a, statistic), class_values(b, statistic)
    interval = class_mean_interval(values_a - values_b, confidence, bound=1.0)
    p_value, exact = sign_flip_p_value(a, b, statistic, n_resamples, seed)
    estimate_a, estimate_b = mean_over_classes(values_a), mean_over_classes(values_b)
    return PairedComparison(
        estimate_a - estimate_b,
        interval.low,
        interval.high,
        p_value,
        estimate_a,
        estimate_b,
        interval.n_crops,
        exact,
        interval.conservative,
    )


class BestComparison(NamedTuple):
    """Every model against the best, the best chosen from the same crops (:func:`compare_with_best`).

    Attributes:
        best: index of the best model (highest statistic; the first of a tie).
        estimates: ``(M,)`` each model's statistic.
        p_adjusted: ``(M,)`` family-wise adjusted p-value of "model ``m`` is worse than the best"
            (NaN for the best itself).
        n_crops: crops the models share (the permutations run over these).
        n_resamples: label permutations per step.
    """

    best: int
    estimates: np.ndarray
    p_adjusted: np.ndarray
    n_crops: int
    n_resamples: int


def _pooled_dice(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Dice ``Σ 2TP / Σ (2TP + FP + FN)`` per class; 1 where both sums are 0 (SPEC §8: a class
    empty in prediction and ground truth)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, numerator / denominator, 1.0)


def _permuted_statistics(
    parts: np.ndarray, statistic: Statistic, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """The statistic of every model after permuting the models' labels within each crop.

    Args:
        parts: ``mean``: ``(M, N)`` per-crop contributions ``u_mn = Σ_c x_mnc / (K n_c)``, whose
            sum over crops is the statistic; ``pooled``: ``(M, N, C, 2)`` per-crop ``2 TP`` and
            ``2 TP + FP + FN``, NaN-free, zero where the class is not annotated.

    Returns:
        ``(n_resamples, M)``.
    """
    models, crops = parts.shape[:2]
    out = np.empty((n_resamples, models))
    by_crop = np.moveaxis(parts, 0, 1)[None]  # (1, N, M, ...)
    for start in range(0, n_resamples, 1024):
        size = min(1024, n_resamples - start)
        order = rng.random((size, crops, models)).argsort(axis=-1)  # (b, N, M)
        index = order.reshape(order.shape + (1,) * (parts.ndim - 2))
        sums = np.take_along_axis(by_crop, index, axis=2).sum(axis=1)  # (b, M, ...)
        if statistic is Statistic.MEAN:
            out[start : start + size] = sums
            continue
        out[start : start + size] = _pooled_dice(sums[..., 0], sums[..., 1]).mean(axis=-1)
    return out


def compare_with_best(
    data: Sequence[np.ndarray] | np.ndarray,
    statistic: Statistic | str = Statistic.MEAN,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> BestComparison:
    """Which models are worse than the best, with the best chosen from the same crops.

    Testing each model against the top scorer as if the pair had been fixed in advance makes
    "worse than the best" too easy: with 8 identical models a sign-flip test per pair and Holm
    call at least one of them significantly worse far more often than 5 % of experiments
    (``bench/best_selection.py``; docs/benchmarks.md). Here
    the null hypothesis of a set of models is that their results are exchangeable on each crop;
    a permutation shuffles the models' labels within every crop independently, and the best is
    chosen again in every permutation: the statistic of a set is the gap between its best and
    its worst model (``max θ̂ - min θ̂``, the largest "difference to the best"), so its
    permutation distribution includes the selection. Step-down (Westfall and Young): the worst
    model is tested against the gaps of all ``M`` models, the next against the gaps of the
    ``M - 1`` models left, and so on, each p-value at least the one before; family-wise error
    at most the nominal level whichever models are truly equal.

    Args:
        data: ``M`` models' per-crop counts ``(N, C, 4)`` on the same ``N`` crops (row ``n`` the
            same crop in every model, the same annotation), or ``(N, C)`` Dice with NaN where not
            annotated (``mean`` only).
        statistic: :class:`~cellseg.metrics.Statistic` (``mean``: per-crop Dice averaged; the
            statistic is then linear in the crops' contributions and permutations are cheap).
        n_resamples: label permutations per step (p-values ``(1 + #) / (1 + n_resamples)``).
        seed: seed of the permutations.

    Raises:
        ValueError: fewer than 2 models or 2 crops, shapes differ, or ``pooled`` without counts.

    Returns:
        :class:`BestComparison`.
    """
    statistic = Statistic(statistic)
    arrays = [_check(_to_numpy(x)) for x in data]
    if len(arrays) < 2:
        raise ValueError(f"comparing with the best needs at least 2 models, got {len(arrays)}")
    if len({x.shape for x in arrays}) > 1:
        raise ValueError(
            f"every model needs the same crops and classes, got {[x.shape for x in arrays]}"
        )
    if arrays[0].shape[0] < 2:
        raise ValueError("comparing with the best needs at least 2 crops")
    if statistic is Statistic.MEAN:
        values = np.stack([class_values(x, statistic) for x in arrays])  # (M, N, C)
        annotated = ~np.isnan(values).any(axis=0)
        keep = annotated.any(axis=0)
        annotated = annotated[:, keep]
        n_c = annotated.sum(axis=0)
        weights = annotated / (n_c * annotated.shape[1])  # a_nc / (K n_c)
        parts = (np.where(annotated, values[:, :, keep], 0.0) * weights).sum(axis=2)  # (M, N)
        estimates = parts.sum(axis=1)
    else:
        if arrays[0].ndim != 3:
            raise ValueError("the pooled statistic needs counts (N, C, 4), not per-crop scores")
        counts = np.stack(arrays)  # (M, N, C, 4)
        annotated = (counts.sum(axis=-1) > 0).all(axis=0)  # (N, C)
        keep = annotated.any(axis=0)
        counts = np.where(annotated[None, :, :, None], counts, 0.0)[:, :, keep]
        tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
        parts = np.stack((2 * tp, 2 * tp + fp + fn), axis=-1)  # (M, N, K, 2)
        sums = parts.sum(axis=1)
        estimates = _pooled_dice(sums[..., 0], sums[..., 1]).mean(axis=1)
    rng = np.random.default_rng(seed)
    best, p_adjusted = _step_down_against_the_best(
        estimates,
        lambda remaining: _permuted_statistics(parts[remaining], statistic, n_resamples, rng),
        n_resamples,
    )
    return BestComparison(best, estimates, p_adjusted, arrays[0].shape[0], int(n_resamples))


def _step_down_against_the_best(
    estimates: np.ndarray,
    permuted: Callable[[list[int]], np.ndarray],
    n_resamples: int,
) -> tuple[int, np.ndarray]:
    """Westfall-Young step-down of "worse than the best", the best chosen again in every
    permutation: the worst model against the permuted gaps (best minus worst) of all of them,
    the next against those of the ones left, each p-value at least the one before.

    Args:
        estimates: ``(M,)`` each model's statistic.
        permuted: ``permuted(remaining) -> (n_resamples, len(remaining))``, the statistics of
            the models ``remaining`` under ``n_resamples`` permutations of their labels.
        n_resamples: permutations per step.

    Returns:
        the index of the best (the first of a tie) and ``(M,)`` adjusted p-values (NaN for it).
    """
    best = int(np.argmax(estimates))
    gaps = estimates[best] - estimates
    p_adjusted = np.full(len(estimates), np.nan)
    remaining = list(range(len(estimates)))
    previous = 0.0
    # worst first; a tie keeps the input order
    for worst in sorted((m for m in remaining if m != best), key=lambda m: (-gaps[m], m)):
        statistics = permuted(remaining)
        spread = statistics.max(axis=1) - statistics.min(axis=1)
        # a tolerance: permutations that reproduce the observed gap up to rounding count
        at_least = np.count_nonzero(spread >= gaps[worst] - 1e-12 * max(abs(gaps[worst]), 1.0))
        previous = max(previous, (1 + at_least) / (1 + n_resamples))
        p_adjusted[worst] = previous
        remaining.remove(worst)
    return best, p_adjusted


def compare_runs_with_best(
    scores: np.ndarray, n_resamples: int = 9999, seed: int = 0
) -> BestComparison:
    """Which groups of training runs are worse than the best group, the best chosen from the
    same runs: a step-down max-T permutation test over runs, on fixed test crops.

    ``scores[g, s]`` is the score of group ``g``'s run with seed index ``s``. Under the null
    hypothesis of a set of groups, its runs of one seed index are exchangeable (the groups
    train alike; runs sharing a seed index may share data order or initialisation, so labels
    are permuted within each seed index, never across). A permutation shuffles the group labels
    within every seed index independently and the best is chosen again; the statistic of a set
    is the gap between its best and worst group means. Step-down as in
    :func:`compare_with_best`: the worst group is tested against the gaps of all ``M`` groups,
    the next against those of the ``M - 1`` left, each p-value at least the one before.

    The crops are held fixed: this tests whether the groups differ on these crops beyond what
    the seeds explain, not whether they would on other crops (the study pairs it with the
    t tests of :func:`replicate_mean_interval`, which count the crops). With one seed the gap
    cannot change under permutation (use :func:`compare_with_best` over crops). Relabelling
    whole groups alike in every seed index leaves the gap as it is, so no p-value of a step
    with ``m`` groups is below ``1 / (m!)^(S - 1)``: 1/2 for 2 groups x 2 seeds, 1/4 for 2 x 3,
    1/36 for 3 x 3. Few runs cannot show a difference once the best is chosen from them.

    Args:
        scores: ``(M, S)`` per-run scores, ``M >= 2`` groups, ``S >= 2`` seed indices.
        n_resamples: random permutations per step (seeded).
        seed: seed of the permutations.

    Raises:
        ValueError: fewer than 2 groups or 2 seeds, or NaN scores.

    Returns:
        :class:`BestComparison` (``n_crops`` holds the seed count ``S``).
    """
    scores = np.asarray(scores, dtype=float)
    if scores.ndim != 2 or scores.shape[0] < 2 or scores.shape[1] < 2:
        raise ValueError(f"expected (groups >= 2, seeds >= 2) run scores, got {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError("every group needs a score for every seed index")
    estimates = scores.mean(axis=1)
    rng = np.random.default_rng(seed)

    def permuted(remaining: list[int]) -> np.ndarray:
        subset = scores[remaining]  # (m, S)
        # each permutation sorts random keys per seed index: independent label shuffles
        order = np.argsort(rng.random((n_resamples, *subset.shape)), axis=1)
        return np.take_along_axis(subset[None], order, axis=1).mean(axis=2)  # (R, m)

    best, p_adjusted = _step_down_against_the_best(estimates, permuted, n_resamples)
    return BestComparison(best, estimates, p_adjusted, scores.shape[1], int(n_resamples))


class RankSets(NamedTuple):
    """How sure a ranking is (:func:`rank_sets`).

    Attributes:
        low, high: ``(M,)`` each model's simultaneous confidence set of ranks ``[low, high]``
            (1 = best): together they hold every model's true rank with the confidence asked.
        p_best: ``(M,)`` share of crop resamples in which the model scores highest.
        n_crops: crops the models share.
    """

    low: np.ndarray
    high: np.ndarray
    p_best: np.ndarray
    n_crops: int


def _resampled_statistics(
    data: Sequence[np.ndarray], statistic: Statistic, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """``(n_resamples, M)``: every model's statistic on the same crops drawn with replacement
    (the classes a resample does not annotate are left out of every model alike)."""
    arrays = [_check(_to_numpy(x)) for x in data]
    n_crops = arrays[0].shape[0]
    if statistic is Statistic.MEAN:
        values = np.stack([class_values(x, statistic) for x in arrays])  # (M, N, C)
        annotated = (~np.isnan(values)).all(axis=0).astype(np.float64)  # (N, C)
        numerator = np.where(annotated > 0, values, 0.0)  # (M, N, C)
        denominator = np.broadcast_to(annotated, numerator.shape)
    else:
        counts = np.stack(arrays)  # (M, N, C, 4)
        annotated = (counts.sum(axis=-1) > 0).all(axis=0).astype(np.float64)
        tp, fp, fn = (np.where(annotated > 0, counts[..., k], 0.0) for k in range(3))
        numerator, denominator = 2 * tp, 2 * tp + fp + fn
    out = np.empty((n_resamples, len(arrays)))
    for start in range(0, n_resamples, 512):
        size = min(512, n_resamples - start)
        weights = rng.multinomial(n_crops, np.full(n_crops, 1 / n_crops), size=size).astype(float)
        present = weights @ annotated > 0  # (b, C): classes the resample annotates
        top = np.einsum("bn,mnc->bmc", weights, numerator)
        bottom = np.einsum("bn,mnc->bmc", weights, denominator)
        scores = np.where(present[:, None, :], _pooled_dice(top, bottom), 0.0)
        out[start : start + size] = scores.sum(axis=2) / present.sum(axis=1)[:, None]
    return out


def rank_sets(
    data: Sequence[np.ndarray] | np.ndarray,
    statistic: Statistic | str = Statistic.MEAN,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> RankSets:
    """Simultaneous confidence sets of the models' ranks, and how often each comes out best.

    The rank sets come from simultaneous intervals of all ``M (M - 1) / 2`` pairwise differences
    (each :func:`class_mean_interval` of the per-crop differences at confidence
    ``1 - (1 - confidence) / pairs``, Bonferroni): model ``i`` ranks below every model whose
    interval against it lies above 0, and above every model whose interval lies below, so
    ``low_i = 1 + #{j: θ_j > θ_i surely}`` and ``high_i = M - #{j: θ_j < θ_i surely}``. All the
    sets hold the true ranks at once whenever all the intervals do, so with at least the
    confidence asked. ``p_best`` is descriptive: the share of crop resamples (with replacement)
    in which the model has the highest statistic.

    Args:
        data: ``M`` models' per-crop counts ``(N, C, 4)`` on the same crops, or ``(N, C)`` Dice
            with NaN where not annotated (``mean`` only).
        statistic: :class:`~cellseg.metrics.Statistic`.
        confidence: of the sets together.
        n_resamples: crop resamples for ``p_best``.
        seed: seed of the resamples.

    Raises:
        ValueError: fewer than 2 models or 2 crops, or shapes differ.

    Returns:
        :class:`RankSets`.
    """
    statistic = Statistic(statistic)
    arrays = [_check(_to_numpy(x)) for x in data]
    if len(arrays) < 2 or len({x.shape for x in arrays}) > 1 or arrays[0].shape[0] < 2:
        raise ValueError("rank sets need at least 2 models on the same (at least 2) crops")
    models = len(arrays)
    values = [class_values(x, statistic) for x in arrays]
    pairs = models * (models - 1) // 2
    level = 1 - (1 - confidence) / pairs
    surely_above = np.zeros((models, models), dtype=bool)  # [i, j]: θ_i > θ_j surely
    for i, j in itertools.combinations(range(models), 2):
        interval = class_mean_interval(values[i] - values[j], level, bound=1.0)
        surely_above[i, j] = interval.low > 0
        surely_above[j, i] = interval.high < 0
    low = 1 + surely_above.sum(axis=0)
    high = models - surely_above.sum(axis=1)
    resampled = _resampled_statistics(arrays, statistic, n_resamples, np.random.default_rng(seed))
    p_best = np.bincount(resampled.argmax(axis=1), minlength=models) / n_resamples
    return RankSets(low, high, p_best, arrays[0].shape[0])


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
