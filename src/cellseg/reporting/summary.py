"""The comparison of the trained models: the table behind ``summary.csv`` and ``summary.md``.

Inputs are the per-model metrics CSVs of :mod:`cellseg.evaluation` (one row per crop × annotated
class), the trainers' ``train_summary.json`` and the training prior (``class_frequencies.json``).
The statistics are :mod:`cellseg.statistics`; the tables are rendered by
:mod:`cellseg.reporting.markdown` and drawn by :mod:`cellseg.reporting.figures`.

What is compared (all over the held-out crops, one adjustment mode):

* **mean Dice**: per class, the mean of per-crop Dice over the crops annotating it; then the mean
  over the classes any crop annotates. Its CI is a t-interval over crops with the class set held
  fixed (:func:`cellseg.statistics.mean_dice_interval`; coverage checked on synthetic data).
* **pooled Dice**: per class, the Dice of ``ΣTP, ΣFP, ΣFN`` over those crops (as the CellMap
  challenge scores); ``dice_<class>`` columns hold it per class, ``pooled_dice`` its mean over
  classes.
* **pooled IoU**: per class, the IoU of ``ΣTP, ΣFP, ΣFN`` over crops (``iou_<class>``), and its
  mean over classes (``pooled_iou``); the challenge reports IoU.
* **challenge score on our test crops** (``challenge_*`` columns; not a leaderboard number): the
  CellMap challenge's official scorer (:mod:`cellseg.challenge`, at
  :data:`cellseg.challenge.CHALLENGE_SOURCE`, quirks included) applied to our crops and classes:
  pooled IoU per semantic class; for the instance class ``nuc``, F1 of one-to-one matched
  instances and the mean normalised Hausdorff distance pooled over crops, combined as
  ``sqrt(F1 × Hausdorff)``; overall ``sqrt(mean instance × mean semantic)``. The same with the
  scorer's two quirks corrected: ``challenge_corrected_*`` columns.
* **difference to the best**: the model's statistic minus the best model's on the crops both were
  evaluated on, with a t-interval and an exact sign-flip permutation p-value
  (:func:`cellseg.statistics.paired_comparison`); ``p_adjusted`` is the simultaneous test of
  every pair of models (:func:`cellseg.statistics.compare_with_best`), valid whatever their
  spreads.
* **units of inference**: with test crops (``dataset/cropN``) from at least
  ``min_datasets_for_clusters`` datasets, every interval and test counts datasets, and the claims
  are about new datasets like these (``inference_unit`` ``dataset``); with fewer, crops, and the
  claims are about these datasets (``crop``).
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

The parts: :mod:`cellseg.reporting.summary_inputs` (the settings, the metrics CSVs read into
per-crop counts, the units of inference, the prior baseline's counts) and
:mod:`cellseg.reporting.summary_columns` (a model's columns from its counts); this module
loads each model, ranks them, compares each with the best and names the winner per class.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg.classes import CLASSES, NUM_CLASSES
from cellseg.config.settings import Run
from cellseg.errors import CellsegError
from cellseg.groups import group_columns
from cellseg.metrics import Statistic
from cellseg.reporting.summary_columns import (
    challenge_columns,
    dice_columns,
    iou_columns,
    order_columns,
    statistic_estimate,
    train_columns,
)
from cellseg.reporting.summary_inputs import (
    BASELINE,
    SummarySettings,
    expected_models,
    inference_unit,
    inference_units,
    load_metrics,
    metric_counts,
    prior_baseline_counts,
)
from cellseg.reporting.tta import seconds_per_voxel, tta_comparison
from cellseg.statistics import (
    PairedComparison,
    compare_with_best,
    dataset_of,
    holm,
    mean_dice_interval,
    paired_comparison,
    rank_sets,
    sign_flip_p_value,
)

# ------------------------------------------------------------------------------ loading


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
        n_datasets: datasets the crops come from (``dataset/cropN``).
        inference_unit: ``dataset`` (claims about new datasets like these) or ``crop`` (claims
            about these datasets), :func:`inference_unit` of all the test crops.
        conservative: the intervals that rest on the conservative variance because the
            unbiased estimate was not positive (:class:`cellseg.statistics.Interval`), e.g.
            ``unet_2d mean Dice``, ``unet_2d − best``.
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
    conservative: list[str] = field(default_factory=list)
    n_datasets: int = 0
    inference_unit: str = "crop"
    tta: pd.DataFrame | None = None


@dataclass
class _Model:
    """One configured model while summarising: its row and, when evaluated, its counts."""

    row: dict[str, Any]
    crops: list[str] = field(default_factory=list)
    counts: np.ndarray | None = None
    metrics: pd.DataFrame | None = None
    note: str = ""


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
        n_datasets=len({dataset_of(crop) for crop in crops}),
        inference_unit=inference_unit(crops, s),
        **dice_columns(counts, statistic, s, crops),
        **iou_columns(counts),
        **group_columns(table),
        **challenge_columns(table, counts),
        inference_seconds=seconds,
        # costs.csv: the test-time augmentation timed and the time per predicted voxel
        tta=str(table["tta"].iloc[0]) if "tta" in table and len(table) else "none",
        inference_us_per_voxel=1e6 * seconds_per_voxel(table),
        adjustment=mode,
    )
    train = None
    if train_summaries is not None:
        train = _read_json(train_summaries.get(key))
    if train is not None:
        row.update(train_columns(train))
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
        "n_datasets": len({dataset_of(crop) for crop in gt_crops}),
        "inference_unit": inference_unit(gt_crops, s),
        **dice_columns(expected, Statistic(s.rank_by), s, gt_crops),
        **iou_columns(expected),
        **challenge_columns(None, expected),
        "adjustment": "",
    }
    return _Model(row, gt_crops, expected)


def _nothing_score(gt_counts: np.ndarray, statistic: Statistic) -> float:
    """The statistic of predicting nothing: TP = FP = 0, FN = P (empty crops score 1)."""
    nothing = gt_counts.copy()
    nothing[..., 3] += nothing[..., 1]
    nothing[..., 2] += nothing[..., 0]
    nothing[..., 0] = nothing[..., 1] = 0
    return statistic_estimate(nothing, statistic)


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


def _shared(
    a: _Model, b: _Model, classes: slice | list[int]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Counts of ``a`` and ``b`` on their shared crops, zero where either does not annotate, and
    those crops' names."""
    assert a.counts is not None and b.counts is not None
    shared = sorted(set(a.crops) & set(b.crops))
    counts_a = a.counts[[a.crops.index(c) for c in shared]][:, classes]
    counts_b = b.counts[[b.crops.index(c) for c in shared]][:, classes]
    both = (counts_a.sum(axis=-1) > 0) & (counts_b.sum(axis=-1) > 0)
    counts_a, counts_b = (np.where(both[..., None], x, 0.0) for x in (counts_a, counts_b))
    keep = both.any(axis=1)
    return counts_a[keep], counts_b[keep], [c for c, k in zip(shared, keep, strict=True) if k]


@dataclass
class _Comparison:
    """A model against the best on their shared crops (``result`` None: too few crops)."""

    difference: float
    n_crops: int
    result: PairedComparison | None


def _compare(model: _Model, best: _Model, s: SummarySettings) -> _Comparison:
    statistic = Statistic(s.rank_by)
    a, b, crops = _shared(model, best, slice(None))
    if a.shape[0] == 0:
        return _Comparison(float("nan"), 0, None)
    difference = statistic_estimate(a, statistic) - statistic_estimate(b, statistic)
    if a.shape[0] < s.min_crops_for_statistics:
        return _Comparison(difference, a.shape[0], None)
    result = paired_comparison(
        a,
        b,
        statistic,
        s.confidence,
        s.permutation_resamples,
        s.permutation_seed,
        *inference_units(crops, s),
    )
    return _Comparison(result.estimate, a.shape[0], result)


_COMPARISON_COLUMNS = ("diff_to_best", "diff_ci_low", "diff_ci_high", "p_value", "compared_crops")


def _best_selection(
    table: pd.DataFrame, evaluated: Mapping[str, _Model], s: SummarySettings
) -> tuple[dict[str, float], dict[str, tuple[int, int, float]], str | None]:
    """For each ranked model: its family-wise p-value of "worse than the best", the best
    chosen from the same crops (:func:`cellseg.statistics.compare_with_best`: a studentized
    step-down max-T over every pair, whole datasets flipped when they are the units), and its
    simultaneous rank set and share of crop resamples in which it is best
    (:func:`cellseg.statistics.rank_sets`).

    Returns:
        ``({model: p}, {model: (rank low, rank high, p_best)}, why there are none)``: nothing
        (and the reason) with fewer than 2 ranked models, fewer than
        ``min_crops_for_statistics`` crops, or models evaluated on different crops (the
        flips act on every model's results of a crop at once).
    """
    ranked = [str(m) for m in table.sort_values("rank")["model"][table["rank"].notna()]]
    if len(ranked) < 2:
        return {}, {}, None
    crops = [evaluated[key].crops for key in ranked]
    if any(c != crops[0] for c in crops):
        return {}, {}, "the ranked models were not all evaluated on the same crops"
    if len(crops[0]) < s.min_crops_for_statistics:
        return {}, {}, None
    counts = [evaluated[key].counts for key in ranked]
    statistic = Statistic(s.rank_by)
    clusters, strata = inference_units(crops[0], s)
    best = compare_with_best(
        counts, statistic, s.best_permutations, s.permutation_seed, clusters, strata
    )
    ranks = rank_sets(
        counts, statistic, s.confidence, s.rank_resamples, s.permutation_seed, clusters, best
    )
    return (
        {key: float(p) for key, p in zip(ranked, best.p_adjusted, strict=True)},
        {
            key: (int(ranks.low[i]), int(ranks.high[i]), float(ranks.p_best[i]))
            for i, key in enumerate(ranked)
        },
        None,
    )


def _add_comparisons(
    table: pd.DataFrame,
    best: str | None,
    comparisons: Mapping[str, _Comparison],
    adjusted: Mapping[str, float],
    s: SummarySettings,
) -> pd.DataFrame:
    """The columns of each model's difference to the best: its CI, the paired test's p-value
    and the family-wise ``p_adjusted`` that accounts for choosing the best (:func:`_best_selection`;
    NaN for the baseline, which is not a candidate for best: ``above_baseline`` says how a
    model compares with it)."""
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
    table["p_adjusted"] = [adjusted.get(str(model), np.nan) for model in table["model"]]
    significant = pd.array(table["p_adjusted"] < s.significance, dtype="boolean")
    significant[table["p_adjusted"].isna().to_numpy()] = pd.NA
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
    adjusted, rank_set, unadjusted_reason = _best_selection(table, evaluated, s)
    table = _add_comparisons(table, best, comparisons, adjusted, s)
    for column, k in (("rank_low", 0), ("rank_high", 1), ("p_best", 2)):
        table[column] = [
            rank_set[str(m)][k] if str(m) in rank_set else np.nan for m in table["model"]
        ]
    if baseline is not None:
        table = _add_above_baseline(table, baseline, s)
    table = order_columns(table.sort_values(["rank"], na_position="last", kind="stable"))

    conservative = [
        f"{key} {'mean' if statistic is Statistic.MEAN else 'pooled'} Dice"
        for key, model in evaluated.items()
        if model.counts.shape[0] >= s.min_crops_for_statistics
        for statistic in dict.fromkeys((Statistic.MEAN, Statistic(s.rank_by)))
        if mean_dice_interval(
            model.counts,
            statistic,
            s.confidence,
            *inference_units(model.crops, s),
        ).conservative
    ]
    conservative += [
        f"{key} − best"
        for key, comparison in comparisons.items()
        if comparison.result is not None and comparison.result.conservative
    ]
    notes = [m.note for m in models.values() if m.note]
    if unadjusted_reason:
        notes.append(
            f"no p_adjusted and no rank sets: {unadjusted_reason}; compare them on the same "
            "test crops"
        )
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
        conservative=conservative,
        n_datasets=len({dataset_of(crop) for crop in gt_crops}),
        inference_unit=inference_unit(gt_crops, s),
        tta=tta_comparison(metrics),
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


def _class_test(c: int, leader: _Model, runner_up: _Model, s: SummarySettings) -> tuple[int, float]:
    """``(crops, p)`` of the leader against the runner-up on the crops annotating class ``c``
    (pooled Dice of the class, sign-flip test; p NaN with too few crops)."""
    a, b, crops = _shared(leader, runner_up, [c])
    if a.shape[0] < s.min_crops_for_statistics:
        return a.shape[0], float("nan")
    p_value, _ = sign_flip_p_value(
        a,
        b,
        Statistic.POOLED,
        s.permutation_resamples,
        s.permutation_seed,
        inference_units(crops, s)[0],
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
