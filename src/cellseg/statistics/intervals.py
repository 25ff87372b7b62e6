"""Intervals of a mean over classes of per-class scores over crops (:mod:`cellseg.statistics`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from scipy import stats

from cellseg.metrics import Statistic, scores_from_counts

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
        n_clusters: datasets (clusters) the interval counts as its independent units; 0 when
            the crops are the units.
        tied: every class's values were all equal (no spread to estimate a variance from): the
            interval is the exact distribution-free one for tied values (:func:`tie_interval`).
    """

    estimate: float
    low: float
    high: float
    se: float
    df: float
    n_crops: int
    conservative: bool = False
    n_clusters: int = 0
    tied: bool = False


def t_interval(
    estimate: float,
    variance: float,
    df: float,
    confidence: float,
    n_crops: int,
    conservative: bool = False,
    n_clusters: int = 0,
) -> Interval:
    """The symmetric t-interval ``θ̂ ± t_ν s`` of an estimate with variance ``s²`` on ``ν`` df."""
    se = float(np.sqrt(variance))
    quantile = float(stats.t.ppf(0.5 + confidence / 2, df))
    return Interval(
        estimate,
        estimate - quantile * se,
        estimate + quantile * se,
        se,
        df,
        n_crops,
        conservative,
        n_clusters,
    )


def cluster_labels(clusters: Sequence[Any] | np.ndarray | None, n_crops: int) -> np.ndarray | None:
    """``(N,)`` integer cluster index of each crop (``None``: no clusters).

    Raises:
        ValueError: not one label per crop.
    """
    if clusters is None:
        return None
    labels = np.asarray(list(clusters), dtype=object)
    if labels.shape != (n_crops,):
        raise ValueError(f"expected one cluster label per crop ({n_crops}), got {labels.shape}")
    _, index = np.unique(labels.astype(str), return_inverse=True)
    return index.reshape(-1)


def dataset_of(crop: str) -> str:
    """The dataset of a crop named ``dataset/cropN`` (the name itself when it has no ``/``)."""
    return crop.rpartition("/")[0] or crop


def support_of(bound: float) -> tuple[float, float]:
    """The range of a value whose largest variance is ``bound``: ``[0, 1]`` for a score (1/4),
    ``[-1, 1]`` for a difference of two scores (1)."""
    half = float(np.sqrt(bound))
    return (0.0, 1.0) if bound <= SCORE_VARIANCE_BOUND else (-half, half)


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


def _cluster_variance(values: np.ndarray, bound: float, groups: np.ndarray) -> float:
    """Cluster-robust variance of ``θ̂`` (clusters of crops the independent units), CR1.

    ``θ̂ - θ = Σ_g E_g`` up to the class means' own error, with ``E_g = Σ_{n in g} Σ_c w_nc r_nc``
    the residuals ``r_nc = x_nc - x̄_c`` of the crops of cluster ``g`` weighted as in ``θ̂``
    (``w_nc = a_nc / (K n_c)``); the variance is ``G / (G - 1) Σ_g E_g²`` (the small-cluster
    factor that makes it the one-sample t variance of cluster means when every cluster has
    the same crops and one class), plus the bound of each class annotated by a single crop.

    Args:
        values: ``(N, K)``, every column annotated by at least one crop, NaN elsewhere.
        bound: variance of a class annotated by a single crop.
        groups: ``(N,)`` cluster index of each crop, ``G >= 2`` distinct.
    """
    annotated = ~np.isnan(values)
    k = values.shape[1]
    n = annotated.sum(axis=0)
    means = np.where(annotated, values, 0.0).sum(axis=0) / n
    contributions = (np.where(annotated, values - means, 0.0) / (k * n)).sum(axis=1)  # e_n
    per_cluster = np.bincount(groups, weights=contributions)
    g = int(np.unique(groups).size)
    known = bound * np.count_nonzero(n < 2) / k**2
    return g / (g - 1) * float(np.sum(per_cluster**2)) + known


def _within_strata(values: np.ndarray, layers: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Values centred on their stratum x class means (class means kept), for the variance of
    ``θ̂`` given the strata.

    Given the strata (these datasets), a crop varies only around its stratum's mean, so the
    crop-level estimator runs on ``x_nc - x̄_gc + x̄_c`` (a class with a single crop in a stratum
    keeps its value: no mean to remove, conservative). Removing ``G`` stratum means costs
    degrees of freedom the crop-level estimator does not know about: its variance is scaled by
    ``(N - 1) / (N - G)`` (exact for one class and equal variances) and its df capped at
    ``N - G``.

    Returns:
        ``(centred values, variance factor, df cap)``.
    """
    centred = values.copy()
    annotated = ~np.isnan(values)
    class_means = np.nanmean(values, axis=0)
    strata = np.unique(layers)
    for g in strata:
        rows = layers == g
        counts = annotated[rows].sum(axis=0)
        means = np.where(counts > 0, np.nansum(values[rows], axis=0) / np.maximum(counts, 1), 0)
        shift = np.where(counts > 1, class_means - means, 0.0)
        centred[rows] = values[rows] + shift
    n = values.shape[0]
    g = strata.size
    if n - g < 1:
        return values, 1.0, n - 1.0
    return centred, (n - 1.0) / (n - g), float(n - g)


def tie_interval(
    values: np.ndarray, confidence: float, support: tuple[float, float]
) -> tuple[float, float]:
    """Exact interval of ``θ = (1/K) Σ_c μ_c`` when each class's ``n_c`` values all equal ``v_c``.

    A value ``X`` in ``[lo, hi]`` with mean ``μ > v`` equals ``v`` with probability at most
    ``(hi - μ) / (hi - v)`` (Markov's inequality on ``hi - X``), so ``n`` independent values all
    equal to ``v`` have probability at most ``((hi - μ) / (hi - v))^n``; it is below ``α'`` beyond
    ``μ = v + (hi - v)(1 - α'^(1/n))``, and likewise below. With ``α' = α / (2K)`` for each side
    of each class (Bonferroni: the classes share crops), the mean of the class bounds bounds
    ``θ`` with at least the confidence asked, whatever the values' distribution (for all-zero
    scores over ``N`` crops and one class: ``[0, 1 - 0.025^(1/N)]``, the rule of three's
    interval). It has positive width unless every ``v_c`` sits on the bound it leans from.

    Args:
        values: ``(N, K)``, each column's annotated values equal (NaN elsewhere).
        confidence: e.g. 0.95.
        support: ``(lo, hi)``, the range a value can take.

    Returns:
        ``(low, high)``.
    """
    annotated = ~np.isnan(values)
    n = annotated.sum(axis=0)
    tied = np.nanmax(values, axis=0)
    share = 1.0 - ((1.0 - confidence) / (2 * values.shape[1])) ** (1.0 / n)
    lo, hi = support
    return (
        float(np.mean(tied - (tied - lo) * share)),
        float(np.mean(tied + (hi - tied) * share)),
    )


def class_mean_interval(
    values: np.ndarray | torch.Tensor,
    confidence: float = 0.95,
    bound: float = SCORE_VARIANCE_BOUND,
    clusters: Sequence[Any] | np.ndarray | None = None,
    strata: Sequence[Any] | np.ndarray | None = None,
) -> Interval:
    """t-interval of the mean over classes of per-class means over crops (module docstring).

    Without ``clusters`` the crops are the independent units: the unbiased crop-level variance,
    Satterthwaite df at most ``N - 1``. With ``clusters`` (one label per crop, e.g. its dataset)
    the clusters are: the cluster-robust variance of :func:`_cluster_variance` and ``G - 1``
    degrees of freedom, the target being the mean over clusters like these (needs ``G >= 2``).
    With ``strata`` instead (too few datasets to be the units) the target is the mean over
    *these* strata: the crops stay the units, but each value is centred on its stratum x class
    mean (:func:`_within_strata`), so the differences between the strata, fixed for this
    target, do not count as error. Either way, when every class's values are all equal (a
    model scoring 0 on every crop, a constant paired difference) there is no spread to estimate
    a variance from and the interval is :func:`tie_interval`'s exact one (``tied``): never a
    point.

    Args:
        values: ``(N, C)`` per-crop values, NaN where the crop does not annotate the class;
            classes no crop annotates are left out (of the estimate and the interval alike).
        confidence: e.g. 0.95.
        bound: variance assumed for a class annotated by one crop (0.25 for scores in [0, 1],
            1 for differences of two; it also sets the range of a value, [0, 1] or [-1, 1]).
        clusters: ``(N,)`` cluster label of each crop, or ``None``.
        strata: ``(N,)`` stratum label of each crop (ignored with ``clusters``), or ``None``.

    Raises:
        ValueError: ``confidence`` outside (0, 1), ``values`` not 2-D, or not one label per crop.

    Returns:
        :class:`Interval`; all NaN without any annotated class, and without an interval (NaN
        bounds) with fewer than 2 crops (2 clusters).
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    arr = _to_numpy(values)
    if arr.ndim != 2:
        raise ValueError(f"expected per-crop values (N, C), got {arr.shape}")
    groups = cluster_labels(clusters, arr.shape[0])
    layers = None if groups is not None else cluster_labels(strata, arr.shape[0])
    rows = ~np.isnan(arr).all(axis=1)
    arr = arr[rows][:, ~np.isnan(arr).all(axis=0)]
    estimate = mean_over_classes(arr)
    n_clusters = 0
    if groups is not None:
        groups = np.unique(groups[rows], return_inverse=True)[1].reshape(-1)
        n_clusters = int(groups.max()) + 1 if groups.size else 0
    if arr.shape[0] < 2 or (groups is not None and n_clusters < 2):
        nan = float("nan")
        return Interval(estimate, nan, nan, nan, nan, arr.shape[0], n_clusters=n_clusters)
    if groups is None and layers is not None and np.unique(layers[rows]).size > 1:
        centred, correction, df_cap = _within_strata(arr, layers[rows])
        variance, df, conservative = _variance_and_df(centred, bound)
        variance, df = variance * correction, min(df, df_cap)
    elif groups is None:
        variance, df, conservative = _variance_and_df(arr, bound)
    else:
        variance, df, conservative = _cluster_variance(arr, bound, groups), n_clusters - 1.0, False
    spread = np.nanmax(arr, axis=0) - np.nanmin(arr, axis=0)
    if not variance > 0 or (np.all(spread <= 1e-12) and variance < 1e-24):
        low, high = tie_interval(arr, confidence, support_of(bound))
        se = (high - low) / (2 * float(stats.norm.ppf(0.5 + confidence / 2)))
        return Interval(estimate, low, high, se, np.inf, arr.shape[0], True, n_clusters, True)
    return t_interval(estimate, variance, df, confidence, arr.shape[0], conservative, n_clusters)


def mean_dice_interval(
    data: np.ndarray | torch.Tensor,
    statistic: Statistic | str = Statistic.MEAN,
    confidence: float = 0.95,
    clusters: Sequence[Any] | np.ndarray | None = None,
    strata: Sequence[Any] | np.ndarray | None = None,
) -> Interval:
    """The interval of a model's mean Dice over classes.

    Args:
        data: per-crop counts ``(N, C, 4)`` or Dice ``(N, C)`` (see :func:`class_values`).
        statistic: :class:`~cellseg.metrics.Statistic`.
        confidence: CI level.
        clusters: ``(N,)`` cluster (dataset) of each crop, or ``None`` (see
            :func:`class_mean_interval`).
        strata: ``(N,)`` stratum (dataset) of each crop: the target is these strata.

    Returns:
        :class:`Interval` (see :func:`class_mean_interval`).
    """
    return class_mean_interval(
        class_values(data, statistic), confidence, SCORE_VARIANCE_BOUND, clusters, strata
    )


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
    # θ̂ is linear: the estimate is the mean of the θ̂_s
    return t_interval(averaged.estimate, variance, df, confidence, n_crops, averaged.conservative)
