"""Comparisons with a best model chosen from the data, and rank sets (:mod:`cellseg.statistics`)."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import numpy as np

from cellseg.metrics import Statistic
from cellseg.statistics.intervals import (
    _check,
    _to_numpy,
    class_values,
    cluster_labels,
)
from cellseg.statistics.paired import sign_patterns

MIN_CLUSTER_CROPS = 3
"""Clusters (datasets) of at least this many crops are flipped without the bootstrap-t guard
against skewed differences (:func:`compare_with_best`)."""


class BestComparison(NamedTuple):
    """Every model against the best, the best chosen from the same crops.

    Attributes:
        best: index of the best model (highest statistic; the first of a tie).
        estimates: ``(M,)`` each model's statistic.
        p_adjusted: ``(M,)`` family-wise adjusted p-value of "model ``m`` is worse than the best"
            (NaN for the best itself).
        n_crops: crops the models share (the permutations run over these).
        n_resamples: label permutations per step (sign patterns of :func:`compare_with_best`).
        p_pairs: ``(M, M)`` family-wise adjusted p-values of every pairwise difference
            (:func:`compare_with_best`; ``None`` from the other procedures).
        n_clusters: clusters (datasets) flipped as units; 0 when the crops are.
    """

    best: int
    estimates: np.ndarray
    p_adjusted: np.ndarray
    n_crops: int
    n_resamples: int
    p_pairs: np.ndarray | None = None
    n_clusters: int = 0


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


def compare_with_best_exchangeable(
    data: Sequence[np.ndarray] | np.ndarray,
    statistic: Statistic | str = Statistic.MEAN,
    n_resamples: int = 10_000,
    seed: int = 0,
) -> BestComparison:
    """The former test of "worse than the best" (kept for ``bench/inference_battery.py``'s
    "before" column): valid only when the models are exchangeable on each crop.

    Testing each model against the top scorer as if the pair had been fixed in advance makes
    "worse than the best" too easy: with 8 identical models a sign-flip test per pair and Holm
    call at least one of them significantly worse far more often than 5 % of experiments
    (``bench/inference_battery.py``; docs/benchmarks.md). Here
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

    With 8 models of equal means but unequal spreads its family-wise error is 0.12-0.14
    (``bench/inference_battery.py``): a noisy model's results exchanged with a steady one's open
    gaps the null hypothesis of exchangeability does not allow for. :func:`compare_with_best`
    replaced it.
    """
    statistic = Statistic(statistic)
    arrays = _model_arrays(data)
    if statistic is Statistic.MEAN:
        values, annotated = _shared_values(arrays, statistic)
        n_c = annotated.sum(axis=0)
        weights = annotated / (n_c * annotated.shape[1])  # a_nc / (K n_c)
        parts = (values * weights).sum(axis=2)  # (M, N)
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


def _model_arrays(data: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    """Every model's per-crop data as float64, checked: at least 2 models of one shape, on at
    least 2 crops."""
    arrays = [_check(_to_numpy(x)) for x in data]
    if len(arrays) < 2:
        raise ValueError(f"comparing with the best needs at least 2 models, got {len(arrays)}")
    if len({x.shape for x in arrays}) > 1:
        raise ValueError(
            f"every model needs the same crops and classes, got {[x.shape for x in arrays]}"
        )
    if arrays[0].shape[0] < 2:
        raise ValueError("comparing with the best needs at least 2 crops")
    return arrays


def _shared_values(
    data: Sequence[np.ndarray] | np.ndarray, statistic: Statistic
) -> tuple[np.ndarray, np.ndarray]:
    """``(M, N, K)`` per-crop values of every model on the crop x class pairs all of them
    annotate (0 elsewhere), and the ``(N, K)`` annotation; crops and classes none annotates
    dropped (crop rows kept: the caller's clusters stay aligned)."""
    arrays = _model_arrays(data)
    values = np.stack([class_values(x, statistic) for x in arrays])  # (M, N, C)
    annotated = ~np.isnan(values).any(axis=0)
    keep = annotated.any(axis=0)
    return np.where(annotated, values, 0.0)[:, :, keep], annotated[:, keep]


def _step_down_exceedances(resampled: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Step-down max-T counts: for each hypothesis, largest observed statistic first, how many
    resamples have a statistic among it and the hypotheses after it at least as large.

    Args:
        resampled: ``(R, P)`` resampled statistics, columns in the order of ``observed``.
        observed: ``(P,)`` observed statistics, sorted in decreasing order.

    Returns:
        ``(P,)`` counts (the tolerance keeps resamples equal up to rounding counted).
    """
    successive = np.maximum.accumulate(resampled[:, ::-1], axis=1)[:, ::-1]
    return (successive >= observed * (1 - 1e-9)).sum(axis=0)


def _step_down_p_values(p_sorted: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Step-down p-values made monotone (each at least the one before, at most 1) and put back
    from the decreasing-statistic ``order`` into the hypotheses' own order."""
    adjusted = np.empty(len(order))
    adjusted[order] = np.minimum(np.maximum.accumulate(p_sorted), 1.0)
    return adjusted


def pairwise_max_t(
    values: np.ndarray,
    annotated: np.ndarray,
    groups: np.ndarray,
    n_resamples: int,
    rng: np.random.Generator,
    strata: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, np.ndarray]:
    """Studentized step-down max-T over every pairwise difference, with joint sign flips.

    For the pair ``(i, j)`` the difference ``θ̂_i - θ̂_j = Σ_n u_n`` is a sum of per-crop
    contributions ``u_n = Σ_c w_nc d_nc`` (``d = x_i - x_j``, ``w_nc = a_nc / (K n_c)``); its
    standard error is the cluster-robust one, ``se² = Σ_g Ψ_g²`` over the clusters' sums
    ``Ψ_g = Σ_{n in g} e_n`` of the residual contributions ``e_n = Σ_c w_nc (d_nc - d̄_c)``
    (class means removed, so a real difference does not inflate its own standard error). A
    flip ``s`` in ``{-1, 1}^G`` negates every pairwise difference of the crops of cluster ``g`` at
    once (it reflects the models' scores on those crops); both ``Σ_n s_n u_n`` and its standard
    error are recomputed from the flipped differences (``e* = L s``, ``L = diag(u) - W Pᵀ``,
    ``P = a d / n_c``: one matrix product per batch of flips). With ``strata`` (the crops the
    units, the target these datasets) the residuals are centred on the stratum x class means
    instead (the class mean where a stratum has one crop of the class), so a model x dataset
    difference, fixed for that target, is not counted as error in the observed statistic; the
    flipped differences' are recomputed alike.

    Args:
        values: ``(M, N, K)`` per-crop values (0 where not annotated).
        annotated: ``(N, K)`` bool.
        groups: ``(N,)`` cluster index of each crop (``arange(N)``: the crops are the units).
        n_resamples: sign patterns: all ``2^G`` when that is at most this, else this many.
        rng: of the random patterns.
        strata: ``(N,)`` stratum index of each crop, or ``None``.

    Returns:
        ``(pairs (P, 2), T (P,), adjusted p (P,), exact, Ψ (P, G))``.
    """
    models, n_crops, k = values.shape
    a = annotated.astype(np.float64)
    n_c = np.maximum(a.sum(axis=0), 1)
    weights = a / (k * n_c)  # W
    n_groups = int(groups.max()) + 1
    h = np.zeros((n_groups, n_crops))
    h[groups, np.arange(n_crops)] = 1.0
    pairs = np.array(list(itertools.combinations(range(models), 2)), dtype=int).reshape(-1, 2)
    u = np.empty((len(pairs), n_crops))
    hl = np.empty((len(pairs), n_groups, n_crops))
    if strata is None:
        strata = np.zeros(n_crops, dtype=int)
        by_stratum = np.ones_like(a)  # never used: every cell centres on its class mean
    else:
        one_hot = np.eye(int(strata.max()) + 1)[strata]  # (N, S)
        by_stratum = (one_hot.T @ a)[strata]  # n_gc of each crop's stratum
    centre_in_stratum = (by_stratum >= 2) & (np.unique(strata).size > 1)
    same = strata[:, None] == strata[None, :]
    stratum_weights = np.where(centre_in_stratum, weights, 0.0)
    class_weights = np.where(centre_in_stratum, 0.0, weights)
    for p, (i, j) in enumerate(pairs):
        d = values[i] - values[j]
        u[p] = (weights * d).sum(axis=1)
        lever = np.diag(u[p]) - class_weights @ (a * d / n_c).T  # L
        lever -= same * (stratum_weights @ (a * d / np.maximum(by_stratum, 1)).T)
        hl[p] = h @ lever
    floor = 1e-24 + 1e-18 * float(np.max(u**2, initial=0.0))

    def t_values(signs: np.ndarray) -> np.ndarray:
        crop_signs = signs[:, groups]  # (R, N)
        residual = np.einsum("rn,pgn->rpg", crop_signs, hl)
        return np.abs(crop_signs @ u.T) / np.sqrt((residual**2).sum(axis=2) + floor)

    observed = t_values(np.ones((1, n_groups)))[0]
    signs, exact = sign_patterns(n_groups, n_resamples, rng)
    order = np.argsort(-observed, kind="stable")
    exceed = np.zeros(len(pairs))
    for start in range(0, len(signs), 512):
        resampled = t_values(signs[start : start + 512])[:, order]
        # the largest T* among the pairs not yet rejected at each step of the step-down
        exceed += _step_down_exceedances(resampled, observed[order])
    p_sorted = exceed / len(signs) if exact else (1 + exceed) / (1 + len(signs))
    return pairs, observed, _step_down_p_values(p_sorted, order), exact, hl.sum(axis=2)


def pairwise_bootstrap_t(
    estimates: np.ndarray, influence: np.ndarray, n_resamples: int, rng: np.random.Generator
) -> np.ndarray:
    """Step-down max-|T| over every pairwise difference by the bootstrap-t over clusters.

    ``influence[p, g]`` is ``Ψ_g`` of pair ``p`` (:func:`pairwise_max_t`: the cluster's share of
    the difference's error, summing to 0 over clusters), ``estimates[p]`` the difference; its
    t statistic is ``θ̂ / se`` with ``se² = G/(G-1) Σ_g Ψ_g²``, the interval's cluster-robust
    variance. Whole clusters are drawn with replacement (one draw for every pair) and each
    resample gives ``T* = Σ_g (c_g - 1) Ψ_g / se*`` (``c_g`` the draw counts, ``se*`` from the
    drawn ``Ψ``), the null distribution of the centred t statistics. A skewed difference (a model
    that fails badly on a few crops) shows in it: resamples that miss the failures have a small
    ``se*`` and a large ``T*``, which a sign flip, being symmetric, cannot produce.

    Args:
        estimates: ``(P,)``.
        influence: ``(P, G)``.
        n_resamples: bootstrap resamples.
        rng: of the resamples.

    Returns:
        ``(P,)`` step-down adjusted p-values.
    """
    pairs, g = influence.shape
    floor = 1e-24 + 1e-18 * float(np.max(influence**2, initial=0.0) + np.max(estimates**2))
    correction = g / (g - 1)
    observed = np.abs(estimates) / np.sqrt(correction * (influence**2).sum(axis=1) + floor)
    order = np.argsort(-observed, kind="stable")
    exceed = np.zeros(pairs)
    for start in range(0, n_resamples, 2048):
        size = min(2048, n_resamples - start)
        counts = rng.multinomial(g, np.full(g, 1 / g), size=size).astype(np.float64)  # (B, G)
        shift = (counts - 1.0) @ influence.T  # (B, P): θ̂* - θ̂
        mean = counts @ influence.T / g
        squares = counts @ (influence**2).T
        variance = correction * np.maximum(squares - g * mean**2, 0.0)
        t = np.abs(shift) / np.sqrt(variance + floor)
        exceed += _step_down_exceedances(t[:, order], observed[order])
    return _step_down_p_values((1 + exceed) / (1 + n_resamples), order)


def compare_with_best(
    data: Sequence[np.ndarray] | np.ndarray,
    statistic: Statistic | str = Statistic.MEAN,
    n_resamples: int = 10_000,
    seed: int = 0,
    clusters: Sequence[Any] | np.ndarray | None = None,
    strata: Sequence[Any] | np.ndarray | None = None,
) -> BestComparison:
    """Which models are worse than the best, with the best chosen from the same crops, whatever
    the models' spreads.

    Every pairwise difference gets a studentized statistic ``|θ̂_i - θ̂_j| / se_ij``
    (:func:`pairwise_max_t`), and all of them are tested together by a step-down max-T
    (Westfall-Young / Romano-Wolf) over joint sign flips of the crops (of whole clusters with
    ``clusters``). A flip negates every pairwise difference of a crop at once, which leaves
    their joint distribution unchanged when each crop's vector of differences is symmetric
    about 0, so no exchangeability of the models is assumed: a model with a large spread is
    not exchanged with a steady one, and studentizing keeps a noisy pair from dominating the
    maximum. Sign flips are exact only for symmetric differences; a model that fails badly on
    a few crops makes them skewed, and then a flip test calls it better than it is when it
    happened to fail seldom. So with crops as the units (or any cluster of fewer than
    :data:`MIN_CLUSTER_CROPS` crops) each pair's adjusted p-value is the larger of the flips'
    and of a step-down bootstrap-t over crops that sees skewness (:func:`pairwise_bootstrap_t`):
    a claim needs both. A dataset's sum over several crops is far less skewed, and flips of
    whole datasets alone keep the family-wise error there (``bench/inference_battery.py``,
    rare failures in 6 datasets), where the bootstrap-t over 6-10 datasets would cost most of
    the power. A pair whose
    adjusted p-value is below ``α`` says which of the two is better, all such claims together
    wrong with probability at most ``α``; "``m`` is worse than the best" follows from any pair in
    which a model scoring higher beats ``m``, so ``p_adjusted[m]`` is the smallest adjusted p of
    those pairs, and choosing the best from the same crops costs nothing more (every pair is
    in the family). Its family-wise error and power are measured by
    ``bench/inference_battery.py`` (docs/benchmarks.md). The pooled statistic is tested on its
    linearised per-crop values (:func:`class_values`).

    Args:
        data: ``M`` models' per-crop counts ``(N, C, 4)`` on the same ``N`` crops (row ``n`` the
            same crop in every model, the same annotation), or ``(N, C)`` Dice with NaN where not
            annotated (``mean`` only).
        statistic: :class:`~cellseg.metrics.Statistic`.
        n_resamples: sign patterns (all ``2^N`` or ``2^G`` when that is at most this; else this
            many seeded ones and p-values ``(1 + #) / (1 + n_resamples)``).
        seed: seed of the patterns.
        clusters: ``(N,)`` cluster (dataset) of each crop: whole clusters are flipped.
        strata: ``(N,)`` stratum (dataset) of each crop when the crops are the units and the
            target is these datasets (ignored with ``clusters``): the standard errors are
            centred within the strata (:func:`pairwise_max_t`).

    Raises:
        ValueError: fewer than 2 models or 2 crops, shapes differ, or ``pooled`` without counts.

    Returns:
        :class:`BestComparison` with ``p_pairs``.
    """
    statistic = Statistic(statistic)
    values, annotated = _shared_values(data, statistic)
    n_crops = values.shape[1]
    groups = cluster_labels(clusters, n_crops)
    keep = annotated.any(axis=1)
    values, annotated = values[:, keep], annotated[keep]
    groups = np.arange(int(keep.sum())) if groups is None else groups[keep]
    groups = np.unique(groups, return_inverse=True)[1].reshape(-1)
    layers = None if clusters is not None else cluster_labels(strata, n_crops)
    if layers is not None:
        layers = np.unique(layers[keep], return_inverse=True)[1].reshape(-1)
    k = annotated.shape[1]
    n_c = annotated.sum(axis=0)
    estimates = (values * (annotated / (k * n_c))).sum(axis=(1, 2))
    rng = np.random.default_rng(seed)
    pairs, _, flipped, _, influence = pairwise_max_t(
        values, annotated, groups, n_resamples, rng, layers
    )
    adjusted = flipped
    if np.bincount(groups).min() < MIN_CLUSTER_CROPS:
        # crops as the units: a claim needs both the sign flips (exact when the differences
        # are symmetric) and the bootstrap-t (which sees skewed ones); each controls the
        # family-wise error where its assumption holds, so their larger p-value does wherever
        # either does. A dataset's sum over several crops is far less skewed than one crop
        # (the battery's clustered designs, rare failures included), and at 6-10 datasets
        # the bootstrap-t has little power: whole datasets are flipped only.
        bootstrap = pairwise_bootstrap_t(
            estimates[pairs[:, 0]] - estimates[pairs[:, 1]], influence, n_resamples, rng
        )
        adjusted = np.maximum(flipped, bootstrap)
    models = len(estimates)
    p_pairs = np.ones((models, models))
    p_pairs[pairs[:, 0], pairs[:, 1]] = adjusted
    p_pairs[pairs[:, 1], pairs[:, 0]] = adjusted
    best = int(np.argmax(estimates))
    p_adjusted = np.array(
        [
            min((p_pairs[m, j] for j in range(models) if estimates[j] > estimates[m]), default=1.0)
            for m in range(models)
        ]
    )
    p_adjusted[best] = np.nan
    n_clusters = 0 if clusters is None else int(groups.max()) + 1
    return BestComparison(
        best, estimates, p_adjusted, n_crops, int(n_resamples), p_pairs, n_clusters
    )


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
    data: Sequence[np.ndarray],
    statistic: Statistic,
    n_resamples: int,
    rng: np.random.Generator,
    groups: np.ndarray | None = None,
) -> np.ndarray:
    """``(n_resamples, M)``: every model's statistic on the same crops drawn with replacement
    (the classes a resample does not annotate are left out of every model alike); with
    ``groups`` (cluster index of each crop) whole clusters are drawn, with all their crops."""
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
        if groups is None:
            weights = rng.multinomial(n_crops, np.full(n_crops, 1 / n_crops), size=size)
        else:
            units = int(groups.max()) + 1
            weights = rng.multinomial(units, np.full(units, 1 / units), size=size)[:, groups]
        weights = weights.astype(float)
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
    clusters: Sequence[Any] | np.ndarray | None = None,
    comparison: BestComparison | None = None,
    pair_resamples: int = 9999,
    strata: Sequence[Any] | np.ndarray | None = None,
) -> RankSets:
    """Simultaneous confidence sets of the models' ranks, and how often each comes out best.

    The rank sets come from the simultaneous tests of all ``M (M - 1) / 2`` pairwise
    differences of :func:`compare_with_best` (``p_pairs``): model ``i`` ranks below every model
    that scores higher with an adjusted p-value below ``1 - confidence``, and above every model
    it beats so, so ``low_i = 1 + #{j: θ_j > θ_i surely}`` and ``high_i = M - #{j: θ_j < θ_i
    surely}``. All the sets hold the true ranks at once whenever none of those directional
    claims is wrong, so with at least the confidence asked, whatever the models' spreads
    (``bench/inference_battery.py`` checks them; Bonferroni t-intervals of the differences,
    used before, missed under skewed differences). ``p_best`` is descriptive: the share of
    crop resamples (with replacement) in which the model has the highest statistic. With
    ``clusters`` the tests flip, and the resamples draw, whole clusters.

    Args:
        data: ``M`` models' per-crop counts ``(N, C, 4)`` on the same crops, or ``(N, C)`` Dice
            with NaN where not annotated (``mean`` only).
        statistic: :class:`~cellseg.metrics.Statistic`.
        confidence: of the sets together.
        n_resamples: crop resamples for ``p_best``.
        seed: seed of the resamples (and of the pairwise tests).
        clusters: ``(N,)`` cluster (dataset) of each crop, or ``None``.
        comparison: :func:`compare_with_best` of the same data, when already computed.
        pair_resamples: sign patterns and bootstrap resamples of the pairwise tests otherwise.
        strata: ``(N,)`` stratum of each crop for those tests (:func:`compare_with_best`).

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
    if comparison is None or comparison.p_pairs is None:
        comparison = compare_with_best(arrays, statistic, pair_resamples, seed, clusters, strata)
    assert comparison.p_pairs is not None
    estimates = comparison.estimates
    # [i, j]: θ_i > θ_j surely
    surely_above = (comparison.p_pairs < 1 - confidence) & (estimates[:, None] > estimates[None, :])
    np.fill_diagonal(surely_above, False)
    low = 1 + surely_above.sum(axis=0)
    high = models - surely_above.sum(axis=1)
    groups = cluster_labels(clusters, arrays[0].shape[0])
    rng = np.random.default_rng(seed)
    resampled = _resampled_statistics(arrays, statistic, n_resamples, rng, groups)
    p_best = np.bincount(resampled.argmax(axis=1), minlength=models) / n_resamples
    return RankSets(low, high, p_best, arrays[0].shape[0])
