"""The columns of one model's row of ``summary.csv``, from its per-crop counts: mean and pooled
Dice with their intervals (:func:`dice_columns`), pooled IoU (:func:`iou_columns`), the CellMap
challenge scorer's columns in both modes (:func:`challenge_columns`), the training columns
(:func:`train_columns`), and the order of the columns (:func:`order_columns`).
:mod:`cellseg.reporting.summary` says what each column means and assembles the rows.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from cellseg.challenge import (
    CORRECTED,
    INSTANCE_CLASSES,
    INSTANCE_SUM_COLUMNS,
    OFFICIAL,
    SCORER_MODES,
    SKIPPED,
    instance_class_scores,
    instance_column_names,
    overall_scores,
)
from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.metrics import Statistic, aggregate_crops
from cellseg.reporting.summary_inputs import SummarySettings, inference_units
from cellseg.statistics import mean_dice_interval

__all__ = [
    "challenge_columns",
    "dice_columns",
    "iou_columns",
    "order_columns",
    "statistic_estimate",
    "train_columns",
]


def statistic_estimate(counts: np.ndarray, statistic: Statistic) -> float:
    agg = aggregate_crops(counts)
    scores = agg.mean.dice if statistic is Statistic.MEAN else agg.pooled.dice
    scores = np.where(agg.n_crops > 0, scores, np.nan)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


def _ci(
    counts: np.ndarray, statistic: Statistic, s: SummarySettings, crops: Sequence[str]
) -> tuple[float, float]:
    """The interval of the statistic (datasets or crops as the units, :func:`inference_units`),
    or NaN with fewer than ``min_crops_for_statistics`` crops. It always holds the estimate of
    :func:`statistic_estimate` (the two computations differ by rounding only)."""
    if counts.shape[0] < s.min_crops_for_statistics:
        return float("nan"), float("nan")
    result = mean_dice_interval(
        counts,
        statistic,
        s.confidence,
        *inference_units(crops, s),
    )
    estimate = statistic_estimate(counts, statistic)
    return min(result.low, estimate), max(result.high, estimate)


def dice_columns(
    counts: np.ndarray, statistic: Statistic, s: SummarySettings, crops: Sequence[str]
) -> dict[str, float]:
    """The Dice columns of one row of ``summary.csv`` from ``(N, 14, 4)`` per-crop counts on
    ``crops``: mean Dice and its CI, pooled Dice (and its CI when models are ranked by it),
    pooled Dice per class (NaN for classes no crop annotates)."""
    agg = aggregate_crops(counts)
    pooled = np.where(agg.n_crops > 0, agg.pooled.dice, np.nan)
    low, high = _ci(counts, Statistic.MEAN, s, crops)
    columns = {
        "mean_dice": statistic_estimate(counts, Statistic.MEAN),
        "mean_dice_ci_low": low,
        "mean_dice_ci_high": high,
        "pooled_dice": float(np.nanmean(pooled)) if np.isfinite(pooled).any() else np.nan,
        **{f"dice_{name}": pooled[c] for c, name in enumerate(CLASSES)},
    }
    if statistic is Statistic.POOLED:
        columns["pooled_dice_ci_low"], columns["pooled_dice_ci_high"] = _ci(
            counts, statistic, s, crops
        )
    return columns


def iou_columns(counts: np.ndarray) -> dict[str, float]:
    """Pooled IoU per class (``iou_<class>``, NaN for classes no crop annotates) and its mean over
    the annotated classes (``pooled_iou``), from ``(N, 14, 4)`` per-crop counts."""
    agg = aggregate_crops(counts)
    pooled = np.where(agg.n_crops > 0, agg.pooled.iou, np.nan)
    return {
        "pooled_iou": float(np.nanmean(pooled)) if np.isfinite(pooled).any() else np.nan,
        **{f"iou_{name}": pooled[c] for c, name in enumerate(CLASSES)},
    }


_CHALLENGE_PREFIX = {OFFICIAL: "challenge_", CORRECTED: "challenge_corrected_"}
"""The summary columns of each scorer mode (:data:`cellseg.challenge.SCORER_MODES`)."""


def challenge_columns(table: pd.DataFrame | None, counts: np.ndarray) -> dict[str, Any]:
    """The ``challenge_*`` (official scorer) and ``challenge_corrected_*`` columns of a model
    (:mod:`cellseg.challenge`): per instance class F1, mean normalised Hausdorff, combined score
    and skipped crops, from the metrics' instance columns of that mode summed over crops (NaN
    without them: an old CSV, whose unprefixed columns were not the official scorer's, or the
    baseline); the semantic part (mean pooled IoU over the non-instance classes annotated), the
    instance part and the overall score (``challenge_score``, ``challenge_corrected_score``).
    """
    iou = iou_columns(counts)
    semantic = [iou[f"iou_{n}"] for n in CLASSES if n not in INSTANCE_CLASSES]
    columns: dict[str, Any] = {}
    for mode in SCORER_MODES:
        columns |= _challenge_mode_columns(table, iou, semantic, mode)
    return columns


def _challenge_mode_columns(
    table: pd.DataFrame | None, iou: Mapping[str, float], semantic: list[float], mode: str
) -> dict[str, Any]:
    """One scorer mode's part of :func:`challenge_columns`."""
    prefix = _CHALLENGE_PREFIX[mode]
    names = instance_column_names(mode)
    sums, status_column = list(names[: len(INSTANCE_SUM_COLUMNS)]), names[-1]
    # both modes' columns are written together; without the corrected ones the CSV predates the
    # official mode and its unprefixed columns hold the corrected numbers
    marker = instance_column_names(CORRECTED)[-1]
    columns: dict[str, Any] = {}
    combined = []
    for name in INSTANCE_CLASSES:
        rows = None if table is None else table[table["class"] == name]
        usable = (
            rows is not None
            and not rows.empty
            and {*sums, marker} <= set(rows.columns)
            and rows[sums].notna().all().all()
        )
        if usable:
            assert rows is not None
            scores = instance_class_scores(*(float(rows[c].sum()) for c in sums))
            status = rows[status_column] if status_column in rows else pd.Series([], dtype=str)
            skipped = int((status == SKIPPED).sum())
        else:
            scores, skipped = (np.nan, np.nan, np.nan), np.nan
        columns[f"{prefix}f1_{name}"] = scores[0]
        columns[f"{prefix}hausdorff_{name}"] = scores[1]
        columns[f"{prefix}combined_{name}"] = scores[2]
        columns[f"{prefix}skipped_crops_{name}"] = skipped
        # a class no crop annotates is left out, as the challenge leaves out absent labels; one
        # annotated but without instance columns (the baseline) makes the instance part unknown
        if math.isfinite(iou[f"iou_{name}"]):
            combined.append(scores[2] if usable else np.nan)
    overall = overall_scores(combined, semantic, mode)
    # no test crop annotates an instance class: the official scorer's combine_scores puts 0 for
    # the missing part and so reports 0 overall for every model, the chance baseline included;
    # that is no measurement, so the overall score is undefined here (the semantic part stays)
    if not combined or any(not math.isfinite(v) for v in combined):
        overall = overall._replace(instance=np.nan, overall=np.nan)
    return {
        f"{prefix}score": overall.overall,
        f"{prefix}semantic": overall.semantic,
        f"{prefix}instance": overall.instance,
        **columns,
    }


def train_columns(train: Mapping[str, Any]) -> dict[str, Any]:
    gpus = int(train.get("gpus", 0) or 0)
    return {
        "preset": train.get("preset"),
        "parameters": train.get("parameters"),
        "epochs_run": train.get("epochs_run"),
        "best_epoch": train.get("best_epoch"),
        "stop_reason": train.get("stop_reason") or "unfinished",
        "train_hours": float(train.get("train_seconds", np.nan)) / 3600,
        "gpus": gpus,
        "gpu_hours": train.get("gpu_hours"),
        "cpu_hours": train.get("cpu_hours"),
        "compute_hours": train.get("gpu_hours") if gpus else train.get("cpu_hours"),
        "compute_unit": "GPU" if gpus else "CPU",
        # a start from weights (training setting init): what it loaded; a scratch run (every
        # demo run) adds no column
        **{
            key: train[key]
            for key in ("init", "init_loaded_fraction", "starts_pretrained")
            if key in train
        },
        # classes annotated in no training crop (cellseg.trained_classes): their dice_<class>
        # stays empty; a run that trained all 14 (every demo run) adds no column
        **(
            {"untrained_classes": " ".join(train["untrained_classes"])}
            if train.get("untrained_classes")
            else {}
        ),
    }


_LEADING = [
    "rank",
    "rank_low",
    "rank_high",
    "p_best",
    "model",
    "architecture",
    "dim",
    "status",
    "preset",
    "parameters",
    "epochs_run",
    "best_epoch",
    "stop_reason",
    "train_hours",
    "gpus",
    "gpu_hours",
    "cpu_hours",
    "compute_hours",
    "compute_unit",
    "inference_seconds",
    "adjustment",
    "n_crops",
    "n_datasets",
    "inference_unit",
    "mean_dice",
    "mean_dice_ci_low",
    "mean_dice_ci_high",
    "pooled_dice",
    "pooled_dice_ci_low",
    "pooled_dice_ci_high",
    "pooled_iou",
    "challenge_score",
    "challenge_semantic",
    "challenge_instance",
    "challenge_corrected_score",
    "challenge_corrected_instance",
    "above_baseline",
    "best_model",
    "diff_to_best",
    "diff_ci_low",
    "diff_ci_high",
    "compared_crops",
    "p_value",
    "p_adjusted",
    "significant",
]


def order_columns(table: pd.DataFrame) -> pd.DataFrame:
    for column in _LEADING[:18]:
        if column not in table:
            table[column] = np.nan
    leading = [c for c in _LEADING if c in table]
    per_class = [
        f"{m}_{name}"
        for m in ("dice", "iou")
        for name in (*CLASSES, *GROUP_NAMES)
        if f"{m}_{name}" in table
    ]
    rest = [c for c in table if c not in leading and c not in per_class]
    table = table[leading + per_class + rest]
    counts = ("rank", "parameters", "epochs_run", "best_epoch", "gpus", "n_crops", "compared_crops")
    for column in counts:
        table[column] = pd.array(table[column], dtype="Float64").round().astype("Int64")
    return table
