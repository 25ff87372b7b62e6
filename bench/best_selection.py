"""Error rate and power of "worse than the best", the best chosen from the same test crops.

Two procedures on the same simulated experiments (8 models, per-crop Dice with shared crop and
class effects, ``tests/test_statistics.py``'s ``identical_models``):

* **before**: the top scorer is the best; each other model gets a sign-flip test against it over
  the crops (:func:`cellseg.statistics.sign_flip_p_value`), Holm over the 7 comparisons;
* **now**: :func:`cellseg.statistics.compare_with_best`, the step-down max-T permutation test
  that exchanges the models' labels within each crop and chooses the best again every time.

Printed per number of crops: the family-wise error (any model called significantly worse at
0.05 when all 8 are identical; nominal 0.05) and the power to call one model worse when its
logits are lower by ``--shift`` (the others identical).

``--study``: the same for a study's groups (6 groups x 3 seeds trained alike, each run with
its own seed effect): before, Holm over two-sided replicate t tests against the top group;
now, the larger of that and :func:`cellseg.statistics.compare_runs_with_best` (as
``cellseg.reporting.study`` reports ``p_vs_best``).

    bash scripts/env.sh python bench/best_selection.py --quick   # 200 experiments, ~4 min on 2 cores
    bash scripts/env.sh python bench/best_selection.py --study --quick   # ~3 min
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import special

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cellseg.statistics import (
    compare_runs_with_best,
    compare_with_best,
    holm,
    mean_over_classes,
    replicate_mean_interval,
    sign_flip_p_value,
)
from test_statistics import identical_groups, identical_models


def holm_against_the_top(models: list[np.ndarray], flips: int, seed: int) -> np.ndarray:
    """``(M,)`` Holm-adjusted sign-flip p-values against the top scorer (NaN for it)."""
    estimates = [np.nanmean(np.nanmean(m, axis=0)) for m in models]
    best = int(np.argmax(estimates))
    others = [m for m in range(len(models)) if m != best]
    raw = [sign_flip_p_value(models[m], models[best], "mean", flips, seed + m)[0] for m in others]
    adjusted = np.full(len(models), np.nan)
    adjusted[others] = holm(raw)
    return adjusted


def worse_model(
    models: list[np.ndarray], shift: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """The same experiment with the last model's logits lower by ``shift`` on every crop."""
    last = models[-1]
    logits = special.logit(np.clip(last, 1e-9, 1 - 1e-9)) - shift
    noise = rng.normal(0, 1e-12, last.shape)  # keeps ties from being exact
    return [*models[:-1], np.where(np.isnan(last), np.nan, special.expit(logits) + noise)]


def study_p_values(groups: list[np.ndarray], permutations: int, seed: int) -> np.ndarray:
    """``(2, M)``: Holm over two-sided replicate t tests against the top group (before), and
    the larger of that and the run permutation test (now); NaN for the top group."""
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
    parser.add_argument("--quick", action="store_true", help="200 experiments per cell")
    parser.add_argument("--shift", type=float, default=0.6, help="logit shift of the worse model")
    parser.add_argument("--flips", type=int, default=4096, help="sign flips of the old test")
    parser.add_argument("--permutations", type=int, default=999, help="label permutations")
    parser.add_argument("--study", action="store_true", help="a study's groups of seeds")
    args = parser.parse_args(argv)
    repetitions = 200 if args.quick else args.repetitions
    if args.study:
        study_rates(repetitions, args.shift, args.permutations)
        return 0
    se = np.sqrt(0.05 * 0.95 / repetitions)
    print(f"{repetitions} experiments per cell, 8 models (Monte Carlo SE of 0.05: {se:.3f})")
    print(
        f"{'crops':>5} {'FWER before':>12} {'FWER now':>9} {'power before':>13} {'power now':>10}"
    )
    for n_crops in (6, 8, 14, 20):
        rng = np.random.default_rng(n_crops)
        counts = np.zeros(4)
        start = time.perf_counter()
        for r in range(repetitions):
            null = identical_models(rng, n_crops)
            alternative = worse_model(null, args.shift, rng)
            for k, models in enumerate((null, alternative)):
                before = holm_against_the_top(models, args.flips, r)
                now = compare_with_best(models, "mean", args.permutations, r).p_adjusted
                if k == 0:  # any model called worse
                    counts[0] += bool(np.nanmin(before) < 0.05)
                    counts[1] += bool(np.nanmin(now) < 0.05)
                else:  # the worse model called worse
                    counts[2] += bool(before[-1] < 0.05)
                    counts[3] += bool(now[-1] < 0.05)
        rates = counts / repetitions
        print(
            f"{n_crops:5d} {rates[0]:12.3f} {rates[1]:9.3f} {rates[2]:13.3f} {rates[3]:10.3f}"
            f"   ({time.perf_counter() - start:.0f} s)",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
