"""Tests of cellseg.statistics: coverage on synthetic crops of known truth, exact tests, Holm
(the comparisons with the best and the rank sets: tests/test_statistics_best.py).

The coverage study (:class:`Synthetic`, :func:`coverage_study`) is also what
``bench/coverage.py`` runs at full size, with the crop bootstrap the intervals replaced.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from scipy import special, stats

from cellseg.metrics import aggregate_crops
from cellseg.statistics import (
    class_mean_interval,
    class_values,
    holm,
    mean_dice_interval,
    mean_over_classes,
    paired_comparison,
    rank_sets,
    replicate_mean_interval,
    sign_flip_p_value,
    smallest_p_value,
)

pytestmark = pytest.mark.minutes(1)  # order: tests/conftest.py

# ------------------------------------------------------------------------------ coverage study


@dataclass(frozen=True)
class Synthetic:
    """Per-crop Dice of known expectation, annotated unevenly like CellMap's test crops.

    Class ``c`` is annotated by ``class_crops[c]`` crops (capped at ``n_crops``), nested: the
    crops annotating a rare class also annotate every commoner one, as CellMap's few fully
    annotated crops carry its rare classes. A crop's Dice of class ``c`` is
    ``expit(logit_c + u_n + e_nc)`` with a crop effect ``u_n ~ N(0, crop_sd²)`` shared by its
    classes and ``e_nc ~ N(0, noise_sd²)``; classes annotated by fewer than 8 crops are hard
    (logit ``hard_logit``, and Dice 0 with probability ``hard_zero``: a missed organelle).

    The **true value** is ``θ = (1/K) Σ_c μ_c`` with ``μ_c`` the expected Dice of class ``c`` on a
    crop annotating it (:meth:`truth`, by Gauss-Hermite quadrature): the mean over the classes of
    each class's expected Dice, the quantity ``θ̂`` estimates with the class set held fixed.
    """

    n_crops: int = 20
    class_crops: tuple[int, ...] = (20, 19, 18, 17, 16, 15, 14, 12, 10, 4, 3, 3, 2, 2)
    crop_sd: float = 0.5
    noise_sd: float = 1.0
    easy_logit: float = 2.5
    hard_logit: float = -3.0
    hard_zero: float = 0.6
    design_seed: int = 123

    def _hard(self) -> np.ndarray:
        return np.asarray(self.class_crops) < 8

    def annotation(self) -> np.ndarray:
        """``(N, K)`` bool: the fixed annotation pattern (nested, seeded crop order)."""
        order = np.random.default_rng(self.design_seed).permutation(self.n_crops)
        annotated = np.zeros((self.n_crops, len(self.class_crops)), dtype=bool)
        for c, k in enumerate(np.minimum(self.class_crops, self.n_crops)):
            annotated[order[:k], c] = True
        return annotated

    def truth(self) -> float:
        """``θ``: the mean over classes of each class's expected Dice."""
        nodes, weights = np.polynomial.hermite_e.hermegauss(101)
        sd = np.hypot(self.crop_sd, self.noise_sd)
        hard = self._hard()
        logit = np.where(hard, self.hard_logit, self.easy_logit)
        mu = (weights * special.expit(logit[:, None] + sd * nodes)).sum(axis=1) / weights.sum()
        return float(np.mean(np.where(hard, 1 - self.hard_zero, 1.0) * mu))

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        """One test set: ``(N, K)`` per-crop Dice, NaN where not annotated."""
        shape = (self.n_crops, len(self.class_crops))
        hard = self._hard()
        logit = np.where(hard, self.hard_logit, self.easy_logit)
        crop = rng.normal(0.0, self.crop_sd, size=(self.n_crops, 1))
        dice = special.expit(logit + crop + rng.normal(0.0, self.noise_sd, size=shape))
        dice = np.where(hard & (rng.random(shape) < self.hard_zero), 0.0, dice)
        return np.where(self.annotation(), dice, np.nan)


Method = Callable[[np.ndarray, int], tuple[float, float, float]]
"""``(values (N, K), repetition) → (estimate, low, high)``."""


def new_interval(values: np.ndarray, repetition: int) -> tuple[float, float, float]:
    result = class_mean_interval(values, 0.95)
    return result.estimate, result.low, result.high


def coverage_study(
    method: Method, synthetic: Synthetic, repetitions: int, seed: int = 7
) -> dict[str, float]:
    """Fractions of repetitions where the truth is inside / below / above the interval, and where
    the estimate is inside its own interval."""
    rng = np.random.default_rng(seed)
    truth = synthetic.truth()
    counts = dict.fromkeys(("coverage", "truth_below", "truth_above", "estimate_inside"), 0)
    for repetition in range(repetitions):
        estimate, low, high = method(synthetic.draw(rng), repetition)
        counts["coverage"] += low <= truth <= high
        counts["truth_below"] += truth < low
        counts["truth_above"] += truth > high
        counts["estimate_inside"] += low <= estimate <= high
    return {name: value / repetitions for name, value in counts.items()}


COVERAGE_SETTINGS = {
    "20 crops": Synthetic(),
    "10 crops, strong crop effect": Synthetic(n_crops=10, crop_sd=1.0, noise_sd=0.7),
}


@pytest.mark.parametrize("name", COVERAGE_SETTINGS)
def test_interval_covers_the_true_mean_dice(name: str) -> None:
    """95 % intervals cover θ in 93-97 % of 3000 seeded repetitions; neither tail misses more than
    4.5 % (2.5 % each is nominal); the estimate is always inside. The crop bootstrap this replaced
    fails it (see ``bench/coverage.py``)."""
    result = coverage_study(new_interval, COVERAGE_SETTINGS[name], repetitions=3000)
    assert 0.93 <= result["coverage"] <= 0.97, result
    assert result["truth_below"] <= 0.045 and result["truth_above"] <= 0.045, result
    assert result["estimate_inside"] == 1.0, result


def test_synthetic_truth_matches_a_large_sample() -> None:
    synthetic = Synthetic()
    rng = np.random.default_rng(0)
    means = [mean_over_classes(synthetic.draw(rng)) for _ in range(4000)]
    assert np.mean(means) == pytest.approx(synthetic.truth(), abs=0.003)


# ------------------------------------------------------------------------------ the interval


def test_one_class_is_the_one_sample_t_interval() -> None:
    x = np.random.default_rng(1).uniform(size=(9, 1))
    result = class_mean_interval(x, 0.9)
    reference = stats.ttest_1samp(x[:, 0], 0.0).confidence_interval(0.9)
    assert (result.low, result.high) == pytest.approx((reference.low, reference.high), rel=1e-12)
    assert result.df == pytest.approx(8) and result.estimate == pytest.approx(x.mean())


def test_crops_annotating_every_class_is_the_t_interval_of_crop_means() -> None:
    # strongly correlated classes: the N crop means are the independent units (df N - 1)
    rng = np.random.default_rng(2)
    x = rng.uniform(size=(7, 1)) + 0.1 * rng.uniform(size=(7, 5))
    result = class_mean_interval(x)
    reference = stats.ttest_1samp(x.mean(axis=1), 0.0).confidence_interval(0.95)
    assert (result.low, result.high) == pytest.approx((reference.low, reference.high), rel=1e-12)


def test_disjoint_crops_give_welch_satterthwaite() -> None:
    # each crop annotates one class: classes are independent, the variance is Σ s_c² / (K² n_c)
    rng = np.random.default_rng(3)
    sizes = (6, 3, 2)
    x = np.full((sum(sizes), 3), np.nan)
    start = 0
    for c, size in enumerate(sizes):
        x[start : start + size, c] = rng.uniform(size=size)
        start += size
    columns = [x[~np.isnan(x[:, c]), c] for c in range(3)]
    v = np.array([col.var(ddof=1) / col.size / 9 for col in columns])
    df = v.sum() ** 2 / np.sum(v**2 / (np.array(sizes) - 1))
    half = stats.t.ppf(0.975, df) * np.sqrt(v.sum())
    estimate = np.mean([col.mean() for col in columns])
    result = class_mean_interval(x)
    assert result.df == pytest.approx(df, rel=1e-10)
    assert (result.low, result.high) == pytest.approx((estimate - half, estimate + half))


def test_shared_crops_variance_is_unbiased() -> None:
    """The variance estimate averages to the true variance of θ̂ over many draws (correlated
    classes, uneven annotation), where ignoring the shared crops underestimates it."""
    synthetic = Synthetic(n_crops=12, crop_sd=1.0, noise_sd=0.5, hard_zero=0.0)
    rng = np.random.default_rng(4)
    draws = [synthetic.draw(rng) for _ in range(3000)]
    estimates = np.array([mean_over_classes(d) for d in draws])
    variances = np.array([class_mean_interval(d).se ** 2 for d in draws])
    assert variances.mean() == pytest.approx(estimates.var(ddof=1), rel=0.08)


def test_class_of_one_crop_uses_the_bound_and_classes_never_annotated_are_left_out() -> None:
    x = np.array([[0.5, 0.2, np.nan], [0.7, np.nan, np.nan], [0.6, np.nan, np.nan]])
    result = class_mean_interval(x)
    assert result.estimate == pytest.approx((0.6 + 0.2) / 2)
    assert result.se**2 == pytest.approx(0.01 / 3 / 4 + 0.25 / 4)
    assert np.isnan(class_mean_interval(x[:1]).low)
    with pytest.raises(ValueError, match="confidence"):
        class_mean_interval(x, 1.0)


def test_mean_and_pooled_values_reproduce_the_aggregates() -> None:
    rng = np.random.default_rng(5)
    counts = rng.integers(0, 50, size=(12, 3, 4)).astype(float)
    counts[0, 2] = 0  # crop 0 does not annotate class 2
    counts[:, 1, :3] = 0  # class 1 empty everywhere: pooled Dice 1
    agg = aggregate_crops(counts)
    for statistic, expected in (("mean", agg.mean.dice), ("pooled", agg.pooled.dice)):
        values = class_values(counts, statistic)
        assert np.isnan(values[0, 2])
        np.testing.assert_allclose(np.nanmean(values, axis=0), expected)
        result = mean_dice_interval(counts, statistic)
        assert result.estimate == pytest.approx(np.mean(expected))
        assert result.low < result.estimate < result.high
    with pytest.raises(ValueError, match="pooled"):
        class_values(rng.random((5, 3)), "pooled")


# ------------------------------------------------------------------------------ paired tests


def naive_sign_flip(a: np.ndarray, b: np.ndarray, statistic: str) -> float:
    """Every one of the 2^N swaps of A and B on the crops, statistic from aggregate_crops."""

    def theta(counts: np.ndarray) -> float:
        agg = aggregate_crops(counts)
        dice = agg.mean.dice if statistic == "mean" else agg.pooled.dice
        return float(np.mean(dice[agg.n_crops > 0]))

    observed = abs(theta(a) - theta(b))
    extreme = 0
    flips = list(itertools.product((False, True), repeat=a.shape[0]))
    for flip in flips:
        swap = np.array(flip)[:, None, None]
        flipped = theta(np.where(swap, b, a)) - theta(np.where(swap, a, b))
        extreme += abs(flipped) >= observed - 1e-12
    return extreme / len(flips)


@pytest.mark.parametrize("statistic", ["mean", "pooled"])
def test_exact_sign_flip_equals_the_naive_enumeration(statistic: str) -> None:
    rng = np.random.default_rng(6)
    a = rng.integers(0, 30, size=(8, 4, 4)).astype(float)
    b = a.copy()
    b[..., 0] = np.maximum(a[..., 0] - rng.integers(0, 6, size=a.shape[:2]), 0)  # B finds less
    b[..., 2] = a[..., 2] + (a[..., 0] - b[..., 0])  # same ground truth: TP + FN kept
    missing = rng.random((8, 4)) < 0.25
    a[missing], b[missing] = 0, 0
    p, exact = sign_flip_p_value(a, b, statistic)
    assert exact
    assert p == pytest.approx(naive_sign_flip(a, b, statistic), abs=1e-12)
    assert p >= smallest_p_value(8) - 1e-15


def test_monte_carlo_flips_are_seeded_and_close_to_exact() -> None:
    rng = np.random.default_rng(7)
    a = rng.uniform(0.3, 0.9, size=(14, 3))
    b = a - 0.03 + rng.normal(0, 0.08, size=a.shape)
    exact, is_exact = sign_flip_p_value(a, b)
    mc, mc_exact = sign_flip_p_value(a, b, n_resamples=4000, seed=1)
    assert is_exact and not mc_exact
    assert mc == sign_flip_p_value(a, b, n_resamples=4000, seed=1)[0]
    assert mc == pytest.approx(exact, abs=0.02)


def test_smallest_p_value_of_two_crops_is_one_half() -> None:
    # the old paired bootstrap reported p = 0.004 from 2 crops; no test can go below 2 / 2^N
    rng = np.random.default_rng(8)
    a = rng.uniform(0.6, 0.9, size=(2, 5))
    p, _ = sign_flip_p_value(a, a - 0.3)
    assert p == 0.5 == smallest_p_value(2)
    assert smallest_p_value(5) > 0.05 > smallest_p_value(6)


def test_paired_comparison_interval_and_test() -> None:
    rng = np.random.default_rng(0)
    base = 0.6 + rng.normal(0, 0.15, size=(40, 1)) + rng.normal(0, 0.05, size=(40, 5))
    a = base + 0.05 + rng.normal(0.0, 0.03, size=base.shape)
    unannotated = rng.random(base.shape) < 0.3
    a[unannotated], base[unannotated] = np.nan, np.nan
    result = paired_comparison(a, base, n_resamples=20000, seed=1)
    assert result.low < 0.05 < result.high and result.low > 0
    assert result.p_value < 0.001 and not result.exact and result.n_crops == 40
    assert result.estimate == pytest.approx(result.estimate_a - result.estimate_b)
    # the crop effect cancels: the paired interval is much narrower than either model's
    single = class_mean_interval(a)
    assert (single.high - single.low) > 2 * (result.high - result.low)
    same = paired_comparison(a, a, n_resamples=500)
    assert same.estimate == 0.0 and same.p_value == 1.0
    with pytest.raises(ValueError, match="same crop x class"):
        paired_comparison(a, np.nan_to_num(base))


def test_holm_against_a_hand_computed_case() -> None:
    # sorted 0.01, 0.02, 0.04 of m = 3: 0.03, max(0.03, 0.04), max(0.04, 0.04)
    assert holm([0.04, 0.01, np.nan, 0.02]) == pytest.approx(
        [0.04, 0.03, np.nan, 0.04], nan_ok=True
    )
    assert holm([0.5, 0.6]) == [1.0, 1.0]


# ------------------------------------------------------------------------------ replicates


@dataclass(frozen=True)
class Crossed:
    """Per-crop scores of a model trained with ``seeds`` seeds on the same crops: crossed random
    effects of known variance, ``x_snc = μ_c + b_n + β_nc + a_s + g_sn + e_snc``, annotated as
    :class:`Synthetic`. The truth is the mean of the ``μ_c``."""

    seeds: int = 3
    n_crops: int = 12
    crop_sd: float = 0.08  # b_n, shared by a crop's classes
    crop_class_sd: float = 0.05  # β_nc
    seed_sd: float = 0.04  # a_s: one training run better than another everywhere
    seed_crop_sd: float = 0.05  # g_sn: a run better on some crops
    noise_sd: float = 0.03  # e_snc

    def annotation(self) -> np.ndarray:
        return Synthetic(n_crops=self.n_crops).annotation()

    def means(self) -> np.ndarray:
        return np.linspace(0.2, 0.9, self.annotation().shape[1])

    def draw(self, rng: np.random.Generator) -> np.ndarray:
        n, k = self.annotation().shape
        s = self.seeds
        x = (
            self.means()[None, None, :]
            + rng.normal(0, self.crop_sd, (1, n, 1))
            + rng.normal(0, self.crop_class_sd, (1, n, k))
            + rng.normal(0, self.seed_sd, (s, 1, 1))
            + rng.normal(0, self.seed_crop_sd, (s, n, 1))
            + rng.normal(0, self.noise_sd, (s, n, k))
        )
        return np.where(self.annotation()[None], x, np.nan)


CROSSED_SETTINGS = {
    "3 seeds, 12 crops": Crossed(),
    "2 seeds, 20 crops, no seed effect": Crossed(seeds=2, n_crops=20, seed_sd=0.0),
    "5 seeds, 12 crops, strong seed effect": Crossed(seeds=5, seed_sd=0.1),
    # one degree of freedom for a seed effect that outweighs the crops' uncertainty
    "2 seeds, 20 crops, strong seed effect": Crossed(seeds=2, n_crops=20, seed_sd=0.1),
}


@pytest.mark.parametrize("name", CROSSED_SETTINGS)
def test_replicate_interval_covers_the_truth_over_seeds_and_crops(name: str) -> None:
    crossed = CROSSED_SETTINGS[name]
    truth = float(crossed.means().mean())
    rng = np.random.default_rng(11)
    repetitions = 2000
    covered = 0
    for _ in range(repetitions):
        result = replicate_mean_interval(crossed.draw(rng))
        covered += result.low <= truth <= result.high
    # Satterthwaite over a difference of mean squares errs on the wide side where the seeds
    # barely matter (the interval is never narrower than the crops-only one); never below 0.93
    assert 0.93 <= covered / repetitions <= 0.985, covered / repetitions


def test_replicate_variance_is_unbiased_and_seeds_matter() -> None:
    crossed = Crossed(seeds=3, n_crops=12, seed_sd=0.08)
    rng = np.random.default_rng(5)
    draws = [crossed.draw(rng) for _ in range(3000)]
    results = [replicate_mean_interval(d) for d in draws]
    empirical = np.var([r.estimate for r in results], ddof=1)
    assert np.mean([r.se**2 for r in results]) == pytest.approx(empirical, rel=0.08)
    # the crops-only interval of the seed-averaged scores ignores the seed effect: too narrow
    crops_only = np.mean([class_mean_interval(d.mean(axis=0)).se ** 2 for d in draws])
    assert crops_only < 0.8 * empirical


def test_one_seed_is_the_crop_interval_and_the_estimate_is_the_mean_of_seeds() -> None:
    draw = Crossed().draw(np.random.default_rng(0))
    assert replicate_mean_interval(draw[:1]) == class_mean_interval(draw[0])
    result = replicate_mean_interval(draw)
    assert result.estimate == pytest.approx(np.mean([mean_over_classes(d) for d in draw]))
    with pytest.raises(ValueError, match="same crop x class"):
        replicate_mean_interval(
            np.stack([draw[0], np.where(np.eye(*draw[0].shape) > 0, np.nan, draw[1])])
        )


# ------------------------------------------------------------------------------ never a point


def random_small_design(rng: np.random.Generator, n_crops: int) -> np.ndarray:
    """``(N, K)`` scores in [0, 1] of 2-5 classes, each annotated by a random 2 to N crops
    (every crop annotating at least one class), NaN where not annotated."""
    k = int(rng.integers(2, 6))
    annotated = np.zeros((n_crops, k), dtype=bool)
    for c in range(k):
        crops = rng.choice(n_crops, size=int(rng.integers(2, n_crops + 1)), replace=False)
        annotated[crops, c] = True
    for n in np.flatnonzero(~annotated.any(axis=1)):
        annotated[n, rng.integers(k)] = True
    return np.where(annotated, rng.beta(2, 2, size=(n_crops, k)), np.nan)


def test_the_smallest_negative_case_gets_the_conservative_interval_not_a_point() -> None:
    # class c on crops 1-3, class d on crops 2-4; their residuals cancel within crops 2 and 3,
    # so the unbiased form is (1/4)(0.01/3 + 0.01/3 - 2 x 0.02/5) < 0: Welch's sum instead
    nan = np.nan
    x = np.array([[0.5, nan], [0.6, 0.4], [0.4, 0.6], [nan, 0.5]])
    result = class_mean_interval(x)
    assert result.conservative
    assert result.se**2 == pytest.approx((0.01 / 3 + 0.01 / 3) / 4)
    assert result.low < 0.5 < result.high
    # a positive unbiased estimate is kept as it is
    assert not class_mean_interval(np.array([[0.5, 0.4], [0.6, 0.7], [0.4, 0.5]])).conservative


@pytest.mark.parametrize("n_crops", [4, 5, 6, 8])
def test_no_interval_of_a_small_design_has_zero_width(n_crops: int) -> None:
    rng = np.random.default_rng(100 + n_crops)
    fallbacks = 0
    for _ in range(1000):
        result = class_mean_interval(random_small_design(rng, n_crops))
        assert result.high - result.low > 0 and result.se > 0
        fallbacks += result.conservative
    # the fallback is exercised here, not just possible
    assert fallbacks > 0


@pytest.mark.parametrize("n_crops", [6, 8])
def test_no_paired_difference_of_a_small_design_has_zero_width(n_crops: int) -> None:
    rng = np.random.default_rng(200 + n_crops)
    fallbacks = 0
    for _ in range(300):
        a = random_small_design(rng, n_crops)
        b = np.where(np.isnan(a), np.nan, rng.beta(2, 2, size=a.shape))
        result = paired_comparison(a, b, statistic="mean", n_resamples=64)
        assert result.high - result.low > 0
        fallbacks += result.conservative
    assert fallbacks > 0


def test_replicate_interval_never_collapses_when_the_interaction_takes_everything() -> None:
    # every seed scores every crop the same except for an interaction that averages out:
    # the crop part minus the interaction is not positive and the seeds agree exactly
    x = np.array(
        [
            [[0.5, 0.5], [0.7, 0.7], [0.3, 0.3], [0.5, 0.5]],
            [[0.7, 0.7], [0.5, 0.5], [0.5, 0.5], [0.3, 0.3]],
        ]
    )
    result = replicate_mean_interval(x)
    assert result.high - result.low > 0
    # the seeds agree exactly (both average 0.5): no seed component beyond the interaction,
    # so the variance is the crops-only one of the seed-averaged scores; its df still count
    # the estimated seed and interaction terms (never more than the crops-only df)
    crops_only = class_mean_interval(x.mean(axis=0))
    assert result.se == pytest.approx(crops_only.se, rel=1e-12)
    assert result.df <= crops_only.df


def test_replicate_interval_is_never_narrower_than_the_crops_only_one() -> None:
    rng = np.random.default_rng(12)
    for crossed in (Crossed(seeds=2, seed_sd=0.0), Crossed(seeds=3, seed_sd=0.1)):
        for _ in range(200):
            draw = crossed.draw(rng)
            assert replicate_mean_interval(draw).se >= class_mean_interval(draw.mean(axis=0)).se


def test_replicate_degrees_of_freedom_count_the_subtracted_interaction() -> None:
    """One class on every crop: the interval is the balanced two-way ANOVA's, computed here from
    the mean squares by naive loops: the crop mean square plus the seed component's ANOVA
    estimate (seed minus interaction mean square), with Satterthwaite over all three."""
    rng = np.random.default_rng(8)
    seeds, n = 3, 9
    x = 0.5 + rng.normal(0, 0.1, (1, n)) + rng.normal(0, 0.05, (seeds, 1))
    x = x + rng.normal(0, 0.05, (seeds, n))
    grand = sum(x[s, i] for s in range(seeds) for i in range(n)) / (seeds * n)
    seed_means = [sum(x[s]) / n for s in range(seeds)]
    crop_means = [sum(x[s, i] for s in range(seeds)) / seeds for i in range(n)]
    ms_crop = seeds * sum((m - grand) ** 2 for m in crop_means) / (n - 1)
    ms_seed = n * sum((m - grand) ** 2 for m in seed_means) / (seeds - 1)
    ms_interaction = sum(
        (x[s, i] - seed_means[s] - crop_means[i] + grand) ** 2
        for s in range(seeds)
        for i in range(n)
    ) / ((seeds - 1) * (n - 1))
    crop, interaction, seed = (ms / (seeds * n) for ms in (ms_crop, ms_interaction, ms_seed))
    assert seed > interaction, "this draw must have a seed component to estimate"
    variance = crop + seed - interaction
    df = variance**2 / (
        crop**2 / (n - 1) + seed**2 / (seeds - 1) + interaction**2 / ((seeds - 1) * (n - 1))
    )
    result = replicate_mean_interval(x[:, :, None])
    assert result.se**2 == pytest.approx(variance, rel=1e-9)
    assert result.df == pytest.approx(df, rel=1e-9)


# ------------------------------------------------------------------------------ never zero width


def test_all_zero_scores_get_the_exact_interval_for_tied_values() -> None:
    """A model scoring Dice 0 on every crop: [0, 1 - (α/2K)^(1/n)] per class, by hand (the
    rule of three's interval: 10 crops, one class, 95 %: 1 - 0.025^(1/10) = 0.3085)."""
    result = class_mean_interval(np.zeros((10, 1)))
    assert result.tied and result.conservative
    assert (result.low, result.high) == pytest.approx((0.0, 1 - 0.025**0.1))
    assert result.low <= result.estimate == 0.0 < result.high
    # two classes of 10 and 4 crops, Bonferroni over the classes: α / (2K) = 0.0125 per side
    x = np.zeros((10, 2))
    x[4:, 1] = np.nan
    result = class_mean_interval(x)
    assert result.high == pytest.approx(((1 - 0.0125**0.1) + (1 - 0.0125**0.25)) / 2)
    # from counts: all-zero Dice, mean and pooled alike
    counts = np.zeros((8, 3, 4))
    counts[..., 2], counts[..., 3] = 50, 1000  # every voxel missed
    for statistic in ("mean", "pooled"):
        interval = mean_dice_interval(counts, statistic)
        assert interval.estimate == 0.0 and interval.high > 0.0 and interval.low == 0.0


def test_a_constant_paired_difference_is_never_a_point_and_holds_its_estimate() -> None:
    """Model A exactly 0.03 above B on every crop and class (values that round differently:
    the estimate used to fall just outside a zero-width interval)."""
    rng = np.random.default_rng(9)
    b = rng.uniform(0.2, 0.7, size=(9, 3))
    a = b + 0.03
    result = paired_comparison(a, b, n_resamples=600)
    assert result.high - result.low > 0.05
    assert result.low <= result.estimate <= result.high
    # the exact bound for tied differences in [-1, 1], 9 crops per class, α / (2 x 3) per side
    share = 1 - (0.05 / 6) ** (1 / 9)
    d = float(np.mean((a - b)[0]))
    assert result.high == pytest.approx(d + (1 - d) * share, abs=1e-9)
    assert result.low == pytest.approx(d - (d + 1) * share, abs=1e-9)


def test_one_crop_per_class_is_never_a_point() -> None:
    """Every class annotated by a single crop: the bound (1/4 for a score, 1 for a difference)
    is each class's variance, known; the interval is wide and holds its estimate."""
    x = np.full((4, 4), np.nan)
    np.fill_diagonal(x, [0.2, 0.4, 0.6, 0.8])
    result = class_mean_interval(x)
    assert result.se == pytest.approx(np.sqrt(4 * 0.25 / 16))
    assert result.estimate == pytest.approx(0.5) and result.low < 0.5 < result.high
    diff = paired_comparison(x, x - 0.1, n_resamples=16)
    assert diff.high - diff.low > 1.0 and diff.low <= diff.estimate <= diff.high


def test_cluster_interval_is_the_t_interval_of_cluster_means() -> None:
    """One class, 5 clusters of 3 crops: CR1 with G - 1 df is the one-sample t-interval of the
    cluster means (scipy); a constant value within every cluster changes nothing."""
    rng = np.random.default_rng(10)
    x = rng.normal(0.5, 0.1, size=(15, 1))
    labels = [f"dataset{n % 5}" for n in range(15)]
    result = class_mean_interval(x, 0.9, clusters=labels)
    means = [x[[n for n in range(15) if n % 5 == g], 0].mean() for g in range(5)]
    reference = stats.ttest_1samp(means, 0.0).confidence_interval(0.9)
    assert (result.low, result.high) == pytest.approx((reference.low, reference.high), rel=1e-12)
    assert result.df == 4 and result.n_clusters == 5
    with pytest.raises(ValueError, match="one cluster label per crop"):
        class_mean_interval(x, clusters=labels[:3])


def test_cluster_sign_flip_is_the_naive_enumeration_of_cluster_flips() -> None:
    rng = np.random.default_rng(11)
    a = rng.uniform(0.3, 0.9, size=(10, 2))
    b = a - 0.04 + rng.normal(0, 0.05, size=a.shape)
    labels = np.arange(10) // 2  # 5 clusters of 2
    observed = abs(mean_over_classes(a) - mean_over_classes(b))
    extreme = 0
    for flip in itertools.product((False, True), repeat=5):
        swap = np.array(flip)[labels][:, None]
        moved = mean_over_classes(np.where(swap, b, a)) - mean_over_classes(np.where(swap, a, b))
        extreme += abs(moved) >= observed - 1e-12
    p, exact = sign_flip_p_value(a, b, clusters=labels)
    assert exact and p == pytest.approx(extreme / 32)
    assert p >= 2 / 32 - 1e-12  # 5 datasets cannot reach 0.05


def test_intervals_given_the_strata_remove_the_strata_differences() -> None:
    """3 strata of 8 crops with very different means: the interval given the strata is the
    one-way ANOVA's (pooled within-stratum variance, N - G df) for one class, by hand."""
    rng = np.random.default_rng(12)
    labels = np.repeat(np.arange(3), 8)
    x = (np.array([0.2, 0.5, 0.8])[labels] + rng.normal(0, 0.05, 24))[:, None]
    result = class_mean_interval(x, strata=labels)
    within = sum(((x[labels == g, 0] - x[labels == g, 0].mean()) ** 2).sum() for g in range(3))
    se = np.sqrt(within / (24 - 3) / 24)
    assert result.se == pytest.approx(se, rel=1e-9) and result.df == 21
    assert result.se < 0.3 * class_mean_interval(x).se


@pytest.mark.slow
def test_reduced_inference_battery_keeps_every_claim_at_five_percent() -> None:
    """The validation battery (bench/inference_battery.py), reduced: 4 designs x 500 experiments
    of the summary's procedure (about 20 s on 2 cores), and the former test of the best in one
    of them. Tolerance: 2.33 Monte Carlo standard errors (one-sided 1 %): FWER at most
    0.05 + 2.33 x sqrt(0.05 x 0.95 / 500) = 0.073; the mean coverage of 95 % intervals over the
    4000 model intervals in [0.93 - 0.008, 0.98 + 0.008], that of the difference interval over
    500 in [0.93 - 0.023, 0.98 + 0.023]; rank sets holding every true rank in at least
    0.95 - 0.023. The former test breaks the FWER bound with unequal spreads (0.13)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    from inference_battery import DESIGNS, REDUCED, run_design

    repetitions = 500
    fwer_limit = 0.05 + 2.33 * np.sqrt(0.05 * 0.95 / repetitions)
    tolerance = 2.33 * np.sqrt(0.95 * 0.05 / repetitions)
    for index, name in enumerate(REDUCED):
        row = run_design(DESIGNS[name], repetitions, procedures=("new",), seed=index)["new"]
        assert row["fwer"] <= fwer_limit, (name, row)
        assert 0.93 - tolerance / np.sqrt(8) <= row["cov_mean"] <= 0.98 + tolerance / np.sqrt(8)
        assert 0.93 - tolerance <= row["cov_diff"] <= 0.98 + tolerance, (name, row)
        assert row["ranks"] >= 0.95 - tolerance, (name, row)
    spreads = DESIGNS["equal means, 4 x sd 0.02 + 4 x 0.15, 12 crops"]
    old = run_design(spreads, 200, resamples=199, procedures=("old",))["old"]
    assert old["fwer"] > 0.05 + 2.33 * np.sqrt(0.05 * 0.95 / 200), old


def test_p_best_draws_whole_clusters() -> None:
    """3 datasets of 2 crops, one class: model A beats B by 0.1 on datasets 0 and 1 and loses by
    0.3 on dataset 2. Drawing 3 datasets with replacement (27 equally likely ordered draws), A
    is best when dataset 2 is drawn at most once and the others make up for it: counted by
    loops, against 20000 resamples (Monte Carlo SE 0.004). Drawing crops would mix the
    datasets' crops and give another share."""
    b = np.array([[0.5], [0.5], [0.6], [0.6], [0.7], [0.7]])
    a = b + np.array([[0.1], [0.1], [0.1], [0.1], [-0.3], [-0.3]])
    labels = np.array(["d0", "d0", "d1", "d1", "d2", "d2"])
    wins = 0
    for draw in itertools.product(range(3), repeat=3):
        gap = sum(0.1 if g < 2 else -0.3 for g in draw)
        wins += gap > 0
    result = rank_sets([a, b], "mean", n_resamples=20000, seed=0, clusters=labels)
    assert result.p_best[0] == pytest.approx(wins / 27, abs=0.015)
    crops = rank_sets([a, b], "mean", n_resamples=20000, seed=0)
    assert abs(crops.p_best[0] - wins / 27) > 0.03
