"""Coverage of 95 % intervals of mean Dice on synthetic crops of known truth.

    bash scripts/env.sh python bench/coverage.py [--repetitions 4000] [--quick]

The synthetic test sets are ``tests/test_statistics.py``'s :class:`Synthetic`: per-crop Dice of
known expectation, classes annotated unevenly and nested like CellMap's (some by only 2-4 crops,
which also carry the other classes), a crop effect shared by a crop's classes, hard rare classes
that are missed (Dice 0) more than half the time. The true value is the mean over classes of each
class's expected Dice. For each setting and method it prints the fraction of seeded repetitions
whose interval covers the truth, misses it below / above (2.5 % each is nominal), and contains
its own estimate:

* ``t (cellseg)``: :func:`cellseg.statistics.class_mean_interval`, what the summary reports;
* ``crop bootstrap``: the percentile bootstrap resampling crops that the summary used before
  (a resample's mean runs over the classes it happens to annotate), 2000 resamples;
* ``class-stratified bootstrap``: percentile bootstrap resampling crops within each class
  independently (keeps the class set, loses the correlation of a crop's classes), 2000 resamples.

The same study, smaller, is a test (``tests/test_statistics.py``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cellseg.statistics import class_mean_interval, replicate_mean_interval
from test_statistics import (
    COVERAGE_SETTINGS,
    CROSSED_SETTINGS,
    Crossed,
    Method,
    Synthetic,
    coverage_study,
    new_interval,
)

RESAMPLES = 2000


def crop_bootstrap(values: np.ndarray, repetition: int) -> tuple[float, float, float]:
    """The former ``cellseg.metrics.bootstrap_ci``: resample crops, average the classes present.

    Args:
        values: ``(N, K)`` per-crop Dice, NaN where not annotated.
        repetition: seed of the resampling.
    """
    n = values.shape[0]
    rng = np.random.default_rng(repetition)
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=RESAMPLES).astype(np.float64)
    annotated = ~np.isnan(values)
    sums = weights @ np.where(annotated, values, 0.0)
    counts = weights @ annotated.astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_class = np.where(counts > 0, sums / np.maximum(counts, 1e-300), np.nan)
        boot = np.nanmean(per_class, axis=1)
    estimate = float(np.nanmean(np.nanmean(values, axis=0)))
    low, high = np.nanquantile(boot, [0.025, 0.975])
    return estimate, float(low), float(high)


def stratified_bootstrap(values: np.ndarray, repetition: int) -> tuple[float, float, float]:
    """Percentile bootstrap resampling crops within each class independently.

    Args:
        values: ``(N, K)`` per-crop Dice, NaN where not annotated.
        repetition: seed of the resampling.
    """
    rng = np.random.default_rng(repetition)
    means = np.empty((RESAMPLES, values.shape[1]))
    for c in range(values.shape[1]):
        column = values[~np.isnan(values[:, c]), c]
        means[:, c] = column[rng.integers(0, column.size, (RESAMPLES, column.size))].mean(axis=1)
    estimate = float(np.nanmean(np.nanmean(values, axis=0)))
    low, high = np.quantile(means.mean(axis=1), [0.025, 0.975])
    return estimate, float(low), float(high)


METHODS: dict[str, Method] = {
    "t (cellseg)": new_interval,
    "crop bootstrap": crop_bootstrap,
    "class-stratified bootstrap": stratified_bootstrap,
}

SETTINGS: dict[str, Synthetic] = {
    **COVERAGE_SETTINGS,
    "20 crops, no crop effect": Synthetic(crop_sd=0.0),
    "8 crops": Synthetic(n_crops=8),
    "6 crops, strong crop effect": Synthetic(n_crops=6, crop_sd=1.0, noise_sd=0.7),
    "40 crops": Synthetic(
        n_crops=40, class_crops=(40, 36, 32, 30, 28, 24, 20, 16, 12, 4, 3, 3, 2, 2)
    ),
}


REPLICATE_SETTINGS: dict[str, Crossed] = {
    **CROSSED_SETTINGS,
    "2 seeds, 20 crops": Crossed(seeds=2, n_crops=20),
    "2 seeds, 20 crops, strong seed effect": Crossed(seeds=2, n_crops=20, seed_sd=0.1),
    "3 seeds, 12 crops, strong seed effect": Crossed(seeds=3, seed_sd=0.1),
}


def replicate_coverage(repetitions: int) -> None:
    """Coverage of :func:`replicate_mean_interval` and, as the baseline, of the crops-only
    interval of the seed-averaged scores (which ignores the seeds)."""
    print(f"{'replicates setting':40} {'seeds + crops':>13} {'crops only':>10}")
    for name, crossed in REPLICATE_SETTINGS.items():
        rng = np.random.default_rng(11)
        truth = float(crossed.means().mean())
        both = crops = 0
        for _ in range(repetitions):
            draw = crossed.draw(rng)
            r = replicate_mean_interval(draw)
            both += r.low <= truth <= r.high
            c = class_mean_interval(draw.mean(axis=0))
            crops += c.low <= truth <= c.high
        print(f"{name:40} {both / repetitions:13.3f} {crops / repetitions:10.3f}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=4000)
    parser.add_argument("--quick", action="store_true", help="500 repetitions")
    parser.add_argument(
        "--replicates", action="store_true", help="only the intervals over seeds and crops"
    )
    args = parser.parse_args(argv)
    repetitions = 500 if args.quick else args.repetitions
    se = np.sqrt(0.95 * 0.05 / repetitions)
    print(f"{repetitions} repetitions per cell (Monte Carlo SE of a 0.95 coverage: {se:.3f})")
    if args.replicates:
        replicate_coverage(repetitions)
        return 0
    print(f"{'setting':32} {'method':28} {'coverage':>8} {'below':>6} {'above':>6} {'est in':>6}")
    for name, synthetic in SETTINGS.items():
        for method_name, method in METHODS.items():
            start = time.perf_counter()
            r = coverage_study(method, synthetic, repetitions)
            print(
                f"{name:32} {method_name:28} {r['coverage']:8.3f} {r['truth_below']:6.3f} "
                f"{r['truth_above']:6.3f} {r['estimate_inside']:6.3f}"
                f"   ({time.perf_counter() - start:.0f} s, truth {synthetic.truth():.4f})",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
