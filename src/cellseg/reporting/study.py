"""A study: runs grouped by (model, variant) over seeds, ranked with intervals over seeds
(the table behind ``study.csv`` and ``study.md``)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg.classes import CLASSES, NUM_CLASSES
from cellseg.config.settings import Run
from cellseg.errors import CellsegError
from cellseg.metrics import Statistic
from cellseg.reporting.summary_inputs import SummarySettings, load_metrics, metric_counts
from cellseg.statistics import (
    class_values,
    compare_runs_with_best,
    compare_with_best,
    holm,
    mean_over_classes,
    replicate_mean_interval,
)

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
    """Two-sided p of the t statistic ``estimate / se`` with ``df`` degrees of freedom.

    Infinite ``df`` is the normal limit: the interval of tied differences (every seed and crop
    gave the same difference, :func:`cellseg.statistics.intervals.tie_interval`) reports the
    standard error that makes p < α exactly when 0 is outside it. A standard error of 0 (no
    longer produced by the intervals) is the limit of the t test: p = 1 for a zero difference,
    else 0. NaN only when there is no standard error at all (too few crops).
    """
    from scipy import stats

    if not (np.isfinite(se) and df > 0):
        return float("nan")
    if se <= 0:
        return 1.0 if estimate == 0 else 0.0
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
    table, untested = _add_group_comparisons(table, arrays, s)
    notes += untested
    table = table.sort_values(["rank", "group"], kind="stable").reset_index(drop=True)
    mode = modes.pop()
    return Study(table, pd.DataFrame(seed_rows), s, mode, len(shared), notes)


def _add_group_comparisons(
    table: pd.DataFrame, arrays: Mapping[str, np.ndarray], s: SummarySettings
) -> tuple[pd.DataFrame, list[str]]:
    """``diff_vs_best`` (+ CI, Holm-adjusted ``p_vs_best``) against the best group overall and
    ``diff_vs_model_best`` (+ Holm-adjusted ``p_vs_model_best``) against the best of its model.

    Returns:
        the table, and one note per comparison left out of its Holm family (no p-value: too
        few crops, or seeds that cannot be paired), so none leaves it silently.
    """
    table = table.copy()
    untested: list[str] = []
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
                else:
                    untested.append(
                        f"{row['group']} vs {best}: not tested (p_vs_{suffix} empty): "
                        f"{_why_untested(arrays[row['group']], arrays[best], s)}"
                    )
            selection = _selection_p_values(scope, arrays, best, s)
            for i, p in zip(tested, holm(p_values), strict=True):
                # both must call it worse: the t test counts crops and seeds but not the
                # choice of the best; the permutation test counts that choice on these crops
                table.loc[i, f"p_vs_{suffix}"] = max(p, selection[i])
    return table, untested


def _selection_p_values(
    scope: pd.DataFrame, arrays: Mapping[str, np.ndarray], best: str, s: SummarySettings
) -> dict[Any, float]:
    """Each group's p-value of "worse than the best of ``scope``", the best chosen from the same
    data (0 for both of a pair: choosing the better of two is what a two-sided test allows
    for); with 3 or more groups and 2 or more seeds :func:`compare_runs_with_best` over the runs of the groups with
    as many seeds as the best (labels permuted within each seed index), with one seed
    :func:`compare_with_best` over the crops. Keyed by the table's index; a group outside the
    family is absent (its p-value then stays NaN)."""
    seeds = arrays[best].shape[0]
    family = [i for i, row in scope.iterrows() if arrays[row["group"]].shape == arrays[best].shape]
    if len(family) < 2 or arrays[best].shape[1] < s.min_crops_for_statistics:
        return {}
    if len(family) == 2:
        # the better of two is the sign of their difference, which the two-sided t test
        # already allows for: no further adjustment
        return dict.fromkeys(family, 0.0)
    groups = [arrays[scope.loc[i, "group"]] for i in family]
    if seeds >= 2:
        scores = np.array([[mean_over_classes(run) for run in group] for group in groups])
        result = compare_runs_with_best(scores, s.best_permutations, s.permutation_seed)
    else:
        result = compare_with_best(
            [group[0] for group in groups], "mean", s.best_permutations, s.permutation_seed
        )
    return {i: float(p) for i, p in zip(family, result.p_adjusted, strict=True)}


def _why_untested(a: np.ndarray, b: np.ndarray, s: SummarySettings) -> str:
    """Why :func:`_group_comparison` gave no p-value for groups ``a`` and ``b`` (S, N, C)."""
    if a.shape[0] != b.shape[0]:
        return f"{a.shape[0]} vs {b.shape[0]} seeds cannot be paired; train as many of each"
    if a.shape[1] < s.min_crops_for_statistics:
        return (
            f"{a.shape[1]} crops, fewer than evaluation.min_crops_for_statistics = "
            f"{s.min_crops_for_statistics}"
        )
    return "no standard error"
