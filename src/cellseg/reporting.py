"""The comparison of the trained models: ``summary.csv``, ``summary.md`` and the figures.

Inputs are the per-model metrics CSVs of :mod:`cellseg.evaluation` (one row per crop × annotated
class), the trainers' ``train_summary.json`` and the training prior (``class_frequencies.json``).

Statistics (all over the held-out crops, one adjustment mode):

* **mean Dice**: per class, the mean of per-crop Dice over the crops annotating it; then the mean
  over classes. Its 95 % CI is a percentile bootstrap resampling crops
  (:func:`cellseg.metrics.bootstrap_ci`).
* **pooled Dice**: per class, the Dice of ``ΣTP, ΣFP, ΣFN`` over those crops (as the CellMap
  challenge scores); ``dice_<class>`` columns hold it per class, ``pooled_dice`` its mean over
  classes.
* **difference to the best**: the model's statistic minus the best model's on the crops both were
  evaluated on, with a paired bootstrap CI and two-sided p-value
  (:func:`cellseg.metrics.paired_bootstrap`), Holm-adjusted over the comparisons.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cellseg.classes import CLASS_INDEX, CLASSES, NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.io import atomic_path, write_text_atomic
from cellseg.metrics import (
    COUNT_NAMES,
    Statistic,
    aggregate_crops,
    bootstrap_ci,
    paired_bootstrap,
)

__all__ = [
    "BASELINE",
    "SUMMARY_FIGURES",
    "ModelFigureSettings",
    "Summary",
    "SummarySettings",
    "expected_models",
    "load_metrics",
    "make_model_figures",
    "make_summary",
    "metric_counts",
    "prior_baseline_counts",
    "summarize",
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
"""File names of the summary figures, in ``results/figures/summary/``."""


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
            bootstrapped and compared by.
        bootstrap_resamples: bootstrap resamples of the CIs and paired tests.
        bootstrap_seed: their seed.
        confidence: CI level.
        significance: Holm-adjusted p-value below which a difference is called significant.
    """

    adjustment: str | None = None
    rank_by: str = "mean"
    bootstrap_resamples: int = 2000
    bootstrap_seed: int = 0
    confidence: float = 0.95
    significance: float = 0.05

    def __post_init__(self) -> None:
        Statistic(self.rank_by)
        if self.bootstrap_resamples < 1:
            raise CellsegError("evaluation.bootstrap_resamples must be >= 1")

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
        winners: one row per class: best model by pooled Dice, its Dice, the baseline's.
        notes: one line per failed, not converged or missing model.
        missing: expected models with no results.
        adjustment: the adjustment mode compared.
        settings: the settings used.
        n_crops: crops evaluated (union over models).
        empty_score: mean Dice of a predictor that predicts nothing (``rank_by`` statistic).
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


def _statistic_estimate(counts: np.ndarray, statistic: Statistic) -> float:
    agg = aggregate_crops(counts)
    scores = agg.mean.dice if statistic is Statistic.MEAN else agg.pooled.dice
    scores = np.where(agg.n_crops > 0, scores, np.nan)
    return float(np.nanmean(scores)) if np.isfinite(scores).any() else float("nan")


def _ci(counts: np.ndarray, statistic: Statistic, s: SummarySettings) -> tuple[float, float]:
    if counts.shape[0] < 2:
        return float("nan"), float("nan")
    result = bootstrap_ci(
        counts, statistic, s.bootstrap_resamples, s.confidence, seed=s.bootstrap_seed
    )
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


def _holm(p_values: Sequence[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN)."""
    p = np.asarray(p_values, dtype=float)
    finite = np.flatnonzero(np.isfinite(p))
    adjusted = np.full_like(p, np.nan)
    order = finite[np.argsort(p[finite])]
    m, running = len(order), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (m - k) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


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
    statistic = Statistic(s.rank_by)
    expected = list(expected) if expected is not None else expected_models()
    rows: list[dict[str, Any]] = []
    counts_by_model: dict[str, tuple[list[str], np.ndarray]] = {}
    notes: list[str] = []
    modes: set[str] = set()
    gt_rows: list[pd.DataFrame] = []
    for key, path in metrics.items():
        model, _, dim = key.rpartition("_")
        row: dict[str, Any] = {"model": key, "architecture": model, "dim": dim}
        train = (
            _read_json((train_summaries or {}).get(key)) if train_summaries is not None else None
        )
        if path is None or not Path(path).is_file():
            row["status"] = "missing"
            notes.append(f"{key}: missing: no metrics ({path or 'not evaluated'})")
            rows.append(row)
            continue
        table, mode = load_metrics(path, s.adjustment)
        modes.add(mode)
        gt_rows.append(table)
        crops, counts = metric_counts(table)
        counts_by_model[key] = (crops, counts)
        row.update(
            n_crops=len(crops),
            **_dice_columns(counts, statistic, s),
            inference_seconds=float(table.groupby("crop")["inference_seconds"].first().sum())
            if "inference_seconds" in table
            else np.nan,
            adjustment=mode,
        )
        if train is not None:
            gpus = int(train.get("gpus", 0) or 0)
            row.update(
                preset=train.get("preset"),
                parameters=train.get("parameters"),
                epochs_run=train.get("epochs_run"),
                best_epoch=train.get("best_epoch"),
                stop_reason=train.get("stop_reason") or "unfinished",
                train_hours=float(train.get("train_seconds", np.nan)) / 3600,
                gpus=gpus,
                gpu_hours=train.get("gpu_hours"),
                cpu_hours=train.get("cpu_hours"),
                compute_hours=train.get("gpu_hours") if gpus else train.get("cpu_hours"),
                compute_unit="GPU" if gpus else "CPU",
            )
        score = row["mean_dice"] if statistic is Statistic.MEAN else row["pooled_dice"]
        if train_summaries is not None:
            row["status"], why = _status(train, score)
        else:
            row["status"], why = ("ok", "") if math.isfinite(score) else ("failed", "no Dice")
        if why:
            notes.append(f"{key}: {row['status']}: {why}")
        rows.append(row)
    if not counts_by_model:
        raise CellsegError(
            "no model has a metrics CSV; run the evaluate rule for at least one model"
        )
    if len(modes) > 1:
        raise CellsegError(
            f"metrics CSVs have different primary adjustment modes {sorted(modes)}; "
            "set evaluation.adjustment_modes so that they share the first"
        )
    score_column = "mean_dice" if statistic is Statistic.MEAN else "pooled_dice"

    # baseline: ground truth of every crop × class seen by any model
    baseline_row: dict[str, Any] | None = None
    baseline_counts: tuple[list[str], np.ndarray] | None = None
    all_gt = pd.concat(gt_rows).drop_duplicates(["crop", "class"])
    gt_crops, gt_counts = metric_counts(all_gt)
    if class_frequencies is not None:
        from cellseg.losses import read_class_frequencies

        prior = read_class_frequencies(class_frequencies)["prior"]
        expected_counts = prior_baseline_counts(gt_counts, prior)
        baseline_counts = (gt_crops, expected_counts)
        baseline_row = {
            "model": BASELINE,
            "architecture": "prior",
            "dim": "",
            "status": "baseline",
            "n_crops": len(gt_crops),
            **_dice_columns(expected_counts, statistic, s),
            "adjustment": "",
        }
    # an image-blind predictor of nothing: TP = FP = 0, FN = P (empty crops score 1)
    nothing = gt_counts.copy()
    nothing[..., 3] += nothing[..., 1]
    nothing[..., 2] += nothing[..., 0]
    nothing[..., 0] = nothing[..., 1] = 0
    empty_score = _statistic_estimate(nothing, statistic)

    # rank and compare with the best
    table = pd.DataFrame(rows)
    ranked = table[table["status"].isin(["ok", "not converged"]) & table[score_column].notna()]
    ranked = ranked.sort_values(score_column, ascending=False, kind="stable")
    table["rank"] = np.nan
    table.loc[ranked.index, "rank"] = np.arange(1, len(ranked) + 1)
    best = str(ranked.iloc[0]["model"]) if len(ranked) else None
    comparisons: dict[str, Any] = {}
    if best is not None:
        best_crops, best_counts = counts_by_model[best]
        others = {k: v for k, v in counts_by_model.items() if k != best}
        if baseline_counts is not None:
            others[BASELINE] = baseline_counts
        for key, (crops, counts) in others.items():
            shared = sorted(set(crops) & set(best_crops))
            if len(shared) < 2:
                continue
            a = counts[[crops.index(c) for c in shared]]
            b = best_counts[[best_crops.index(c) for c in shared]]
            comparisons[key] = paired_bootstrap(
                a, b, statistic, s.bootstrap_resamples, s.confidence, seed=s.bootstrap_seed
            )
    if baseline_row is not None:
        table = pd.concat([table, pd.DataFrame([baseline_row])], ignore_index=True)
    table["best_model"] = best
    for column in ("diff_to_best", "diff_ci_low", "diff_ci_high", "p_value"):
        table[column] = np.nan
    for key, result in comparisons.items():
        i = table.index[table["model"] == key][0]
        table.loc[i, ["diff_to_best", "diff_ci_low", "diff_ci_high", "p_value"]] = [
            result.estimate,
            result.low,
            result.high,
            result.p_value,
        ]
    if best is not None:
        table.loc[table["model"] == best, "diff_to_best"] = 0.0
    table["p_holm"] = _holm(table["p_value"].tolist())
    table["significant"] = table["p_holm"] < s.significance
    if baseline_row is not None:
        base = baseline_row[score_column]
        low_column = f"{score_column}_ci_low"
        table["above_baseline"] = np.where(
            table["model"] == BASELINE,
            np.nan,
            (table[low_column] > base) if low_column in table else table[score_column] > base,
        )
    table = _order_columns(table.sort_values(["rank"], na_position="last", kind="stable"))
    for column in ("rank", "parameters", "epochs_run", "best_epoch", "gpus", "n_crops"):
        table[column] = pd.array(table[column], dtype="Float64").round().astype("Int64")

    winners = _winners(table)
    configured = set(metrics)
    missing = [k for k in expected if k not in configured or k not in counts_by_model]
    for key in expected:
        if key not in configured:
            notes.append(f"{key}: missing: expected but not in the config's models")
    return Summary(
        table=table.reset_index(drop=True),
        winners=winners,
        notes=notes,
        missing=missing,
        adjustment=modes.pop(),
        settings=s,
        n_crops=len(gt_crops),
        empty_score=empty_score,
        counts=counts_by_model,
    )


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
    "above_baseline",
    "best_model",
    "diff_to_best",
    "diff_ci_low",
    "diff_ci_high",
    "p_value",
    "p_holm",
    "significant",
]


def _order_columns(table: pd.DataFrame) -> pd.DataFrame:
    for column in _LEADING[:18]:
        if column not in table:
            table[column] = np.nan
    leading = [c for c in _LEADING if c in table]
    per_class = [f"dice_{name}" for name in CLASSES if f"dice_{name}" in table]
    rest = [c for c in table if c not in leading and c not in per_class]
    return table[leading + per_class + rest]


def _winners(table: pd.DataFrame) -> pd.DataFrame:
    models = table[table["rank"].notna()]
    baseline = table[table["model"] == BASELINE]
    rows = []
    for name in CLASSES:
        column = f"dice_{name}"
        scores = models[["model", column]].dropna()
        if scores.empty:
            rows.append(
                {"class": name, "winner": "", "dice": np.nan, "runner_up": "", "margin": np.nan}
            )
            continue
        scores = scores.sort_values(column, ascending=False, kind="stable")
        top_score = scores[column].iloc[0]
        tied = scores[scores[column] >= top_score - 1e-12]
        rest = scores[scores[column] < top_score - 1e-12]
        rows.append(
            {
                "class": name,
                # ties (e.g. every model at 0) name every tied model rather than a random one
                "winner": ", ".join(tied["model"]),
                "dice": top_score,
                "runner_up": "" if rest.empty else rest["model"].iloc[0],
                "margin": np.nan if rest.empty else top_score - rest[column].iloc[0],
                "baseline": baseline[column].iloc[0] if len(baseline) else np.nan,
            }
        )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ writing


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _hours(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:.3g}"


def summary_markdown(summary: Summary) -> str:
    """``summary.md``: the ranked table, winners per class, significance, problems."""
    s = summary.settings
    stat = "mean Dice over crops" if s.rank_by == "mean" else "pooled Dice"
    table = summary.table
    lines = [
        "# cellseg model comparison",
        "",
        f"{summary.n_crops} held-out crops, logit adjustment `{summary.adjustment}`, ranked by "
        f"{stat}. **Mean Dice**: per class the mean of per-crop Dice over the crops annotating "
        "it, then the mean over classes, with a "
        f"{s.confidence:.0%} percentile bootstrap CI over crops ({s.bootstrap_resamples} "
        f"resamples, seed {s.bootstrap_seed}). **Pooled Dice**: per class the Dice of ΣTP, ΣFP, "
        "ΣFN over crops (the CellMap challenge's scoring), then the mean over classes. "
        "**A class whose prediction and ground truth are both empty in a crop scores 1** "
        "(column `empty` of the metrics CSVs).",
        "",
        "| rank | model | status | mean Dice [CI] | pooled Dice | Δ to best [CI] | p (Holm) "
        "| GPU/CPU-h | parameters | epochs (best) | stop |",
        "|---:|---|---|---|---:|---|---:|---:|---:|---|---|",
    ]
    for _, r in table.iterrows():
        rank = "–" if pd.isna(r["rank"]) else str(int(r["rank"]))
        ci = (
            f"{_fmt(r.get('mean_dice'))} [{_fmt(r.get('mean_dice_ci_low'))}, "
            f"{_fmt(r.get('mean_dice_ci_high'))}]"
        )
        diff = (
            "–"
            if pd.isna(r.get("diff_to_best"))
            else (
                "best"
                if r["model"] == r["best_model"]
                else f"{r['diff_to_best']:+.3f} [{_fmt(r['diff_ci_low'])}, {_fmt(r['diff_ci_high'])}]"
            )
        )
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
            f"{diff} | {_fmt(r.get('p_holm'))} | {hours} | {params} | {epochs} | "
            f"{_fmt(r.get('stop_reason'))} |"
        )
    lines += [
        "",
        f"**Baseline (prior)**: an image-blind predictor marking each voxel of class c positive "
        "with probability f_c (the training prior), scored by its expected counts on each crop "
        "(chance level). A model is *above baseline* when its CI's lower bound exceeds the "
        f"baseline's estimate. Predicting nothing at all would score {_fmt(summary.empty_score)} "
        f"({stat}), only from empty crop × class pairs scoring 1.",
    ]
    if "above_baseline" in table:
        models = table[table["model"] != BASELINE]
        below = models[(models["above_baseline"] != True) & models["mean_dice"].notna()]  # noqa: E712
        lines.append(
            "All evaluated models are above the baseline."
            if below.empty
            else f"Not clearly above the baseline: {', '.join(below['model'])}."
        )
    lines += ["", "## Winner per class (pooled Dice)", ""]
    lines += [
        "| class | winner | Dice | runner-up | margin | baseline |",
        "|---|---|---:|---|---:|---:|",
    ]
    for _, w in summary.winners.iterrows():
        lines.append(
            f"| {w['class']} | {w['winner'] or '–'} | {_fmt(w['dice'])} | {w['runner_up'] or '–'} "
            f"| {_fmt(w['margin'])} | {_fmt(w.get('baseline'))} |"
        )
    lines += ["", "## Differences to the best model", ""]
    best = table["best_model"].iloc[0] if len(table) else None
    compared = table[table["p_value"].notna()]
    if best is None or compared.empty:
        lines.append("No paired comparison (fewer than two models or two shared crops).")
    else:
        lines.append(
            f"Paired bootstrap over the crops shared with the best model, **{best}**; "
            f"Holm-adjusted over {len(compared)} comparisons, significant at "
            f"{s.significance}."
        )
        lines.append("")
        for _, r in compared.iterrows():
            verdict = "significantly worse" if r["significant"] else "not significantly different"
            lines.append(
                f"- {r['model']}: {verdict} (Δ {r['diff_to_best']:+.3f}, CI "
                f"[{_fmt(r['diff_ci_low'])}, {_fmt(r['diff_ci_high'])}], p = {_fmt(r['p_holm'])})"
            )
    lines += ["", "## Failed, not converged or missing models", ""]
    lines += [f"- {note}" for note in summary.notes] or ["None: every expected model finished."]
    if summary.missing:
        lines += ["", f"Missing from this comparison: {', '.join(summary.missing)}."]
    return "\n".join(lines) + "\n"


def write_summary(
    summary: Summary, csv_path: Path | str, md_path: Path | str, figures_dir: Path | str
) -> None:
    """Write ``summary.csv``, ``summary.md`` and :data:`SUMMARY_FIGURES` (atomically)."""
    with atomic_path(csv_path) as temporary:
        summary.table.to_csv(temporary, index=False)
    write_text_atomic(md_path, summary_markdown(summary))
    figures_dir = Path(figures_dir)
    for name, draw in zip(
        SUMMARY_FIGURES, (heatmap_figure, mean_dice_figure, pareto_figure, dim_figure), strict=True
    ):
        _save(draw(summary.table), figures_dir / name)


def make_summary(
    metrics: Mapping[str, Path | str | None],
    train_summaries: Mapping[str, Path | str | None] | None,
    class_frequencies: Path | str | None,
    csv_path: Path | str,
    md_path: Path | str,
    figures_dir: Path | str,
    expected: Sequence[str] | None = None,
    settings: SummarySettings | None = None,
) -> Summary:
    """:func:`summarize` then :func:`write_summary` (what the ``summary`` rule runs)."""
    summary = summarize(metrics, train_summaries, class_frequencies, expected, settings)
    write_summary(summary, csv_path, md_path, figures_dir)
    return summary


# ------------------------------------------------------------------------------ figures


def _save(figure: Figure, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)


def _models(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["mean_dice"].notna()]


def heatmap_figure(table: pd.DataFrame) -> Figure:
    """Per-class pooled Dice, models (ranked, baseline last) × classes; unannotated grey."""
    rows = _models(table)
    values = rows[[f"dice_{name}" for name in CLASSES]].to_numpy(dtype=float)
    figure, ax = plt.subplots(figsize=(11, 1.2 + 0.45 * max(len(rows), 1)))
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    for (i, j), v in np.ndenumerate(values):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="k" if v > 0.6 else "w")  # fmt: skip
    ax.set_xticks(range(NUM_CLASSES), CLASSES, rotation=60, ha="right")
    ax.set_yticks(range(len(rows)), rows["model"])
    ax.set_title("pooled Dice per class (grey: no test crop annotates it)")
    figure.colorbar(image, ax=ax, label="Dice")
    figure.tight_layout()
    return figure


def mean_dice_figure(table: pd.DataFrame) -> Figure:
    """Mean Dice over crops with CI bars, ranked; the baseline as a dashed line."""
    rows = _models(table)
    models = rows[rows["model"] != BASELINE]
    baseline = rows[rows["model"] == BASELINE]
    figure, ax = plt.subplots(figsize=(max(5, 0.8 * len(models) + 2), 4))
    x = np.arange(len(models))
    low = (models["mean_dice"] - models["mean_dice_ci_low"]).clip(lower=0).fillna(0)
    high = (models["mean_dice_ci_high"] - models["mean_dice"]).clip(lower=0).fillna(0)
    colours = ["tab:blue" if d == "2d" else "tab:orange" for d in models["dim"]]
    ax.bar(x, models["mean_dice"], color=colours, yerr=[low, high], capsize=4, edgecolor="k")
    ax.plot(x, models["pooled_dice"], "kD", label="pooled Dice", markersize=5)
    if len(baseline):
        ax.axhline(baseline["mean_dice"].iloc[0], ls="--", color="0.3", label=BASELINE)
    ax.set_xticks(x, models["model"], rotation=30, ha="right")
    ax.set(ylabel="mean Dice over crops", ylim=(0, 1), title="mean Dice with 95 % bootstrap CI")
    ax.legend(fontsize="small")
    figure.tight_layout()
    return figure


def pareto_figure(table: pd.DataFrame) -> Figure:
    """Mean Dice against training cost (GPU-hours; CPU-hours for CPU runs), Pareto front."""
    rows = _models(table)
    models = rows[(rows["model"] != BASELINE) & rows["compute_hours"].notna()]
    figure, ax = plt.subplots(figsize=(6.5, 4.5))
    if len(models):
        cost = models["compute_hours"].astype(float).clip(lower=1e-6).to_numpy()
        dice = models["mean_dice"].astype(float).to_numpy()
        for unit, marker in (("GPU", "o"), ("CPU", "s")):
            mask = (models["compute_unit"] == unit).to_numpy()
            if mask.any():
                ax.scatter(cost[mask], dice[mask], marker=marker, s=50, label=f"{unit}-hours",
                           edgecolor="k")  # fmt: skip
        for c, d, name in zip(cost, dice, models["model"], strict=True):
            ax.annotate(name, (c, d), textcoords="offset points", xytext=(4, 4), fontsize=8)
        order = np.argsort(cost)
        front, best = [], -np.inf
        for i in order:
            if dice[i] > best:
                front.append(i)
                best = dice[i]
        ax.step(cost[front], dice[front], where="post", color="0.4", ls=":", label="Pareto front")
        ax.set_xscale("log")
        ax.legend(fontsize="small")
    baseline = rows[rows["model"] == BASELINE]
    if len(baseline):
        ax.axhline(baseline["mean_dice"].iloc[0], ls="--", color="0.3")
    ax.set(xlabel="training cost (GPU-hours, or CPU-hours without GPU)", ylabel="mean Dice",
           title="quality vs cost")  # fmt: skip
    figure.tight_layout()
    return figure


def dim_figure(table: pd.DataFrame) -> Figure:
    """2D against 3D per architecture: mean Dice with CI bars side by side."""
    rows = _models(table)
    models = rows[rows["model"] != BASELINE]
    architectures = list(dict.fromkeys(models["architecture"]))
    figure, ax = plt.subplots(figsize=(max(5, 1.4 * len(architectures) + 2), 4))
    x = np.arange(len(architectures))
    for k, (dim, colour) in enumerate((("2d", "tab:blue"), ("3d", "tab:orange"))):
        values, low, high = [], [], []
        for arch in architectures:
            match = models[(models["architecture"] == arch) & (models["dim"] == dim)]
            if len(match):
                r = match.iloc[0]
                values.append(r["mean_dice"])
                low.append(
                    max(0.0, r["mean_dice"] - r["mean_dice_ci_low"])
                    if pd.notna(r["mean_dice_ci_low"])
                    else 0
                )
                high.append(
                    max(0.0, r["mean_dice_ci_high"] - r["mean_dice"])
                    if pd.notna(r["mean_dice_ci_high"])
                    else 0
                )
            else:
                values.append(np.nan)
                low.append(0)
                high.append(0)
        ax.bar(x + (k - 0.5) * 0.38, np.nan_to_num(values), width=0.38, yerr=[low, high],
               capsize=3, color=colour, edgecolor="k", label=dim.upper())  # fmt: skip
        for xi, v in zip(x, values, strict=True):
            if np.isnan(v):
                ax.text(xi + (k - 0.5) * 0.38, 0.02, "n/a", ha="center", fontsize=7, rotation=90)
    ax.set_xticks(x, architectures)
    ax.set(ylabel="mean Dice over crops", ylim=(0, 1), title="2D vs 3D per architecture")
    ax.legend()
    figure.tight_layout()
    return figure


# ------------------------------------------------------------------------------ model figures


@dataclass(frozen=True)
class ModelFigureSettings:
    """Per-model figures (the ``visualize`` rule).

    Attributes:
        samples: input / ground truth / prediction rows (the seed's 3).
        seed: which crops and slices (the seed's 42).
    """

    samples: int = 3
    seed: int = 42

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> ModelFigureSettings:
        section = section or {}
        return cls(
            samples=int(section.get("figure_samples", cls.samples)),
            seed=int(section.get("figure_seed", cls.seed)),
        )


def sample_slices(
    n_crops: int, depths: Sequence[int], samples: int, seed: int
) -> list[tuple[int, int]]:
    """Which ``(crop, z slice)`` to show: distinct crops in a seeded order (middle slice first),
    cycling through them again with random slices when there are fewer crops than samples."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_crops)
    picks = []
    for k in range(samples if n_crops else 0):
        crop = int(order[k % n_crops])
        depth = depths[crop]
        z = depth // 2 if k < n_crops else int(rng.integers(depth))
        picks.append((crop, z))
    return picks


def make_model_figures(
    checkpoint: Path | str,
    history: Path | str,
    datasplit: Path | str,
    samples_path: Path | str,
    curves_path: Path | str,
    figure_settings: ModelFigureSettings | None = None,
    evaluation_settings: Any = None,
    split: str = "test",
) -> None:
    """The ``visualize`` rule: sample panels of test crops and training curves of one model.

    Samples are z slices of the prediction grid (the model's resolution) of seeded test crops;
    the ground truth is shown on that grid (nearest label voxel) and unannotated voxels are grey
    and hatched. Probabilities use the evaluation's first adjustment mode.
    """
    from cellseg.data.datasplit import read_datasplit
    from cellseg.data.patches import CropReader, PatchGrid
    from cellseg.data.store import read_crop_geometry
    from cellseg.evaluation import (
        EvaluationSettings,
        PredictionGrid,
        Predictor,
        predict_slab,
        resolve_device,
    )
    from cellseg.losses import adjusted_probabilities
    from cellseg.visualization import crop_panels_figure, training_curves_figure

    fs = figure_settings or ModelFigureSettings()
    es = evaluation_settings or EvaluationSettings()
    device = resolve_device(es.device)
    predictor = Predictor.from_checkpoint(checkpoint, device)
    mode = predictor.modes(es)[0]
    crops = read_datasplit(datasplit, [split])
    geometries = [read_crop_geometry(crop, predictor.resolution_nm) for crop in crops]
    grids = [PredictionGrid.for_crop(g, predictor.resolution_nm) for g in geometries]
    panels = []
    for index, z in sample_slices(len(crops), [g.shape[0] for g in grids], fs.samples, fs.seed):
        geometry, grid = geometries[index], grids[index]
        em, logits = predict_slab(predictor, geometry, (z, z + 1), es, device)
        probabilities = adjusted_probabilities(logits[None], predictor.logit_shift, mode)[0]
        r = grid.resolution_nm
        yy, xx = np.meshgrid(
            grid.origin_nm[1] + np.arange(grid.shape[1]) * r,
            grid.origin_nm[2] + np.arange(grid.shape[2]) * r,
            indexing="ij",
        )
        z_nm = np.array([grid.origin_nm[0] + z * r])
        reader = CropReader(geometry, r, predictor.em_range, infer_true_negatives=False)
        _, target = reader.read(PatchGrid(z_nm, np.stack([yy, xx], axis=-1)))
        panels.append(
            (em[0], target[:, 0], probabilities[:, 0].numpy(), f"{crops[index].name}, z={z}")
        )
    figure = crop_panels_figure(panels, f"{predictor.key}: test crops (adjustment {mode})")
    _save(figure, Path(samples_path))
    table = pd.read_csv(history)
    _save(training_curves_figure(table, title=predictor.key), Path(curves_path))


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
    parser.add_argument("--figures", type=Path, default=Path("results/figures/summary"))
    parser.add_argument("--adjustment", default=None, choices=["train", "none"])
    parser.add_argument("--rank-by", default="mean", choices=["mean", "pooled"])
    parser.add_argument("--bootstrap-resamples", type=int, default=2000)
    parser.set_defaults(func=_run_summary)


def _run_summary(args: argparse.Namespace) -> int:
    metrics = {path.stem: path for path in args.metrics}
    train = {key: args.models_dir / key / "train_summary.json" for key in metrics}
    settings = SummarySettings(
        adjustment=args.adjustment,
        rank_by=args.rank_by,
        bootstrap_resamples=args.bootstrap_resamples,
    )
    summary = make_summary(
        metrics, train, args.class_frequencies, args.out_csv, args.out_md, args.figures,
        settings=settings,
    )  # fmt: skip
    print(f"{args.out_csv}: {len(summary.table)} rows; best {summary.table['best_model'].iloc[0]}",
          file=sys.stderr)  # fmt: skip
    return 0
