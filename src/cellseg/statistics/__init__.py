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
interval is symmetric, so the estimate is always inside it; when every class's values are all
equal there is no spread to estimate, and the interval is the exact one for tied bounded values
(:func:`~cellseg.statistics.intervals.tie_interval`): never a point. Its coverage on synthetic
data of known truth (6-40 crops, classes annotated by 2-40 crops nested like CellMap's, shared
crop effects, zero-inflated hard classes) is measured by ``bench/coverage.py``
(docs/benchmarks.md), and ``tests/test_statistics.py`` requires 0.93-0.97 in two of its
settings.

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
same data test every pair of models at once, a studentized step-down max-T of joint sign flips
and a bootstrap-t that must agree (:func:`compare_with_best`; valid whatever the models'
spreads, no exchangeability assumed), or permute training runs (:func:`compare_runs_with_best`);
:func:`rank_sets` says how firm a ranking is, from the same pairwise tests.

**Units.** Crops of one dataset (one cell, one preparation) are not independent. Every interval
and test takes an optional ``clusters`` label per crop (its dataset): the clusters are then the
units (cluster-robust variance with ``G - 1`` df, flips and resamples of whole clusters) and the
target is new clusters like these; ``strata`` instead keeps the crops as the units and makes the
target these strata (:func:`class_mean_interval`). ``bench/inference_battery.py`` measures the
family-wise error, power and coverage of both against the former procedures.

The package's modules: :mod:`~cellseg.statistics.intervals` (per-crop values, the intervals and
their variance estimators), :mod:`~cellseg.statistics.paired` (paired tests, Holm) and
:mod:`~cellseg.statistics.best` (comparisons with a best chosen from the data, rank sets); every
public name is importable from ``cellseg.statistics``.
"""

from __future__ import annotations

from cellseg.statistics.best import (
    BestComparison,
    RankSets,
    compare_runs_with_best,
    compare_with_best,
    rank_sets,
)
from cellseg.statistics.intervals import (
    SCORE_VARIANCE_BOUND,
    Interval,
    class_mean_interval,
    class_values,
    cluster_labels,
    dataset_of,
    mean_dice_interval,
    mean_over_classes,
    replicate_mean_interval,
)
from cellseg.statistics.paired import (
    DEFAULT_PERMUTATIONS,
    PairedComparison,
    holm,
    paired_comparison,
    sign_flip_p_value,
    smallest_p_value,
)

__all__ = [
    "DEFAULT_PERMUTATIONS",
    "SCORE_VARIANCE_BOUND",
    "BestComparison",
    "Interval",
    "PairedComparison",
    "RankSets",
    "class_mean_interval",
    "class_values",
    "cluster_labels",
    "compare_runs_with_best",
    "compare_with_best",
    "dataset_of",
    "holm",
    "mean_dice_interval",
    "mean_over_classes",
    "paired_comparison",
    "rank_sets",
    "replicate_mean_interval",
    "sign_flip_p_value",
    "smallest_p_value",
]
