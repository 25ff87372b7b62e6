"""The comparison of the trained models: ``summary.csv`` and ``summary.md``.

Inputs are the per-model metrics CSVs of :mod:`cellseg.evaluation` (one row per crop × annotated
class), the trainers' ``train_summary.json`` and the training prior (``class_frequencies.json``).
The statistics are :mod:`cellseg.statistics`; the figures :mod:`cellseg.figures`.

What is compared (all over the held-out crops, one adjustment mode):

* **mean Dice**: per class, the mean of per-crop Dice over the crops annotating it; then the mean
  over the classes any crop annotates. Its CI is a t-interval over crops with the class set held
  fixed (:func:`cellseg.statistics.mean_dice_interval`; coverage checked on synthetic data).
* **pooled Dice**: per class, the Dice of ``ΣTP, ΣFP, ΣFN`` over those crops (as the CellMap
  challenge scores); ``dice_<class>`` columns hold it per class, ``pooled_dice`` its mean over
  classes.
* **pooled IoU**: per class, the IoU of ``ΣTP, ΣFP, ΣFN`` over crops (``iou_<class>``), and its
  mean over classes (``pooled_iou``); the challenge reports IoU.
* **challenge-style score on our test crops** (``challenge_style_*`` columns; not a leaderboard
  number): the CellMap challenge's arithmetic (:mod:`cellseg.challenge`) applied to our crops and
  classes: pooled IoU per semantic class; for the instance class ``nuc``, F1 of one-to-one
  matched instances and the mean normalised Hausdorff distance pooled over crops, combined as
  ``sqrt(F1 × Hausdorff)``; overall ``sqrt(mean instance × mean semantic)``.
* **difference to the best**: the model's statistic minus the best model's on the crops both were
  evaluated on, with a t-interval and an exact sign-flip permutation p-value over crops
  (:func:`cellseg.statistics.paired_comparison`), Holm-adjusted over the comparisons.
* **winner per class**: the model with the best pooled Dice of the class is named the winner only
  when a sign-flip test over the crops annotating the class (against the runner-up, Holm-adjusted
  over the classes) is significant; otherwise the class is a tie.
* **too few crops**: with fewer test crops than ``min_crops_for_statistics`` there is no CI and no
  p-value (an exact test over ``N`` crops cannot go below ``p = 2/2^N``), and ``summary.md`` says so.
* **baseline (prior)**: a predictor that ignores the image and marks each voxel of class ``c``
  positive independently with probability ``f_c``, the class's training prior. Its row holds the
  *expected* counts on each crop: with ``P`` positive of ``N`` annotated voxels,
  ``TP = f P``, ``FP = f (N - P)``, ``FN = (1 - f) P``, ``TN = (1 - f)(N - P)``. It is the chance
  level of an uninformed predictor that knows how common each class is: matching the prior's
  rate is the best an image-blind random guesser can do without knowing each crop's content, so a
  model whose CI lies above it has learned something from the image. (Predicting nothing scores
  1 on every empty crop × class and 0 elsewhere; ``summary.md`` reports that number too, since
  the empty = 1 convention makes it non-zero.)

Empty convention (SPEC §8): a class whose prediction and ground truth are both empty in a crop
scores 1; ``summary.md`` says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg.challenge import (
    CHALLENGE_SOURCE,
    INSTANCE_CLASSES,
    instance_class_scores,
    overall_scores,
)
from cellseg.classes import CLASS_INDEX, CLASSES, NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.io import atomic_path, write_text_atomic
from cellseg.metrics import COUNT_NAMES, Statistic, aggregate_crops
from cellseg.statistics import (
    DEFAULT_PERMUTATIONS,
    PairedComparison,
    class_values,
    holm,
    mean_dice_interval,
    mean_over_classes,
    paired_comparison,
    replicate_mean_interval,
    sign_flip_p_value,
    smallest_p_value,
)
from cellseg.training.settings import Run

__all__ = [
    "BASELINE",
    "SUMMARY_FIGURES",
    "Summary",
    "SummarySettings",
    "expected_models",
    "load_metrics",
    "make_summary",
    "metric_counts",
    "prior_baseline_counts",
    "summarize",
    "summary_markdown",
    "write_summary",
]

BASELINE = "baseline (prior)"
"""The ``model`` of the baseline row."""

SUMMARY_FIGURES: tuple[str, ...] = (
    "dice_heatmap.png",
    "mean_dice.png",
    "pareto.png",
    "dim_comparison.png",
)
"""File names of the summary figures, in ``results/figures/summary/`` (:mod:`cellseg.figures`)."""


def expected_models() -> list[str]:
    """The ``{model}_{dim}`` keys of every registered model (the 8 of the comparison)."""
    from cellseg.models import list_models

    return [f"{name}_{dim}" for name, dim in list_models()]


@dataclass(frozen=True)
class SummarySettings:
    """How models are compared (keys of the config's ``evaluation`` section).

    Attributes:
        adjustment: the metrics' adjustment mode to compare (``train`` / ``none``); ``None``:
            the first mode of each metrics CSV (the evaluation's primary one).
        rank_by: ``mean`` (mean over crops) or ``pooled`` Dice: the statistic models are ranked,
            given a CI and compared by.
        confidence: CI level.
        significance: Holm-adjusted p-value below which a difference is called significant.
        min_crops_for_statistics: fewest crops (shared crops for a comparison, crops annotating
            the class for a winner) with which a CI or a p-value is reported. Default 6: the
            smallest ``N`` whose exact sign-flip test can reach ``p < 0.05`` (``2/2^6 = 0.031``).
        permutation_resamples: sign flips of the paired tests: all ``2^N`` when that is at most
            this many (``2^16``: exact up to 16 crops), else a Monte Carlo sample of this many.
        permutation_seed: seed of the Monte Carlo flips.
    """

    adjustment: str | None = None
    rank_by: str = "mean"
    confidence: float = 0.95
    significance: float = 0.05
    min_crops_for_statistics: int = 6
    permutation_resamples: int = DEFAULT_PERMUTATIONS
    permutation_seed: int = 0

    def __post_init__(self) -> None:
        Statistic(self.rank_by)
        if self.permutation_resamples < 1:
            raise CellsegError("evaluation.permutation_resamples must be >= 1")
        if self.min_crops_for_statistics < 2:
            raise CellsegError("evaluation.min_crops_for_statistics must be >= 2")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> SummarySettings:
        """From the ``evaluation`` section; ``adjustment`` is its first ``adjustment_modes``."""
        section = dict(section or {})
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in section.items() if k in names}
        modes = section.get("adjustment_modes") or []
        values.setdefault("adjustment", modes[0] if modes else None)
        return cls(**values)


# ------------------------------------------------------------------------------ loading


def load_metrics(path: Path | str, adjustment: str | None = None) -> tuple[pd.DataFrame, str]:
    """Read a metrics CSV and keep one adjustment mode.

    Args:
        path: a CSV written by :func:`cellseg.evaluation.evaluate_checkpoint`.
        adjustment: the mode to keep; ``None``: the first in the file.

    Raises:
        CellsegError: unreadable file, missing columns, or the mode is not in the file.

    Returns:
        ``(rows of that mode, mode)``.
    """
    path = Path(path)
    try:
        table = pd.read_csv(path)
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise CellsegError(f"{path}: not a readable metrics CSV ({error})") from None
    missing = {"crop", "class", *COUNT_NAMES, "adjustment"} - set(table.columns)
    if missing:
        raise CellsegError(
            f"{path}: missing column(s) {', '.join(sorted(missing))}; rerun the evaluate rule"
        )
    modes = list(dict.fromkeys(table["adjustment"]))
    if not modes:
        return table, adjustment or "train"
    mode = adjustment or modes[0]
    if mode not in modes:
        raise CellsegError(
            f"{path}: no rows for adjustment {mode!r} (has {', '.join(modes)}); add it to "
            "evaluation.adjustment_modes or choose another"
        )
    return table[table["adjustment"] == mode].reset_index(drop=True), mode


def metric_counts(table: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Per-crop counts of a metrics table.

    Returns:
        ``(crops, counts)``: the ``N`` crop names (sorted) and ``(N, 14, 4)`` counts in
        ``COUNT_NAMES`` order, zero for classes a crop does not annotate.
    """
    crops = sorted(set(table["crop"]))
    index = {crop: i for i, crop in enumerate(crops)}
    counts = np.zeros((len(crops), NUM_CLASSES, 4), dtype=np.float64)
    rows = table["crop"].map(index).to_numpy()
    classes = table["class"].map(CLASS_INDEX).to_numpy()
    if np.isnan(classes.astype(float)).any():
        unknown = sorted(set(table["class"]) - set(CLASSES))
        raise CellsegError(f"metrics name unknown class(es) {unknown}")
    counts[rows, classes.astype(int)] = table[list(COUNT_NAMES)].to_numpy(dtype=np.float64)
    return crops, counts


def prior_baseline_counts(counts: np.ndarray, prior: Sequence[float]) -> np.ndarray:
    """Expected counts of the image-blind predictor that marks class ``c`` with probability ``f_c``.

    Args:
        counts: ``(N, C, 4)`` counts of any model on the crops (only the ground truth,
            ``P = TP + FN`` and ``N = TP + FP + FN + TN``, is used).
        prior: ``(C,)`` class priors ``f_c`` (positive / annotated voxels of the training crops).

    Returns:
        ``(N, C, 4)`` float64: ``f P, f (N - P), (1 - f) P, (1 - f)(N - P)``.
    """
    f = np.asarray(prior, dtype=np.float64)[None, :]
    positive = counts[..., 0] + counts[..., 2]
    negative = counts.sum(axis=-1) - positive
    return np.stack((f * positive, f * negative, (1 - f) * positive, (1 - f) * negative), axis=-1)


def _read_json(path: Path | str | None) -> dict[str, Any] | None:
    if path is None or not Path(path).is_file():
        return None
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CellsegError(f"{path}: not a readable train summary ({error})") from None


# ------------------------------------------------------------------------------ the summary


@dataclass
class Summary:
    """The comparison: ``table`` is ``summary.csv``; the rest feeds ``summary.md``.

    Attributes:
        table: one row per model, ranked, plus the baseline row last.
        winners: one row per class: the leader by pooled Dice, the runner-up, the paired test
            between them and the ``winner`` (the leader when significant, else ``tie``).
        notes: one line per failed, not converged or missing model.
        missing: expected models with no results.
        adjustment: the adjustment mode compared.
        settings: the settings used.
        n_crops: crops evaluated (union over models).
        empty_score: mean Dice of a predictor that predicts nothing (``rank_by`` statistic).
        counts: ``{model}_{dim}`` → ``(crops, (N, 14, 4) counts)`` of each evaluated model.
    """

    table: pd.DataFrame
    winners: pd.DataFrame
    notes: list[str]
    missing: list[str]
    adjustment: str
    settings: SummarySettings
    n_crops: int
    empty_score: float = float("nan")
    counts: dict[str, tuple[list[str], np.ndarray]] = field(default_factory=dict)


@dataclass
class _Model:
    """One configured model while summarising: its row and, when evaluated, its counts."""

    row: dict[str, Any]
    crops: list[str] = field(default_factory=list)
    counts: np.ndarray | None = None
    metrics: pd.DataFrame | None = None
    note: str = ""


def _statistic_estimate(counts: np.ndarray, statistic: Statistic) -> float:
    agg = aggregate_crops(counts)
    scores = agg.mean.dice if statistic is Statistic.MEAN else agg.pooled.dice
    scores = np.where(agg.n_crops > 0, scores, np.nan)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


def _ci(counts: np.ndarray, statistic: Statistic, s: SummarySettings) -> tuple[float, float]:
    """The interval of the statistic, or NaN with fewer than ``min_crops_for_statistics`` crops."""
    if counts.shape[0] < s.min_crops_for_statistics:
        return float("nan"), float("nan")
    result = mean_dice_interval(counts, statistic, s.confidence)
    return result.low, result.high


def _dice_columns(counts: np.ndarray, statistic: Statistic, s: SummarySettings) -> dict[str, float]:
    """The Dice columns of one row of ``summary.csv`` from ``(N, 14, 4)`` per-crop counts: mean
    Dice and its CI, pooled Dice (and its CI when models are ranked by it), pooled Dice per class
    (NaN for classes no crop annotates)."""
    agg = aggregate_crops(counts)
    pooled = np.where(agg.n_crops > 0, agg.pooled.dice, np.nan)
    low, high = _ci(counts, Statistic.MEAN, s)
    columns = {
        "mean_dice": _statistic_estimate(counts, Statistic.MEAN),
        "mean_dice_ci_low": low,
        "mean_dice_ci_high": high,
        "pooled_dice": float(np.nanmean(pooled)) if np.isfinite(pooled).any() else np.nan,
        **{f"dice_{name}": pooled[c] for c, name in enumerate(CLASSES)},
    }
    if statistic is Statistic.POOLED:
        columns["pooled_dice_ci_low"], columns["pooled_dice_ci_high"] = _ci(counts, statistic, s)
    return columns


def _iou_columns(counts: np.ndarray) -> dict[str, float]:
    """Pooled IoU per class (``iou_<class>``, NaN for classes no crop annotates) and its mean over
    the annotated classes (``pooled_iou``), from ``(N, 14, 4)`` per-crop counts."""
    agg = aggregate_crops(counts)
    pooled = np.where(agg.n_crops > 0, agg.pooled.iou, np.nan)
    return {
        "pooled_iou": float(np.nanmean(pooled)) if np.isfinite(pooled).any() else np.nan,
        **{f"iou_{name}": pooled[c] for c, name in enumerate(CLASSES)},
    }


_INSTANCE_SUMS = (
    "instance_tp",
    "instance_fp",
    "instance_fn",
    "hausdorff_norm_sum",
    "hausdorff_count",
)


def _challenge_columns(table: pd.DataFrame | None, counts: np.ndarray) -> dict[str, Any]:
    """The ``challenge_*`` columns of a model (:mod:`cellseg.challenge`): per instance class F1,
    mean normalised Hausdorff, combined score and skipped crops, from the metrics' instance columns
    summed over crops (NaN without them: an old CSV, or the baseline); the semantic part (mean
    pooled IoU over the non-instance classes annotated), the instance part and the overall score.
    """
    iou = _iou_columns(counts)
    semantic = [iou[f"iou_{n}"] for n in CLASSES if n not in INSTANCE_CLASSES]
    columns: dict[str, Any] = {}
    combined = []
    for name in INSTANCE_CLASSES:
        rows = None if table is None else table[table["class"] == name]
        usable = (
            rows is not None
            and not rows.empty
            and set(_INSTANCE_SUMS) <= set(rows.columns)
            and rows[list(_INSTANCE_SUMS)].notna().all().all()
        )
        if usable:
            assert rows is not None
            scores = instance_class_scores(*(float(rows[c].sum()) for c in _INSTANCE_SUMS))
            status = (
                rows["instance_status"] if "instance_status" in rows else pd.Series([], dtype=str)
            )
            skipped = int((status == "skipped_too_many_instances").sum())
        else:
            scores, skipped = (np.nan, np.nan, np.nan), np.nan
        columns[f"challenge_f1_{name}"] = scores[0]
        columns[f"challenge_hausdorff_{name}"] = scores[1]
        columns[f"challenge_combined_{name}"] = scores[2]
        columns[f"challenge_skipped_crops_{name}"] = skipped
        annotated = rows is not None and not rows.empty
        # a class no crop annotates is left out, as the challenge leaves out absent labels; one
        # annotated but without instance columns makes the instance part unknown (NaN)
        if annotated:
            combined.append(scores[2] if usable else np.nan)
    overall = overall_scores([], semantic)
    if combined:
        overall = overall_scores(combined, semantic)
        if any(not math.isfinite(v) for v in combined):
            overall = overall._replace(instance=np.nan, overall=np.nan)
    return {
        "challenge_style_score": overall.overall,
        "challenge_style_semantic": overall.semantic,
        "challenge_style_instance": overall.instance,
        **columns,
    }


def _train_columns(train: Mapping[str, Any]) -> dict[str, Any]:
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
    }


def _load_model(
    key: str,
    path: Path | str | None,
    train_summaries: Mapping[str, Path | str | None] | None,
    s: SummarySettings,
) -> _Model:
    """A model's row of ``summary.csv`` (and its counts) from its metrics and train summary."""
    # a run name (``{model}_{dim}~{variant}~r{k}``) has the architecture and dim of its model
    architecture, _, dim = Run.parse(key).model_key.rpartition("_")
    row: dict[str, Any] = {"model": key, "architecture": architecture, "dim": dim}
    if path is None or not Path(path).is_file():
        row["status"] = "missing"
        return _Model(row, note=f"{key}: missing: no metrics ({path or 'not evaluated'})")
    table, mode = load_metrics(path, s.adjustment)
    crops, counts = metric_counts(table)
    seconds = (
        float(table.groupby("crop")["inference_seconds"].first().sum())
        if "inference_seconds" in table
        else np.nan
    )
    statistic = Statistic(s.rank_by)
    row.update(
        n_crops=len(crops),
        **_dice_columns(counts, statistic, s),
        **_iou_columns(counts),
        **_challenge_columns(table, counts),
        inference_seconds=seconds,
        adjustment=mode,
    )
    train = None
    if train_summaries is not None:
        train = _read_json(train_summaries.get(key))
    if train is not None:
        row.update(_train_columns(train))
    score = row["mean_dice"] if statistic is Statistic.MEAN else row["pooled_dice"]
    if train_summaries is not None:
        row["status"], why = _status(train, score)
    else:
        row["status"], why = ("ok", "") if math.isfinite(score) else ("failed", "no Dice")
    note = f"{key}: {row['status']}: {why}" if why else ""
    return _Model(row, crops, counts, table, note)


def _check_evaluated(evaluated: Mapping[str, _Model]) -> str:
    """The one adjustment mode of the evaluated models; raises when there is none or several."""
    if not evaluated:
        raise CellsegError(
            "no model has a metrics CSV; run the evaluate rule for at least one model"
        )
    modes = {m.row["adjustment"] for m in evaluated.values()}
    if len(modes) > 1:
        raise CellsegError(
            f"metrics CSVs have different primary adjustment modes {sorted(modes)}; "
            "set evaluation.adjustment_modes so that they share the first"
        )
    return modes.pop()


def _baseline(
    gt_crops: list[str], gt_counts: np.ndarray, class_frequencies: Path | str, s: SummarySettings
) -> _Model:
    """The prior baseline's row and expected counts on the ground truth of every crop."""
    from cellseg.losses import read_class_frequencies

    prior = read_class_frequencies(class_frequencies)["prior"]
    expected = prior_baseline_counts(gt_counts, prior)
    row = {
        "model": BASELINE,
        "architecture": "prior",
        "dim": "",
        "status": "baseline",
        "n_crops": len(gt_crops),
        **_dice_columns(expected, Statistic(s.rank_by), s),
        **_iou_columns(expected),
        **_challenge_columns(None, expected),
        "adjustment": "",
    }
    return _Model(row, gt_crops, expected)


def _nothing_score(gt_counts: np.ndarray, statistic: Statistic) -> float:
    """The statistic of predicting nothing: TP = FP = 0, FN = P (empty crops score 1)."""
    nothing = gt_counts.copy()
    nothing[..., 3] += nothing[..., 1]
    nothing[..., 2] += nothing[..., 0]
    nothing[..., 0] = nothing[..., 1] = 0
    return _statistic_estimate(nothing, statistic)


def _score_column(s: SummarySettings) -> str:
    return "mean_dice" if Statistic(s.rank_by) is Statistic.MEAN else "pooled_dice"


def _rank(table: pd.DataFrame, s: SummarySettings) -> tuple[pd.DataFrame, str | None]:
    """Rank the finished models by the statistic; ``(table with rank, best model)``."""
    column = _score_column(s)
    ranked = table[table["status"].isin(["ok", "not converged"]) & table[column].notna()]
    ranked = ranked.sort_values(column, ascending=False, kind="stable")
    table["rank"] = np.nan
    table.loc[ranked.index, "rank"] = np.arange(1, len(ranked) + 1)
    return table, (str(ranked.iloc[0]["model"]) if len(ranked) else None)


def _shared(a: _Model, b: _Model, classes: slice | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Counts of ``a`` and ``b`` on their shared crops, zero where either does not annotate."""
    assert a.counts is not None and b.counts is not None
    shared = sorted(set(a.crops) & set(b.crops))
    counts_a = a.counts[[a.crops.index(c) for c in shared]][:, classes]
    counts_b = b.counts[[b.crops.index(c) for c in shared]][:, classes]
    both = (counts_a.sum(axis=-1) > 0) & (counts_b.sum(axis=-1) > 0)
    counts_a, counts_b = (np.where(both[..., None], x, 0.0) for x in (counts_a, counts_b))
    keep = both.any(axis=1)
    return counts_a[keep], counts_b[keep]


@dataclass
class _Comparison:
    """A model against the best on their shared crops (``result`` None: too few crops)."""

    difference: float
    n_crops: int
    result: PairedComparison | None


def _compare(model: _Model, best: _Model, s: SummarySettings) -> _Comparison:
    statistic = Statistic(s.rank_by)
    a, b = _shared(model, best, slice(None))
    if a.shape[0] == 0:
        return _Comparison(float("nan"), 0, None)
    difference = _statistic_estimate(a, statistic) - _statistic_estimate(b, statistic)
    if a.shape[0] < s.min_crops_for_statistics:
        return _Comparison(difference, a.shape[0], None)
    result = paired_comparison(
        a, b, statistic, s.confidence, s.permutation_resamples, s.permutation_seed
    )
    return _Comparison(result.estimate, a.shape[0], result)


_COMPARISON_COLUMNS = ("diff_to_best", "diff_ci_low", "diff_ci_high", "p_value", "compared_crops")


def _add_comparisons(
    table: pd.DataFrame,
    best: str | None,
    comparisons: Mapping[str, _Comparison],
    s: SummarySettings,
) -> pd.DataFrame:
    """The columns of each model's difference to the best, its CI and (Holm-adjusted) p-value."""
    table["best_model"] = best
    for column in _COMPARISON_COLUMNS:
        table[column] = np.nan
    for key, comparison in comparisons.items():
        r = comparison.result
        i = table.index[table["model"] == key][0]
        table.loc[i, list(_COMPARISON_COLUMNS)] = [
            comparison.difference,
            r.low if r else np.nan,
            r.high if r else np.nan,
            r.p_value if r else np.nan,
            comparison.n_crops,
        ]
    if best is not None:
        table.loc[table["model"] == best, "diff_to_best"] = 0.0
    table["p_holm"] = holm(table["p_value"].tolist())
    significant = pd.array(table["p_holm"] < s.significance, dtype="boolean")
    significant[table["p_holm"].isna().to_numpy()] = pd.NA
    table["significant"] = significant
    return table


def _add_above_baseline(table: pd.DataFrame, baseline: _Model, s: SummarySettings) -> pd.DataFrame:
    """``above_baseline``: the CI's lower end above the baseline's estimate (NA without a CI)."""
    column = _score_column(s)
    low = table.get(f"{column}_ci_low", table["mean_dice_ci_low"])
    above = pd.array(low > baseline.row[column], dtype="boolean")
    above[(low.isna() | (table["model"] == BASELINE)).to_numpy()] = pd.NA
    table["above_baseline"] = above
    return table


def summarize(
    metrics: Mapping[str, Path | str | None],
    train_summaries: Mapping[str, Path | str | None] | None = None,
    class_frequencies: Path | str | None = None,
    expected: Sequence[str] | None = None,
    settings: SummarySettings | None = None,
) -> Summary:
    """Compare models from their metrics CSVs.

    Args:
        metrics: ``{model}_{dim}`` → metrics CSV (``None`` or a missing file: the model has no
            results and is reported missing).
        train_summaries: ``{model}_{dim}`` → ``train_summary.json`` (training columns; a missing
            one makes the model ``failed``). ``None``: no training columns, status from Dice only.
        class_frequencies: ``class_frequencies.json`` for the baseline row (``None``: no baseline).
        expected: the models a complete comparison has (default: every registered model);
            those without results are listed as missing.
        settings: :class:`SummarySettings`.

    Raises:
        CellsegError: no model has metrics, or a metrics file is malformed.

    Returns:
        :class:`Summary`.
    """
    s = settings or SummarySettings()
    expected = list(expected) if expected is not None else expected_models()
    models = {key: _load_model(key, path, train_summaries, s) for key, path in metrics.items()}
    evaluated = {key: m for key, m in models.items() if m.counts is not None}
    adjustment = _check_evaluated(evaluated)
    ground_truth = pd.concat([m.metrics for m in evaluated.values()])
    gt_crops, gt_counts = metric_counts(ground_truth.drop_duplicates(["crop", "class"]))
    baseline = (
        None if class_frequencies is None else _baseline(gt_crops, gt_counts, class_frequencies, s)
    )

    table, best = _rank(pd.DataFrame([m.row for m in models.values()]), s)
    others = {k: m for k, m in evaluated.items() if k != best}
    if baseline is not None:
        others[BASELINE] = baseline
        table = pd.concat([table, pd.DataFrame([baseline.row])], ignore_index=True)
    comparisons = (
        {} if best is None else {k: _compare(m, evaluated[best], s) for k, m in others.items()}
    )
    table = _add_comparisons(table, best, comparisons, s)
    if baseline is not None:
        table = _add_above_baseline(table, baseline, s)
    table = _order_columns(table.sort_values(["rank"], na_position="last", kind="stable"))

    notes = [m.note for m in models.values() if m.note]
    notes += [
        f"{k}: missing: expected but not in the config's models"
        for k in expected
        if k not in {Run.parse(run).model_key for run in metrics}
    ]
    return Summary(
        table=table.reset_index(drop=True),
        winners=_winners(table, evaluated, s),
        notes=notes,
        missing=[k for k in expected if k not in {Run.parse(r).model_key for r in evaluated}],
        adjustment=adjustment,
        settings=s,
        n_crops=len(gt_crops),
        empty_score=_nothing_score(gt_counts, Statistic(s.rank_by)),
        counts={k: (m.crops, m.counts) for k, m in evaluated.items() if m.counts is not None},
    )


def _status(train: Mapping[str, Any] | None, score: float) -> tuple[str, str]:
    """``(status, why)``: ok, not converged, failed."""
    if train is None:
        return "failed", "no train_summary.json"
    stop = train.get("stop_reason") or ""
    best = train.get("best_val_mean_dice")
    if not stop:
        return "failed", "training did not finish (no stop reason)"
    if best is None or (isinstance(best, float) and math.isnan(best)):
        return "failed", "no finite validation Dice during training"
    if not math.isfinite(score):
        return "failed", "no finite test Dice"
    if stop == "max_epochs" and int(train.get("best_epoch", -1)) >= int(train["epochs_run"]) - 1:
        return (
            "not converged",
            f"validation Dice still improving at the last of {train['epochs_run']} epochs "
            "(max_epochs reached)",
        )
    return "ok", ""


_LEADING = [
    "rank",
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
    "mean_dice",
    "mean_dice_ci_low",
    "mean_dice_ci_high",
    "pooled_dice",
    "pooled_dice_ci_low",
    "pooled_dice_ci_high",
    "pooled_iou",
    "challenge_style_score",
    "challenge_style_semantic",
    "challenge_style_instance",
    "above_baseline",
    "best_model",
    "diff_to_best",
    "diff_ci_low",
    "diff_ci_high",
    "compared_crops",
    "p_value",
    "p_holm",
    "significant",
]


def _order_columns(table: pd.DataFrame) -> pd.DataFrame:
    for column in _LEADING[:18]:
        if column not in table:
            table[column] = np.nan
    leading = [c for c in _LEADING if c in table]
    per_class = [
        f"{m}_{name}" for m in ("dice", "iou") for name in CLASSES if f"{m}_{name}" in table
    ]
    rest = [c for c in table if c not in leading and c not in per_class]
    table = table[leading + per_class + rest]
    counts = ("rank", "parameters", "epochs_run", "best_epoch", "gpus", "n_crops", "compared_crops")
    for column in counts:
        table[column] = pd.array(table[column], dtype="Float64").round().astype("Int64")
    return table


def _class_test(c: int, leader: _Model, runner_up: _Model, s: SummarySettings) -> tuple[int, float]:
    """``(crops, p)`` of the leader against the runner-up on the crops annotating class ``c``
    (pooled Dice of the class, sign-flip test; p NaN with too few crops)."""
    a, b = _shared(leader, runner_up, [c])
    if a.shape[0] < s.min_crops_for_statistics:
        return a.shape[0], float("nan")
    p_value, _ = sign_flip_p_value(
        a, b, Statistic.POOLED, s.permutation_resamples, s.permutation_seed
    )
    return a.shape[0], p_value


def _class_leaders(
    table: pd.DataFrame, evaluated: Mapping[str, _Model], c: int, s: SummarySettings
) -> dict[str, Any]:
    """One row of the winners table before the Holm adjustment over classes."""
    name = CLASSES[c]
    column = f"dice_{name}"
    scores = table[table["rank"].notna()][["model", column]].dropna()
    scores = scores.sort_values(column, ascending=False, kind="stable")
    baseline = table.loc[table["model"] == BASELINE, column]
    row: dict[str, Any] = {"class": name, "crops": 0, "leader": "", "dice": np.nan,
                           "runner_up": "", "margin": np.nan, "p_value": np.nan, "single": False,
                           "baseline": baseline.iloc[0] if len(baseline) else np.nan}  # fmt: skip
    if scores.empty:
        return row
    top = scores[column].iloc[0]
    tied = scores[scores[column] >= top - 1e-12]
    rest = scores[scores[column] < top - 1e-12]
    # exact ties (e.g. every model at 0) name every tied model rather than a random one
    row.update(leader=", ".join(tied["model"]), dice=top)
    leader = evaluated[str(tied["model"].iloc[0])]
    assert leader.counts is not None
    row["crops"] = int(np.count_nonzero(leader.counts[:, c].sum(axis=-1) > 0))
    if not rest.empty and len(tied) == 1:
        runner_up = str(rest["model"].iloc[0])
        row["crops"], row["p_value"] = _class_test(c, leader, evaluated[runner_up], s)
        row.update(runner_up=runner_up, margin=top - rest[column].iloc[0])
    row["single"] = len(scores) == 1
    return row


def _winners(
    table: pd.DataFrame, evaluated: Mapping[str, _Model], s: SummarySettings
) -> pd.DataFrame:
    """Per class: leader by pooled Dice, runner-up, sign-flip p (Holm over classes), winner.

    The winner is the leader when it beats the runner-up significantly, the only model scored
    on the class when there is one, ``tie`` otherwise (also with too few crops to test), and empty
    when no model is scored on the class.
    """
    rows = pd.DataFrame([_class_leaders(table, evaluated, c, s) for c in range(NUM_CLASSES)])
    rows["p_holm"] = holm(rows["p_value"].tolist())
    significant = (rows["p_holm"] < s.significance).to_numpy()
    single = rows["single"].to_numpy(dtype=bool)
    rows["winner"] = np.where(
        significant | single, rows["leader"], np.where(rows["leader"] == "", "", "tie")
    )
    columns = ["class", "crops", "leader", "dice", "runner_up", "margin", "p_value", "p_holm"]
    return rows[[*columns, "winner", "baseline"]]


# ------------------------------------------------------------------------------ writing


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _p(value: Any) -> str:
    """A p-value: 3 decimals, small ones in scientific notation (never "0.000")."""
    if isinstance(value, float) and math.isfinite(value) and 0 < value < 0.001:
        return f"{value:.1e}"
    return _fmt(value)


def _hours(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3g}"


def _statistics_sentence(summary: Summary) -> str:
    """How the CIs and p-values are made, or why there are none."""
    s = summary.settings
    n, floor = summary.n_crops, s.min_crops_for_statistics
    if n < floor:
        return (
            f"**No confidence intervals and no p-values**: {n} test crop(s), fewer than "
            f"`evaluation.min_crops_for_statistics` = {floor}. With {n} crop(s) an exact paired "
            f"test cannot give a p-value below 2/2^{n} = {smallest_p_value(n):.3g}, so no "
            f"difference could be significant at {s.significance}, and a spread estimated from "
            f"so few crops does not support an interval. Differences below are point estimates "
            "only; evaluate on more crops to test them."
        )
    return (
        f"CIs ({s.confidence:.0%}) are t-intervals over crops with the class set held fixed "
        "(an unbiased crop-level variance, Satterthwaite degrees of freedom; coverage checked on "
        "synthetic crops of known truth, `bench/coverage.py`). Paired differences are tested by "
        f"exact sign-flip permutation over crops (all 2^N flips up to {s.permutation_resamples} "
        f"flips, else {s.permutation_resamples} seeded random flips); with N crops the smallest "
        "possible p-value is 2/2^N. Nothing is reported from fewer than "
        f"{floor} crops (`evaluation.min_crops_for_statistics`)."
    )


def _markdown_intro(summary: Summary) -> list[str]:
    s = summary.settings
    stat = "mean Dice over crops" if s.rank_by == "mean" else "pooled Dice"
    return [
        "# cellseg model comparison",
        "",
        f"{summary.n_crops} held-out crops, logit adjustment `{summary.adjustment}`, ranked by "
        f"{stat}. **Mean Dice**: per class the mean of per-crop Dice over the crops annotating "
        "it, then the mean over classes. **Pooled Dice**: per class the Dice of ΣTP, ΣFP, ΣFN "
        "over crops (the CellMap challenge's scoring), then the mean over classes. "
        "**A class whose prediction and ground truth are both empty in a crop scores 1** "
        "(column `empty` of the metrics CSVs).",
        "",
        _statistics_sentence(summary),
        "",
    ]


def _diff_cell(r: pd.Series) -> str:
    if pd.isna(r.get("diff_to_best")):
        return "–"
    if r["model"] == r["best_model"]:
        return "best"
    if pd.isna(r.get("diff_ci_low")):
        return f"{r['diff_to_best']:+.3f}"
    return f"{r['diff_to_best']:+.3f} [{_fmt(r['diff_ci_low'])}, {_fmt(r['diff_ci_high'])}]"


def _markdown_table(table: pd.DataFrame) -> list[str]:
    lines = [
        "| rank | model | status | mean Dice [CI] | pooled Dice | Δ to best [CI] | p (Holm) "
        "| GPU/CPU-h | parameters | epochs (best) | stop |",
        "|---:|---|---|---|---:|---|---:|---:|---:|---|---|",
    ]
    for _, r in table.iterrows():
        rank = "–" if pd.isna(r["rank"]) else str(int(r["rank"]))
        ci = _fmt(r.get("mean_dice"))
        if pd.notna(r.get("mean_dice_ci_low")):
            ci += f" [{_fmt(r['mean_dice_ci_low'])}, {_fmt(r['mean_dice_ci_high'])}]"
        unit = r.get("compute_unit")
        hours = "–" if pd.isna(r.get("compute_hours")) else f"{_hours(r['compute_hours'])} {unit}"
        params = "–" if pd.isna(r.get("parameters")) else f"{int(r['parameters']):,}"
        epochs = (
            "–"
            if pd.isna(r.get("epochs_run"))
            else f"{int(r['epochs_run'])} ({int(r['best_epoch'])})"
        )
        lines.append(
            f"| {rank} | {r['model']} | {r['status']} | {ci} | {_fmt(r.get('pooled_dice'))} | "
            f"{_diff_cell(r)} | {_p(r.get('p_holm'))} | {hours} | {params} | {epochs} | "
            f"{_fmt(r.get('stop_reason'))} |"
        )
    return lines


def _markdown_baseline(summary: Summary) -> list[str]:
    stat = "mean Dice over crops" if summary.settings.rank_by == "mean" else "pooled Dice"
    table = summary.table
    lines = [
        "",
        f"**Baseline (prior)**: an image-blind predictor marking each voxel of class c positive "
        "with probability f_c (the training prior), scored by its expected counts on each crop "
        "(chance level). A model is *above baseline* when its CI's lower bound exceeds the "
        f"baseline's estimate. Predicting nothing at all would score {_fmt(summary.empty_score)} "
        f"({stat}), only from empty crop × class pairs scoring 1.",
    ]
    if "above_baseline" in table:
        models = table[(table["model"] != BASELINE) & table["mean_dice"].notna()]
        if models["above_baseline"].isna().all():
            lines.append("Without CIs, no model can be called above the baseline.")
        else:
            below = models[models["above_baseline"].fillna(False) == False]  # noqa: E712
            lines.append(
                "All evaluated models are above the baseline."
                if below.empty
                else f"Not clearly above the baseline: {', '.join(below['model'])}."
            )
    return lines


def _markdown_winners(summary: Summary) -> list[str]:
    s = summary.settings
    lines = [
        "",
        "## Winner per class (pooled Dice)",
        "",
        "The leader is named the winner only when a sign-flip test over the crops annotating the "
        f"class beats the runner-up (Holm-adjusted over classes, at {s.significance}); otherwise "
        f"the class is a tie (also with fewer than {s.min_crops_for_statistics} crops to test).",
        "",
        "| class | crops | winner | leader | Dice | runner-up | margin | p (Holm) | baseline |",
        "|---|---:|---|---|---:|---|---:|---:|---:|",
    ]
    for _, w in summary.winners.iterrows():
        lines.append(
            f"| {w['class']} | {w['crops']} | {w['winner'] or '–'} | {w['leader'] or '–'} "
            f"| {_fmt(w['dice'])} | {w['runner_up'] or '–'} | {_fmt(w['margin'])} "
            f"| {_p(w['p_holm'])} | {_fmt(w.get('baseline'))} |"
        )
    return lines


def _markdown_challenge(summary: Summary) -> list[str]:
    """The challenge-style scores and the pooled IoU per class, labelled as ours, not the
    leaderboard's."""
    table = summary.table[summary.table["mean_dice"].notna()]
    instance = ", ".join(f"`{n}`" for n in INSTANCE_CLASSES)
    lines = [
        "",
        "## Challenge-style scores on our test crops (not a leaderboard number)",
        "",
        "Computed as the CellMap Segmentation Challenge's scoring code computes its scores "
        f"(`cellseg.challenge`, read from {CHALLENGE_SOURCE}), but on our held-out crops and our "
        "14 classes, so it is **not comparable to the challenge leaderboard**. Semantic classes: "
        "pooled IoU (ΣTP / (ΣTP + ΣFP + ΣFN) over crops). Instance class(es) "
        f"{instance}: connected components (26-connectivity) of the thresholded prediction "
        "matched one-to-one to the ground-truth instances (maximum summed IoU, any overlap), "
        "F1 = 2ΣTP / (2ΣTP + ΣFP + ΣFN) over crops, Hausdorff distance per instance (nm, capped "
        "at half the crop's smallest extent; unmatched instances and predictions get the cap) "
        "normalised as 1.01^(−d / ‖voxel size‖) and averaged over all instances of all crops, "
        "combined = √(F1 × normalised Hausdorff). Score = √(mean combined over instance classes "
        "× mean IoU over semantic classes). The challenge's documentation describes "
        "voxel-weighted means over crops instead; its code, followed here, pools over crops.",
        "",
        "| model | challenge-style score | semantic (mean IoU) | "
        + " | ".join(f"{n} F1 | {n} Hausdorff | {n} combined" for n in INSTANCE_CLASSES)
        + " |",
        "|---|---:|---:|" + "---:|---:|---:|" * len(INSTANCE_CLASSES),
    ]
    for _, r in table.iterrows():
        cells = [_fmt(r.get("challenge_style_score")), _fmt(r.get("challenge_style_semantic"))]
        for n in INSTANCE_CLASSES:
            cells += [_fmt(r.get(f"challenge_{k}_{n}")) for k in ("f1", "hausdorff", "combined")]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    skipped = {
        r["model"]: int(r[f"challenge_skipped_crops_{n}"])
        for _, r in table.iterrows()
        for n in INSTANCE_CLASSES
        if pd.notna(r.get(f"challenge_skipped_crops_{n}")) and r[f"challenge_skipped_crops_{n}"]
    }
    if skipped:
        lines += ["", "Crops skipped for too many predicted instances (> 10 + 50·e^(−n/5) per "
                  "ground-truth instance; they count nowhere, as in the challenge): "
                  + ", ".join(f"{m} {k}" for m, k in skipped.items()) + "."]  # fmt: skip
    lines += [
        "",
        "A score is – where it cannot be computed: the baseline has no instances, and a class "
        "part is undefined when no crop annotates such a class.",
        "",
        "### Pooled IoU per class",
        "",
        "| class | " + " | ".join(str(m) for m in table["model"]) + " |",
        "|---|" + "---:|" * len(table),
    ]
    for name in CLASSES:
        cells = [_fmt(v) for v in table[f"iou_{name}"]] if f"iou_{name}" in table else []
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _comparison_line(r: pd.Series, s: SummarySettings, tested: int = 1) -> str:
    """One model's line of "Differences to the best model"; ``tested``: comparisons in the
    Holm family (a difference no test at this N could call significant is not "no difference")."""
    crops = int(r["compared_crops"])
    if pd.isna(r["p_holm"]):
        return (
            f"- {r['model']}: Δ {r['diff_to_best']:+.3f} on {crops} shared crop(s); not tested "
            f"(fewer than {s.min_crops_for_statistics})"
        )
    if r["significant"]:
        verdict = "significantly worse"
    elif tested * smallest_p_value(crops) >= s.significance:
        verdict = f"untestable at {crops} crops (no p-value could reach {s.significance})"
    else:
        verdict = "not significantly different"
    return (
        f"- {r['model']}: {verdict} (Δ {r['diff_to_best']:+.3f}, CI [{_fmt(r['diff_ci_low'])}, "
        f"{_fmt(r['diff_ci_high'])}], p = {_p(r['p_holm'])}, {crops} crops)"
    )


def _markdown_differences(summary: Summary) -> list[str]:
    s, table = summary.settings, summary.table
    lines = ["", "## Differences to the best model", ""]
    best = table["best_model"].iloc[0] if len(table) else None
    compared = table[table["compared_crops"].notna() & (table["model"] != best)]
    if best is None or pd.isna(best) or compared.empty:
        return [*lines, "No paired comparison (fewer than two models or no shared crops)."]
    tested = int(compared["p_holm"].notna().sum())
    if not tested:
        lines += [f"No comparison shares {s.min_crops_for_statistics} crops with **{best}**: "
                  "the differences are point estimates, untested.", ""]  # fmt: skip
        return lines + [_comparison_line(r, s) for _, r in compared.iterrows()]
    lines.append(
        f"Sign-flip permutation test over the crops shared with the best model, **{best}**; "
        f"Holm-adjusted over {tested} tested comparison(s), significant at {s.significance}."
    )
    n = int(compared["compared_crops"].max())
    if tested and tested * smallest_p_value(n) >= s.significance:
        lines.append(
            f"With at most {n} shared crops and {tested} comparisons the smallest possible "
            f"Holm-adjusted p-value is {tested} × 2/2^{n} = "
            f"{tested * smallest_p_value(n):.3g}: no difference can be significant."
        )
    lines.append("")
    return lines + [_comparison_line(r, s, tested) for _, r in compared.iterrows()]


def _markdown_problems(summary: Summary) -> list[str]:
    lines = ["", "## Failed, not converged or missing models", ""]
    lines += [f"- {note}" for note in summary.notes] or ["None: every expected model finished."]
    if summary.missing:
        lines += ["", f"Missing from this comparison: {', '.join(summary.missing)}."]
    return lines


def summary_markdown(summary: Summary) -> str:
    """``summary.md``: the ranked table, winners per class, significance, problems."""
    lines = [
        *_markdown_intro(summary),
        *_markdown_table(summary.table),
        *_markdown_baseline(summary),
        *_markdown_winners(summary),
        *_markdown_challenge(summary),
        *_markdown_differences(summary),
        *_markdown_problems(summary),
    ]
    return "\n".join(lines) + "\n"


MEASURED_COLUMNS: tuple[str, ...] = (
    "train_hours",
    "gpu_hours",
    "cpu_hours",
    "compute_hours",
    "inference_seconds",
)
"""Wall-clock measurements: written to ``costs.csv``, not ``summary.csv``, so that the same
config on the same machine gives the same ``summary.csv`` bit for bit."""


def write_summary(
    summary: Summary,
    csv_path: Path | str,
    md_path: Path | str,
    figures_dir: Path | str,
    costs_path: Path | str | None = None,
) -> None:
    """Write ``summary.csv`` (results only), ``summary.md``, :data:`SUMMARY_FIGURES` and, when
    ``costs_path`` is given, the :data:`MEASURED_COLUMNS` per model (all atomically)."""
    from cellseg.figures import write_summary_figures  # matplotlib only when drawing

    measured = [c for c in MEASURED_COLUMNS if c in summary.table]
    with atomic_path(csv_path) as temporary:
        summary.table.drop(columns=measured).to_csv(temporary, index=False)
    if costs_path is not None:
        costs = summary.table[summary.table["model"] != BASELINE]
        with atomic_path(costs_path) as temporary:
            costs[["model", "dim", "gpus", "compute_unit", *measured]].to_csv(
                temporary, index=False
            )
    write_text_atomic(md_path, summary_markdown(summary))
    write_summary_figures(summary.table, figures_dir)


def make_summary(
    metrics: Mapping[str, Path | str | None],
    train_summaries: Mapping[str, Path | str | None] | None,
    class_frequencies: Path | str | None,
    csv_path: Path | str,
    md_path: Path | str,
    figures_dir: Path | str,
    expected: Sequence[str] | None = None,
    settings: SummarySettings | None = None,
    costs_path: Path | str | None = None,
) -> Summary:
    """:func:`summarize` then :func:`write_summary` (what the ``summary`` rule runs)."""
    summary = summarize(metrics, train_summaries, class_frequencies, expected, settings)
    write_summary(summary, csv_path, md_path, figures_dir, costs_path)
    return summary


# ------------------------------------------------------------------------------ command line


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "summary",
        help="compare models: summary.csv, summary.md and figures from metrics CSVs",
    )
    parser.add_argument(
        "--metrics", type=Path, nargs="+", required=True,
        help="metrics CSVs named {model}_{dim}.csv",
    )  # fmt: skip
    parser.add_argument(
        "--models-dir", type=Path, default=Path("results/models"),
        help="where {model}_{dim}/train_summary.json are",
    )  # fmt: skip
    parser.add_argument("--class-frequencies", type=Path, default=None)
    parser.add_argument("--out-csv", type=Path, default=Path("results/summary.csv"))
    parser.add_argument("--out-md", type=Path, default=Path("results/summary.md"))
    parser.add_argument("--out-costs", type=Path, default=Path("results/costs.csv"))
    parser.add_argument("--figures", type=Path, default=Path("results/figures/summary"))
    parser.add_argument("--adjustment", default=None, choices=["train", "none"])
    parser.add_argument("--rank-by", default="mean", choices=["mean", "pooled"])
    parser.add_argument(
        "--permutation-resamples", type=int, default=DEFAULT_PERMUTATIONS,
        help="sign flips of the paired tests (exact when 2^N is at most this)",
    )  # fmt: skip
    parser.add_argument(
        "--min-crops", type=int, default=SummarySettings.min_crops_for_statistics,
        help="fewest crops with which a CI or p-value is reported",
    )  # fmt: skip
    parser.set_defaults(func=_run_summary)


def _run_summary(args: argparse.Namespace) -> int:
    metrics = {path.stem: path for path in args.metrics}
    train = {key: args.models_dir / key / "train_summary.json" for key in metrics}
    settings = SummarySettings(
        adjustment=args.adjustment,
        rank_by=args.rank_by,
        permutation_resamples=args.permutation_resamples,
        min_crops_for_statistics=args.min_crops,
    )
    summary = make_summary(
        metrics, train, args.class_frequencies, args.out_csv, args.out_md, args.figures,
        settings=settings, costs_path=args.out_costs,
    )  # fmt: skip
    print(f"{args.out_csv}: {len(summary.table)} rows; best {summary.table['best_model'].iloc[0]}",
          file=sys.stderr)  # fmt: skip
    return 0


# ------------------------------------------------------------------------------ studies

STUDY_FIGURES: tuple[str, ...] = ("seeds.png", "dice_vs_tau.png", "dice_vs_alpha.png")
"""File names of the study figures, in ``results/figures/study/`` (:mod:`cellseg.figures`)."""

STUDY_LOSS_KEYS: tuple[str, ...] = (
    "tau",
    "sign",
    "alpha",
    "beta",
    "bce_weight",
    "inference_logit_adjustment",
)
STUDY_LOSS_DEFAULTS: dict[str, Any] = {"bce_weight": 0.0}
"""Values of loss keys a config may leave out (no BCE term)."""
"""Loss keys reported per variant in ``study.csv`` (the variant's resolved loss)."""


@dataclass
class Study:
    """A study: runs grouped by (model, variant) over seeds.

    Attributes:
        table: ``study.csv``: one row per group, ranked overall (``rank``) and within its model
            (``rank_in_model``), with mean Dice over seeds, its SD over seeds, its crops-and-seeds
            CI, the comparison with the best group overall and with the best of its model, the
            variant's loss keys and per-class Dice (mean over seeds of the mean over crops).
        seeds: one row per run: ``group``, ``model``, ``variant``, ``replicate``, ``score``.
        settings: the settings used.
        adjustment: the adjustment mode compared.
        n_crops: test crops shared by every run.
        notes: runs left out and why.
    """

    table: pd.DataFrame
    seeds: pd.DataFrame
    settings: SummarySettings
    adjustment: str
    n_crops: int
    notes: list[str] = field(default_factory=list)


def _t_p_value(estimate: float, se: float, df: float) -> float:
    """Two-sided p of the t statistic ``estimate / se`` with ``df`` degrees of freedom."""
    from scipy import stats

    if not (np.isfinite(se) and se > 0 and np.isfinite(df) and df > 0):
        return float("nan")
    return float(2 * stats.t.sf(abs(estimate) / se, df))


def _group_comparison(
    a: np.ndarray, b: np.ndarray, s: SummarySettings
) -> tuple[float, float, float, float]:
    """``(difference, low, high, p)`` of group ``a`` minus group ``b``, each ``(S, N, C)``.

    Seeds are paired by index: two groups' seed effects are independent, so any pairing is
    valid, and pairing keeps the crop effects common to both groups out of the difference. The
    interval is :func:`replicate_mean_interval` of the paired differences (variance bound 1: a
    difference of Dice lies in [-1, 1]); the p-value is the two-sided t test of its estimate
    with the interval's degrees of freedom (a sign-flip test over crops alone would ignore the
    seeds). NaN CI and p with fewer than ``min_crops_for_statistics`` crops or unequal seeds.
    """
    difference = mean_over_classes(a.mean(axis=0)) - mean_over_classes(b.mean(axis=0))
    if a.shape != b.shape or a.shape[1] < s.min_crops_for_statistics:
        return difference, float("nan"), float("nan"), float("nan")
    interval = replicate_mean_interval(a - b, s.confidence, bound=1.0)
    return (
        interval.estimate,
        interval.low,
        interval.high,
        _t_p_value(interval.estimate, interval.se, interval.df),
    )


def summarize_study(
    metrics: Mapping[str, Path | str | None],
    variants: Mapping[str, Any] | None = None,
    loss: Mapping[str, Any] | None = None,
    settings: SummarySettings | None = None,
) -> Study:
    """Rank (model, variant) groups of runs over their seeds.

    Per group the ``(S, N, C)`` per-crop values (:func:`class_values` of the ``rank_by``
    statistic) of its ``S`` seeds on the ``N`` test crops every run shares give the mean over
    seeds of the per-seed score, the SD of the per-seed scores, and the interval of
    :func:`replicate_mean_interval` (crops and seeds as crossed random effects). Groups are
    ranked overall and within each model and compared with the best (:func:`_group_comparison`,
    Holm-adjusted over the groups compared with the same best).

    Args:
        metrics: run name (``{model}_{dim}[~{variant}][~r{k}]``) → metrics CSV; a missing file
            leaves the run out (noted).
        variants: the config's ``variants`` (each variant's ``loss`` overrides).
        loss: the config's ``loss`` (what a variant's overrides apply to).
        settings: :class:`SummarySettings`.

    Raises:
        CellsegError: no run has metrics, or a metrics file is malformed.
    """
    s = settings or SummarySettings()
    statistic = Statistic(s.rank_by)
    variants, loss = dict(variants or {}), dict(loss or {})
    notes: list[str] = []
    loaded: dict[str, tuple[Run, dict[str, np.ndarray], str]] = {}
    for name, path in metrics.items():
        if path is None or not Path(path).is_file():
            notes.append(f"{name}: missing: no metrics ({path or 'not evaluated'})")
            continue
        table, mode = load_metrics(path, s.adjustment)
        crops, counts = metric_counts(table)
        values = class_values(counts, statistic)
        loaded[name] = (Run.parse(name), dict(zip(crops, values, strict=True)), mode)
    if not loaded:
        raise CellsegError("no run has a metrics CSV; run the evaluate rule for at least one run")
    modes = {mode for _, _, mode in loaded.values()}
    if len(modes) > 1:
        raise CellsegError(
            f"metrics CSVs have different primary adjustment modes {sorted(modes)}; "
            "set evaluation.adjustment_modes so that they share the first"
        )
    shared = sorted(set.intersection(*(set(v) for _, v, _ in loaded.values())))
    groups: dict[str, list[tuple[Run, np.ndarray]]] = {}
    for run, values, _ in loaded.values():
        stacked = np.stack([values[c] for c in shared]) if shared else np.empty((0, NUM_CLASSES))
        groups.setdefault(run.group, []).append((run, stacked))
    arrays: dict[str, np.ndarray] = {}
    rows, seed_rows = [], []
    for group, members in groups.items():
        members.sort(key=lambda item: item[0].replicate)
        arr = np.stack([values for _, values in members])  # (S, N, C)
        arrays[group] = arr
        run = members[0][0]
        per_seed = [mean_over_classes(values) for _, values in members]
        seed_rows += [
            {"group": group, "model": r.model_key, "variant": r.variant or "-",
             "replicate": r.replicate, "score": score}
            for (r, _), score in zip(members, per_seed, strict=True)
        ]  # fmt: skip
        enough = len(shared) >= s.min_crops_for_statistics
        interval = replicate_mean_interval(arr, s.confidence) if enough else None
        variant_loss = {**loss, **((variants.get(run.variant) or {}).get("loss") or {})}
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            per_class = np.nanmean(arr, axis=(0, 1))
        rows.append(
            {
                "group": group,
                "model": run.model_key,
                "variant": run.variant or "-",
                "n_seeds": len(members),
                "n_crops": len(shared),
                "score": float(np.mean(per_seed)),
                "sd_seeds": float(np.std(per_seed, ddof=1)) if len(per_seed) > 1 else np.nan,
                "ci_low": interval.low if interval else np.nan,
                "ci_high": interval.high if interval else np.nan,
                **{
                    key: variant_loss.get(key, STUDY_LOSS_DEFAULTS.get(key))
                    for key in STUDY_LOSS_KEYS
                },
                **{f"dice_{name}": float(v) for name, v in zip(CLASSES, per_class, strict=True)},
            }
        )
    table = pd.DataFrame(rows)
    table["rank"] = table["score"].rank(ascending=False, method="min").astype(int)
    table["rank_in_model"] = (
        table.groupby("model")["score"].rank(ascending=False, method="min").astype(int)
    )
    table = _add_group_comparisons(table, arrays, s)
    table = table.sort_values(["rank", "group"], kind="stable").reset_index(drop=True)
    mode = modes.pop()
    return Study(table, pd.DataFrame(seed_rows), s, mode, len(shared), notes)


def _add_group_comparisons(
    table: pd.DataFrame, arrays: Mapping[str, np.ndarray], s: SummarySettings
) -> pd.DataFrame:
    """``diff_vs_best`` (+ CI, Holm-adjusted ``p_vs_best``) against the best group overall and
    ``diff_vs_model_best`` (+ Holm-adjusted ``p_vs_model_best``) against the best of its model."""
    table = table.copy()
    for suffix, scopes in (
        ("best", [table.index]),
        ("model_best", [idx for _, idx in table.groupby("model").groups.items()]),
    ):
        columns = {f"diff_vs_{suffix}": np.nan, f"p_vs_{suffix}": np.nan}
        if suffix == "best":
            columns.update(diff_low=np.nan, diff_high=np.nan)
        for column, value in columns.items():
            table[column] = value
        for index in scopes:
            scope = table.loc[index]
            best = scope.sort_values(["score", "group"], ascending=[False, True]).iloc[0]["group"]
            tested, p_values = [], []
            for i, row in scope.iterrows():
                if row["group"] == best:
                    continue
                diff, low, high, p = _group_comparison(arrays[row["group"]], arrays[best], s)
                table.loc[i, f"diff_vs_{suffix}"] = diff
                if suffix == "best":
                    table.loc[i, ["diff_low", "diff_high"]] = [low, high]
                if np.isfinite(p):
                    tested.append(i)
                    p_values.append(p)
            for i, p in zip(tested, holm(p_values), strict=True):
                table.loc[i, f"p_vs_{suffix}"] = p
    return table


def study_markdown(study: Study) -> str:
    """``study.md``: the ranking overall and within each model, and how it was computed."""
    s = study.settings
    stat = "mean Dice" if s.rank_by == "mean" else "pooled Dice"
    seeds = sorted(set(study.table["n_seeds"]))
    lines = [
        "# Study: variants and seeds",
        "",
        f"{len(study.table)} groups (model × variant) over {'/'.join(map(str, seeds))} seed(s), "
        f"{study.n_crops} test crops, adjustment `{study.adjustment}`. **Score**: the {stat} of "
        "each seed's run, averaged over seeds; **SD**: its standard deviation over seeds; "
        f"**CI** ({s.confidence:.0%}): crops and seeds as crossed random effects "
        "(method of moments, Satterthwaite df; `cellseg.statistics.replicate_mean_interval`). "
        "**Δ best**: the difference from the best group by the same interval on seed-paired "
        "differences; **p**: two-sided t test with that interval's df, Holm-adjusted over the "
        f"groups compared. No CI or p with fewer than {s.min_crops_for_statistics} crops.",
        "",
        "## Ranking overall",
        "",
        "| rank | model | variant | seeds | score | SD seeds | CI | Δ best [CI] | p |",
        "|---:|---|---|---:|---:|---:|---|---|---:|",
    ]
    for _, r in study.table.iterrows():
        ci = f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]" if np.isfinite(r["ci_low"]) else "–"
        if np.isfinite(r["diff_vs_best"]):
            diff = f"{r['diff_vs_best']:+.3f}"
            if np.isfinite(r["diff_low"]):
                diff += f" [{r['diff_low']:+.3f}, {r['diff_high']:+.3f}]"
        else:
            diff = "best"
        lines.append(
            f"| {r['rank']} | {r['model']} | {r['variant']} | {r['n_seeds']} | "
            f"{_fmt(r['score'])} | {_fmt(r['sd_seeds'])} | {ci} | {diff} | {_p(r['p_vs_best'])} |"
        )
    lines += ["", "## Ranking within each model", ""]
    for model, rows in study.table.groupby("model", sort=True):
        lines += [
            f"### {model}",
            "",
            "| rank | variant | score | SD seeds | Δ model best | p |",
            "|---:|---|---:|---:|---:|---:|",
        ]
        for _, r in rows.sort_values("rank_in_model", kind="stable").iterrows():
            diff = (
                f"{r['diff_vs_model_best']:+.3f}"
                if np.isfinite(r["diff_vs_model_best"])
                else "best"
            )
            lines.append(
                f"| {r['rank_in_model']} | {r['variant']} | {_fmt(r['score'])} | "
                f"{_fmt(r['sd_seeds'])} | {diff} | {_p(r['p_vs_model_best'])} |"
            )
        lines.append("")
    if study.notes:
        lines += ["## Left out", "", *(f"- {note}" for note in study.notes), ""]
    return "\n".join(lines) + "\n"


def make_study(
    metrics: Mapping[str, Path | str | None],
    variants: Mapping[str, Any] | None,
    loss: Mapping[str, Any] | None,
    csv_path: Path | str,
    md_path: Path | str,
    figures_dir: Path | str,
    settings: SummarySettings | None = None,
) -> Study:
    """:func:`summarize_study`, then ``study.csv``, ``study.md`` and :data:`STUDY_FIGURES`
    (what the ``study`` rule runs; all written atomically)."""
    from cellseg.figures import write_study_figures  # matplotlib only when drawing

    study = summarize_study(metrics, variants, loss, settings)
    with atomic_path(csv_path) as temporary:
        study.table.to_csv(temporary, index=False)
    write_text_atomic(md_path, study_markdown(study))
    write_study_figures(study, loss or {}, figures_dir)
    return study
