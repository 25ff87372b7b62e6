"""Validation battery of the summary's claims: family-wise error, power and coverage, old vs new.

    bash scripts/env.sh python bench/inference_battery.py                # 1000 experiments a design
    bash scripts/env.sh python bench/inference_battery.py --quick        # 200
    bash scripts/env.sh python bench/inference_battery.py --study --quick  # a study's groups

Each design simulates ``M`` models' per-crop Dice ``(N, K)`` on the same test crops with known
truth: ``x_mnc = μ_c + b_n + β_nc + a_g + γ_mg + δ_m + σ_m e_mnc`` with a crop effect ``b_n`` and a
crop x class effect ``β_nc`` shared by the models, a dataset effect ``a_g`` (crops ``dataset/cropN``
of one dataset share it), a model x dataset interaction ``γ_mg``, the model's shift ``δ_m`` and its
own noise of spread ``σ_m`` (normal, or rare failures: ``-0.5`` with probability 0.1 and
``+0.5/9`` otherwise, mean 0, skewed). The truth of model ``m`` is ``mean_c μ_c + δ_m`` over new
datasets (the random effects average out), and, when the data have fewer datasets than
``evaluation.min_datasets_for_clusters``, the mean over *these* datasets (``a_g + γ_mg`` of the
drawn datasets, weighted as the estimate weighs their crops).

Procedures:

* **old**: what the summary did before: intervals with the crops as independent units
  (:func:`cellseg.statistics.class_mean_interval` without clusters), "worse than the best" by the
  step-down permutation of the models' labels within crops (exchangeable models;
  :func:`cellseg.statistics.best.compare_with_best_exchangeable`), rank sets over crops;
* **new**: what it does now: with at least ``--min-datasets`` datasets the datasets are the units
  (cluster-robust intervals with ``G - 1`` df, whole datasets flipped), else the crops, the
  intervals given these datasets (values centred on their dataset's means);
  "worse than the best" by the studentized step-down max-T over all pairs
  (:func:`cellseg.statistics.compare_with_best`); rank sets from the same intervals.

Printed per design and procedure: **FWER**, the share of experiments in which a model whose
truth is the largest is called worse than the best (p_adjusted < 0.05; nominal at most 0.05);
**power**, the share of truly worse models called worse (– when every model is equally good);
**cov mean**, the coverage of the 95 % interval of each model's mean Dice (averaged over models);
**cov diff**, of the 95 % interval of the difference between the first and the last model;
**ranks**, the share of experiments in which every model's rank set holds its true rank
(ties: any rank the tie allows). ``tests/test_statistics.py`` runs a reduced battery.

Wall time (2 cores): the full run 864 s, ``--quick`` about 3 min (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import special

from cellseg.statistics import (
    class_mean_interval,
    compare_runs_with_best,
    compare_with_best,
    holm,
    mean_over_classes,
    rank_sets,
    replicate_mean_interval,
)
from cellseg.statistics.best import compare_with_best_exchangeable

MIN_DATASETS = 6
"""``evaluation.min_datasets_for_clusters``' default."""


@dataclass(frozen=True)
class Design:
    """One simulated comparison (module docstring).

    Attributes:
        spreads: ``σ_m`` of each model (their number is ``M``).
        shifts: ``δ_m`` (default 0: all equally good).
        n_crops: test crops.
        n_classes: classes ``K``.
        datasets: datasets the crops are split over, evenly (0: every crop its own).
        interaction: SD of the model x dataset interaction ``γ_mg``.
        failures: models (indices) whose noise is rare failures instead of normal.
        class_crops: crops annotating each class (nested, like CellMap's), or ``None``: all.
    """

    spreads: tuple[float, ...]
    shifts: tuple[float, ...] = ()
    n_crops: int = 12
    n_classes: int = 6
    datasets: int = 0
    interaction: float = 0.0
    failures: tuple[int, ...] = ()
    class_crops: tuple[int, ...] | None = None

    def annotation(self) -> np.ndarray:
        annotated = np.ones((self.n_crops, self.n_classes), dtype=bool)
        if self.class_crops is not None:
            order = np.random.default_rng(123).permutation(self.n_crops)
            annotated[:] = False
            for c, k in enumerate(self.class_crops):
                annotated[order[: min(k, self.n_crops)], c] = True
        return annotated

    def groups(self) -> np.ndarray:
        if not self.datasets:
            return np.arange(self.n_crops)
        return np.arange(self.n_crops) * self.datasets // self.n_crops

    def shift(self) -> np.ndarray:
        return np.asarray(self.shifts or (0.0,) * len(self.spreads), dtype=float)

    def draw(self, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
        """``(models' (N, K) values, population truths (M,), conditional truths (M,))``."""
        m, n, k = len(self.spreads), self.n_crops, self.n_classes
        annotated = self.annotation()
        groups = self.groups()
        g = int(groups.max()) + 1
        mu = np.linspace(0.45, 0.8, k)
        dataset = rng.normal(0, 0.1 if self.datasets else 0.0, g)
        interaction = rng.normal(0, self.interaction, (m, g))
        shared = mu + rng.normal(0, 0.08, (n, 1)) + rng.normal(0, 0.05, (n, k))
        shared = shared + dataset[groups][:, None]
        models, conditional = [], []
        weights = annotated / (k * annotated.sum(axis=0))  # each crop's weight in θ̂
        crop_weight = weights.sum(axis=1)
        for i, spread in enumerate(self.spreads):
            if i in self.failures:
                noise = np.where(rng.random((n, k)) < 0.1, -0.5, 0.5 / 9)
            else:
                noise = rng.normal(0, spread, (n, k))
            values = shared + interaction[i][groups][:, None] + self.shift()[i] + noise
            models.append(np.where(annotated, values, np.nan))
            effect = dataset[groups] + interaction[i][groups]
            conditional.append(mu.mean() + self.shift()[i] + float(crop_weight @ effect))
        population = mu.mean() + self.shift()
        return models, population, np.asarray(conditional)


@dataclass
class Tally:
    """Counts of one procedure over the experiments of a design."""

    experiments: int = 0
    false_claims: int = 0
    worse_models: int = 0
    worse_found: int = 0
    intervals: int = 0
    covered: int = 0
    differences: int = 0
    diff_covered: int = 0
    ranks_held: int = 0
    seconds: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict[str, float]:
        e = max(self.experiments, 1)
        return {
            "fwer": self.false_claims / e,
            "power": self.worse_found / self.worse_models if self.worse_models else float("nan"),
            "cov_mean": self.covered / max(self.intervals, 1),
            "cov_diff": self.diff_covered / max(self.differences, 1),
            "ranks": self.ranks_held / e,
        }


def true_rank_bounds(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ranks each model may truly hold: ``1 + #{better}`` to ``M - #{worse}``."""
    better = (truth[None, :] > truth[:, None] + 1e-12).sum(axis=1)
    worse = (truth[None, :] < truth[:, None] - 1e-12).sum(axis=1)
    return 1 + better, len(truth) - worse


def bonferroni_rank_sets(models: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The former rank sets: Bonferroni t-intervals of every pairwise difference over crops."""
    m = len(models)
    level = 1 - 0.05 / (m * (m - 1) // 2)
    above = np.zeros((m, m), dtype=bool)
    for i in range(m):
        for j in range(i + 1, m):
            interval = class_mean_interval(models[i] - models[j], level, 1.0)
            above[i, j], above[j, i] = interval.low > 0, interval.high < 0
    return 1 + above.sum(axis=0), m - above.sum(axis=1)


def run_procedure(
    name: str,
    models: list[np.ndarray],
    truth: np.ndarray,
    clusters: np.ndarray | None,
    tally: Tally,
    seed: int,
    resamples: int,
    strata: np.ndarray | None = None,
) -> None:
    """One experiment of one procedure, counted into ``tally``."""
    start = time.perf_counter()
    if name == "old":
        p = compare_with_best_exchangeable(models, "mean", resamples, seed).p_adjusted
        low_rank, high_rank = bonferroni_rank_sets(models)
    else:
        comparison = compare_with_best(models, "mean", resamples, seed, clusters, strata)
        p = comparison.p_adjusted
        ranks = rank_sets(models, "mean", 0.95, 20, seed, clusters, comparison)
        low_rank, high_rank = ranks.low, ranks.high
    top = truth >= truth.max() - 1e-12
    claimed = np.nan_to_num(p, nan=1.0) < 0.05
    tally.false_claims += bool((claimed & top).any())
    tally.worse_models += int((~top).sum())
    tally.worse_found += int((claimed & ~top).sum())
    for m, values in enumerate(models):
        interval = class_mean_interval(values, 0.95, clusters=clusters, strata=strata)
        tally.intervals += 1
        tally.covered += interval.low <= truth[m] <= interval.high
    diff = class_mean_interval(models[0] - models[-1], 0.95, 1.0, clusters, strata)
    tally.differences += 1
    tally.diff_covered += diff.low <= truth[0] - truth[-1] <= diff.high
    low, high = true_rank_bounds(truth)
    tally.ranks_held += bool(((low_rank <= low) & (high_rank >= high)).all())
    tally.experiments += 1
    tally.seconds += time.perf_counter() - start


def run_design(
    design: Design,
    repetitions: int,
    resamples: int = 999,
    min_datasets: int = MIN_DATASETS,
    procedures: tuple[str, ...] = ("old", "new"),
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``{procedure: {fwer, power, cov_mean, cov_diff, ranks}}`` over ``repetitions``."""
    rng = np.random.default_rng(seed)
    tallies = {name: Tally() for name in procedures}
    groups = design.groups()
    clustered = design.datasets >= min_datasets
    for repetition in range(repetitions):
        models, population, conditional = design.draw(rng)
        # the new procedure's target: new datasets with enough of them, else these datasets
        new_truth = population if (clustered or not design.datasets) else conditional
        for name in procedures:
            truth = population if name == "old" else new_truth
            clusters = groups if (name == "new" and clustered) else None
            # too few datasets: the new intervals are given these datasets
            strata = groups if (name == "new" and design.datasets and not clustered) else None
            run_procedure(
                name, models, truth, clusters, tallies[name], repetition, resamples, strata
            )
    return {name: tally.row() for name, tally in tallies.items()}


SPREADS_4_4 = (0.02,) * 4 + (0.15,) * 4
DESIGNS: dict[str, Design] = {
    "identical models, 12 crops": Design(spreads=(0.05,) * 8),
    "equal means, 4 x sd 0.02 + 4 x 0.15, 12 crops": Design(spreads=SPREADS_4_4),
    "equal means, 7 x sd 0.02 + 1 x 0.25, 12 crops": Design(spreads=(0.02,) * 7 + (0.25,)),
    "rare failures (4 models), 12 crops": Design(spreads=(0.03,) * 8, failures=(4, 5, 6, 7)),
    "partial null: 2 tied best, 6 worse, 12 crops": Design(
        spreads=(0.02, 0.15) * 4, shifts=(0.0, 0.0, -0.03, -0.05, -0.07, -0.09, -0.11, -0.13)
    ),
    "6 datasets x 5 crops, model x dataset": Design(
        spreads=(0.03,) * 8, n_crops=30, datasets=6, interaction=0.05
    ),
    "6 datasets x 5 crops, one model worse": Design(
        spreads=(0.03,) * 8,
        n_crops=30,
        datasets=6,
        interaction=0.05,
        shifts=(0.0,) * 7 + (-0.15,),
    ),
    "6 datasets x 5 crops, rare failures": Design(
        spreads=(0.03,) * 8, n_crops=30, datasets=6, interaction=0.02, failures=(4, 5, 6, 7)
    ),
    "3 datasets x 8 crops (these datasets)": Design(
        spreads=(0.03,) * 8,
        n_crops=24,
        datasets=3,
        interaction=0.05,
        shifts=(0.0,) * 7 + (-0.05,),
    ),
    "6 crops, unequal spreads": Design(spreads=SPREADS_4_4, n_crops=6),
    "40 crops, 14 classes, unequal spreads": Design(spreads=SPREADS_4_4, n_crops=40, n_classes=14),
    "classes of 2-20 crops, 20 crops": Design(
        spreads=SPREADS_4_4,
        n_crops=20,
        n_classes=14,
        class_crops=(20, 19, 18, 17, 16, 15, 14, 12, 10, 4, 3, 3, 2, 2),
        shifts=(0.0,) * 7 + (-0.1,),
    ),
}

REDUCED = (
    "equal means, 4 x sd 0.02 + 4 x 0.15, 12 crops",
    "rare failures (4 models), 12 crops",
    "6 datasets x 5 crops, model x dataset",
    "classes of 2-20 crops, 20 crops",
)
"""The designs of the reduced battery the test suite runs."""


# ------------------------------------------------------------------------------ a study's groups


def identical_groups(
    rng: np.random.Generator, n_crops: int, groups: int = 6, seeds: int = 3
) -> list[np.ndarray]:
    """``(S, N, 6)`` per-seed per-crop Dice of study groups trained alike: crop and class effects
    shared by every run, each run's own seed effect and noise."""
    annotated = rng.random((n_crops, 6)) < 0.7
    annotated[:2] = True
    shared = np.linspace(-1, 1.5, 6)[None] + rng.normal(0, 0.8, (n_crops, 1))
    return [
        np.where(
            annotated,
            special.expit(
                shared + rng.normal(0, 0.3, (seeds, 1, 1)) + rng.normal(0, 0.6, (seeds, n_crops, 6))
            ),
            np.nan,
        )
        for _ in range(groups)
    ]


def study_p_values(groups: list[np.ndarray], permutations: int, seed: int) -> np.ndarray:
    """``(2, M)``: Holm over two-sided replicate t tests against the top group (before), and
    the larger of that and the run permutation test (now, as ``study.csv``'s ``p_vs_best``)."""
    from scipy import stats

    scores = np.array([[mean_over_classes(run) for run in group] for group in groups])
    best = int(np.argmax(scores.mean(axis=1)))
    others = [g for g in range(len(groups)) if g != best]
    raw = []
    for g in others:
        interval = replicate_mean_interval(groups[g] - groups[best], bound=1.0)
        raw.append(2 * stats.t.sf(abs(interval.estimate) / interval.se, interval.df))
    before = np.full(len(groups), np.nan)
    before[others] = holm(raw)
    selection = compare_runs_with_best(scores, permutations, seed).p_adjusted
    return np.stack([before, np.fmax(before, selection)])


def study_rates(repetitions: int, shift: float, permutations: int) -> None:
    """FWER and power of the study's ``p_vs_best`` before and now, per number of crops."""
    print(f"{repetitions} experiments per cell, 6 groups x 3 seeds")
    print(
        f"{'crops':>5} {'FWER before':>12} {'FWER now':>9} {'power before':>13} {'power now':>10}"
    )
    for n_crops in (6, 8, 14, 20):
        rng = np.random.default_rng(100 + n_crops)
        counts = np.zeros(4)
        for r in range(repetitions):
            null = identical_groups(rng, n_crops)
            worse = null[-1]
            logits = special.logit(np.clip(worse, 1e-9, 1 - 1e-9)) - shift
            alternative = [*null[:-1], np.where(np.isnan(worse), np.nan, special.expit(logits))]
            for k, groups in enumerate((null, alternative)):
                before, now = study_p_values(groups, permutations, r)
                if k == 0:
                    counts[0] += bool(np.nanmin(before) < 0.05)
                    counts[1] += bool(np.nanmin(now) < 0.05)
                else:
                    counts[2] += bool(before[-1] < 0.05)
                    counts[3] += bool(now[-1] < 0.05)
        rates = counts / repetitions
        print(
            f"{n_crops:5d} {rates[0]:12.3f} {rates[1]:9.3f} {rates[2]:13.3f} {rates[3]:10.3f}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 experiments per design")
    parser.add_argument("--resamples", type=int, default=999, help="flips / permutations")
    parser.add_argument("--min-datasets", type=int, default=MIN_DATASETS)
    parser.add_argument("--design", action="append", help="only these designs (repeatable)")
    parser.add_argument("--study", action="store_true", help="a study's groups of seeds")
    parser.add_argument("--shift", type=float, default=0.6, help="--study: logit shift")
    args = parser.parse_args(argv)
    repetitions = 200 if args.quick else args.repetitions
    if args.study:
        study_rates(repetitions, args.shift, args.resamples)
        return 0
    se = np.sqrt(0.05 * 0.95 / repetitions)
    print(f"{repetitions} experiments per design (Monte Carlo SE of a 0.05 FWER: {se:.3f})")
    print(
        f"{'design':48} {'proc':4} {'FWER':>6} {'power':>6} {'cov mean':>8} {'cov diff':>8} "
        f"{'ranks':>6}"
    )
    start = time.perf_counter()
    for index, (name, design) in enumerate(DESIGNS.items()):
        if args.design and name not in args.design:
            continue
        rows = run_design(design, repetitions, args.resamples, args.min_datasets, seed=index)
        for procedure, r in rows.items():
            power = "–" if np.isnan(r["power"]) else f"{r['power']:.3f}"
            print(
                f"{name:48} {procedure:4} {r['fwer']:6.3f} {power:>6} {r['cov_mean']:8.3f} "
                f"{r['cov_diff']:8.3f} {r['ranks']:6.3f}",
                flush=True,
            )
    print(f"wall time {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
