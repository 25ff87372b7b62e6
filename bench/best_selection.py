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

    bash scripts/env.sh python bench/best_selection.py --quick   # 200 experiments, ~4 min on 2 cores
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from scipy import special

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from cellseg.statistics import compare_with_best, holm, sign_flip_p_value
from test_statistics import identical_models


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repetitions", type=int, default=1000)
    parser.add_argument("--quick", action="store_true", help="200 experiments per cell")
    parser.add_argument("--shift", type=float, default=0.6, help="logit shift of the worse model")
    parser.add_argument("--flips", type=int, default=4096, help="sign flips of the old test")
    parser.add_argument("--permutations", type=int, default=999, help="label permutations")
    args = parser.parse_args(argv)
    repetitions = 200 if args.quick else args.repetitions
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
