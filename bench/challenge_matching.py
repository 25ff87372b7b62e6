"""Time the challenge scorer's instance matching: OR-Tools' min-cost flow (now) against
``scipy.optimize.linear_sum_assignment`` on the same integer worths (before).

    bash scripts/env.sh python bench/challenge_matching.py            # 256^3, 100 true instances
    bash scripts/env.sh python bench/challenge_matching.py --quick    # 96^3, a few seconds

A synthetic crop: ``--truth`` balls (radius 8-14 voxels) at random places, each predicted as the
same ball shifted by up to 3 voxels, plus as many small balls (radius 2-5) scattered at random
(pieces that touch merge into one component: 175 for 100 true instances at 256^3). The
overlapping pairs and their IoU are computed once (:func:`cellseg.challenge._iou_pairs`); each matcher then runs on them,
timed as the median of interleaved repetitions. Also timed: the same crop with the true ids
spread over ``1 .. 2^20`` (the flow then has a node for every id up to the largest, as the
official scorer's), and one whole :func:`cellseg.challenge.score_instance_modes` call (both
modes) for scale.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
from scipy.optimize import linear_sum_assignment

from cellseg import challenge


def balls(shape: tuple[int, ...], centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """int32 labels ``1..n`` of balls (later ones overwrite earlier ones where they meet)."""
    out = np.zeros(shape, np.int32)
    for k, (c, r) in enumerate(zip(centres, radii, strict=True), 1):
        lo = np.maximum(c - r, 0)
        hi = np.minimum(c + r + 1, shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grid = np.ogrid[box]
        inside = sum((g - ci) ** 2 for g, ci in zip(grid, c, strict=True)) <= r**2
        out[box][inside] = k
    return out


def make_crop(size: int, n_truth: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(truth ids, prediction mask)`` of one ``size^3`` crop."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    centres = rng.integers(14, size - 14, size=(n_truth, 3))
    truth = balls(shape, centres, rng.integers(8, 15, size=n_truth))
    shifted = centres + rng.integers(-3, 4, size=centres.shape)
    pred = balls(shape, shifted, rng.integers(8, 15, size=n_truth)) > 0
    specks = rng.integers(5, size - 5, size=(n_truth, 3))
    pred |= balls(shape, specks, rng.integers(2, 6, size=n_truth)) > 0
    return truth, pred


def lsa_pairs(rows: np.ndarray, cols: np.ndarray, iou: np.ndarray) -> dict[int, int]:
    """Before: the worth maximised by ``linear_sum_assignment`` on a dense matrix over the
    instances that overlap something."""
    truth_ids, r = np.unique(rows, return_inverse=True)
    pred_ids, c = np.unique(cols, return_inverse=True)
    weight = np.zeros((truth_ids.size, pred_ids.size))
    weight[r, c] = challenge.matching_weights(iou)
    assigned_r, assigned_c = linear_sum_assignment(weight, maximize=True)
    return {
        int(pred_ids[j]): int(truth_ids[i])
        for i, j in zip(assigned_r, assigned_c, strict=True)
        if weight[i, j] > 0
    }


def median_times(runs: dict[str, Callable[[], object]], repetitions: int) -> dict[str, float]:
    """Median wall seconds of each callable, run in turn each repetition."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repetitions):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--truth", type=int, default=100)
    parser.add_argument("--repetitions", type=int, default=7)
    parser.add_argument("--quick", action="store_true", help="96^3, 30 true instances")
    args = parser.parse_args()
    if args.quick:
        args.size, args.truth, args.repetitions = 96, 30, 3
    truth, pred = make_crop(args.size, args.truth)
    labels, n_pred = challenge.connected_components(pred)
    n_truth = int(truth.max())
    rows, cols, iou = challenge._iou_pairs(truth, labels, n_truth, n_pred)
    print(f"crop {args.size}^3: {len(np.unique(truth)) - 1} true instances, {n_pred} predicted "
          f"components, {rows.size} overlapping pairs")  # fmt: skip

    rng = np.random.default_rng(1)
    spread = np.zeros(n_truth + 1, np.int64)
    spread[1:] = np.sort(rng.choice(np.arange(1, 2**20 + 1), size=n_truth, replace=False))
    spread_rows, largest = spread[rows], int(spread[-1])
    runs = {
        "linear_sum_assignment (before)": lambda: lsa_pairs(rows, cols, iou),
        "min-cost flow (now)": lambda: challenge._match_pairs(rows, cols, iou, n_truth, n_pred),
        f"min-cost flow, ids up to {largest}": lambda: challenge._match_pairs(
            spread_rows, cols, iou, largest, n_pred
        ),
    }
    before, now = (
        lsa_pairs(rows, cols, iou),
        challenge._match_pairs(rows, cols, iou, n_truth, n_pred),
    )
    worth = dict(
        zip(
            zip(rows.tolist(), cols.tolist(), strict=True),
            challenge.matching_weights(iou).tolist(),
            strict=True,
        )
    )
    total = {
        name: sum(worth[t, p] for p, t in m.items())
        for name, m in (("before", before), ("now", now))
    }
    print(f"summed worth: before {total['before']}, now {total['now']}; "
          f"matchings identical: {before == now}")  # fmt: skip
    for name, seconds in median_times(runs, args.repetitions).items():
        print(f"{name:>40}: {seconds * 1e3:9.2f} ms (median of {args.repetitions})")
    start = time.perf_counter()
    challenge.score_instance_modes(truth, pred, (8.0, 8.0, 8.0))
    print(f"{'score_instance_modes (whole crop)':>40}: {time.perf_counter() - start:9.2f} s")


if __name__ == "__main__":
    main()
