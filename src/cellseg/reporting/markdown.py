"""``summary.md`` and ``study.md``: the summary and study tables rendered for reading (nothing
here computes a number the tables do not hold)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg.challenge import (
    CHALLENGE_SOURCE,
    INSTANCE_CLASSES,
    ORTOOLS_VERSION,
)
from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.reporting.study import Study
from cellseg.reporting.summary import Summary
from cellseg.reporting.summary_inputs import BASELINE, SummarySettings
from cellseg.reporting.tta import tta_markdown
from cellseg.statistics import (
    smallest_p_value,
)


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
    if summary.inference_unit == "dataset":
        units = (
            f"CIs ({s.confidence:.0%}) are t-intervals with the class set held fixed and the "
            f"{summary.n_datasets} datasets as the independent units (cluster-robust variance, "
            f"{summary.n_datasets - 1} degrees of freedom); paired differences are tested by "
            "sign flips of whole datasets."
        )
    else:
        given = (
            f", given these {summary.n_datasets} datasets (each crop centred on its dataset's "
            "means)"
            if summary.n_datasets > 1
            else ""
        )
        units = (
            f"CIs ({s.confidence:.0%}) are t-intervals over crops with the class set held fixed "
            f"(an unbiased crop-level variance, Satterthwaite degrees of freedom{given}); paired "
            f"differences are tested by exact sign-flip permutation over crops (all 2^N flips up "
            f"to {s.permutation_resamples} flips, else {s.permutation_resamples} seeded random "
            "flips); with N crops the smallest possible p-value is 2/2^N."
        )
    return (
        units + " Coverage and error rates are checked on synthetic data of known truth "
        "(`bench/inference_battery.py`). Nothing is reported from fewer than "
        f"{floor} crops (`evaluation.min_crops_for_statistics`)."
        + _conservative_sentence(summary)
        + "\n\n"
        + _target_sentence(summary)
    )


def _target_sentence(summary: Summary) -> str:
    """What the claims generalise to, in plain words."""
    s = summary.settings
    g, n = summary.n_datasets, summary.n_crops
    if summary.inference_unit == "dataset":
        target = (
            f"**What the claims generalise to**: the {n} test crops come from {g} datasets "
            f"(at least `evaluation.min_datasets_for_clusters` = {s.min_datasets_for_clusters}), "
            "and crops of one dataset share a cell, a preparation and a staining, so the "
            "datasets are the units: the intervals and tests are about **new datasets like "
            "these**, not only these crops."
        )
    else:
        datasets = f"{g} dataset{'s' if g != 1 else ''}"
        target = (
            f"**What the claims generalise to**: the {n} test crops come from only {datasets} "
            f"(fewer than `evaluation.min_datasets_for_clusters` = "
            f"{s.min_datasets_for_clusters}), too few to learn how much models vary from one "
            "dataset to another. The crops are the units, so the intervals and tests are about "
            f"**these {datasets}** (other crops of them): a model better here may not be "
            "better on another cell, preparation or staining."
        )
    return (
        target + " Each model is **one trained instance** (one seed): a difference between "
        "two models may be the luck of their training runs, not their architectures; train "
        "replicates (a study with seeds) to compare the recipes."
    )


def _conservative_sentence(summary: Summary) -> str:
    """Which intervals rest on the conservative variance (none: nothing to say)."""
    if not summary.conservative:
        return ""
    return (
        " The unbiased variance came out not positive for "
        f"{'; '.join(summary.conservative)} (classes whose scores move against each other "
        "within a crop, in few crops, or values all equal), so those intervals use the variance "
        "they would have if the classes of a crop were uncorrelated, or, for values all equal "
        "(e.g. Dice 0 on every crop), the exact interval for tied values in [0, 1]: wider, "
        "never a single point."
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
        *_tta_sentence(summary),
        "",
    ]


def _tta_sentence(summary: Summary) -> list[str]:
    """The test-time augmentation the models were scored with, when not ``none``, and the
    comparison of ``inference.tta_compare`` (:mod:`cellseg.reporting.tta`)."""
    modes = set(summary.table.get("tta", pd.Series(dtype=object)).dropna()) - {"none"}
    lines = []
    if modes:
        lines += ["", f"Scored with test-time augmentation `{'`, `'.join(sorted(modes))}`."]
    return lines + tta_markdown(summary.tta)


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
        "| rank | model | status | mean Dice [CI] | pooled Dice | Δ to best [CI] | p (adjusted) "
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
            f"{_diff_cell(r)} | {_p(r.get('p_adjusted'))} | {hours} | {params} | {epochs} | "
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


def _markdown_groups(summary: Summary) -> list[str]:
    """Dice of the whole organelles (group labels, issue 33), only when some test crop holds a
    group label: a coarse annotation scored as the union of its member classes."""
    table = summary.table[summary.table["mean_dice"].notna()]
    names = [
        name
        for name in GROUP_NAMES
        if f"dice_{name}" in table and table[f"dice_{name}"].notna().any()
    ]
    if not names:
        return []
    lines = [
        "",
        "## Whole organelles (group labels)",
        "",
        "Dice of each group, pooled over the test crops that hold its label: the union of its "
        "member classes predicted against a coarse annotation (`mito` = `mito_mem`, `mito_lum`, "
        "`mito_ribo`), as the CellMap challenge scores its group classes. Not part of the "
        "ranking, which reads the 14 classes.",
        "",
        "| model | " + " | ".join(f"`{name}`" for name in names) + " |",
        "|---|" + "---:|" * len(names),
    ]
    for _, r in table.iterrows():
        cells = " | ".join(_fmt(r[f"dice_{name}"]) for name in names)
        lines.append(f"| {r['model']} | {cells} |")
    return lines


def _markdown_challenge(summary: Summary) -> list[str]:
    """The challenge scores (official scorer and corrected) and the pooled IoU per class,
    labelled as ours, not the leaderboard's."""
    table = summary.table[summary.table["mean_dice"].notna()]
    instance = ", ".join(f"`{n}`" for n in INSTANCE_CLASSES)
    lines = [
        "",
        "## Challenge scores on our test crops (not a leaderboard number)",
        "",
        "Computed as the CellMap Segmentation Challenge's official scorer computes its scores, "
        f"quirks included (`cellseg.challenge`, reproducing {CHALLENGE_SOURCE} exactly; instances "
        f"matched by OR-Tools {ORTOOLS_VERSION}'s min-cost flow, as there: the challenge does not "
        "pin OR-Tools, and which of two equally good matchings is chosen is the solver's), but on "
        "our held-out crops and our 14 classes, so it is **not comparable to the challenge "
        "leaderboard**. Semantic classes: pooled IoU (ΣTP / (ΣTP + ΣFP + ΣFN) over crops). "
        f"Instance class(es) {instance}: connected components (26-connectivity) of the "
        "thresholded prediction matched one-to-one to the ground-truth instances (maximum summed "
        "IoU, any overlap), F1 = 2ΣTP / (2ΣTP + ΣFP + ΣFN) over crops, Hausdorff distance per "
        "instance (nm, capped at half the crop's smallest extent; unmatched instances and "
        "predictions get the cap) normalised as 1.01^(−d / ‖voxel size‖) and averaged over all "
        "instances of all crops, combined = √(F1 × normalised Hausdorff). Score = √(mean combined "
        "over instance classes × mean IoU over semantic classes). The challenge's documentation "
        "describes voxel-weighted means over crops instead; its code, followed here, pools over "
        "crops. *Corrected* fixes two quirks of the official scorer: a predicted piece left "
        "unmatched keeps its own number and is measured as part of the true instance that has "
        "the same number, and the too-many-pieces check divides by the largest true id rather "
        "than the number of true instances (see docs/evaluation.md).",
        "",
        "| model | challenge score | corrected | semantic (mean IoU) | "
        + " | ".join(
            f"{n} F1 | {n} Hausdorff | {n} combined | {n} corrected Hausdorff"
            for n in INSTANCE_CLASSES
        )
        + " |",
        "|---|---:|---:|---:|" + "---:|---:|---:|---:|" * len(INSTANCE_CLASSES),
    ]
    for _, r in table.iterrows():
        cells = [
            _fmt(r.get(c))
            for c in ("challenge_score", "challenge_corrected_score", "challenge_semantic")
        ]
        for n in INSTANCE_CLASSES:
            cells += [_fmt(r.get(f"challenge_{k}_{n}")) for k in ("f1", "hausdorff", "combined")]
            cells.append(_fmt(r.get(f"challenge_corrected_hausdorff_{n}")))
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    for prefix, rule in (
        ("challenge", "ground-truth instance counted as the largest id"),
        ("challenge_corrected", "distinct ground-truth instance"),
    ):
        skipped = {
            r["model"]: int(r[f"{prefix}_skipped_crops_{n}"])
            for _, r in table.iterrows()
            for n in INSTANCE_CLASSES
            if pd.notna(r.get(f"{prefix}_skipped_crops_{n}")) and r[f"{prefix}_skipped_crops_{n}"]
        }
        if skipped:
            lines += ["", f"Crops skipped ({prefix.replace('_', ' ')}) for too many predicted "
                      f"instances (> 10 + 50·e^(−n/5) per {rule}; they count nowhere, as in the "
                      "challenge): " + ", ".join(f"{m} {k}" for m, k in skipped.items()) + "."]  # fmt: skip
    unannotated = all(
        table[f"iou_{n}"].isna().all() for n in INSTANCE_CLASSES if f"iou_{n}" in table
    )
    if unannotated and not table.empty:
        lines += [
            "",
            f"**The challenge score cannot be computed on these crops**: no test crop annotates "
            f"an instance class ({instance}), and the score is √(instance part × semantic part). "
            "The official scorer would report 0 for every model, the chance baseline included; "
            "compare the models by their semantic part (mean IoU) instead.",
        ]
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


def _comparison_line(r: pd.Series, s: SummarySettings) -> str:
    """One model's line of "Differences to the best model"."""
    crops = int(r["compared_crops"])
    difference = f"Δ {r['diff_to_best']:+.3f}"
    if r["model"] == BASELINE:
        if pd.isna(r["p_value"]):
            return f"- {r['model']}: {difference} on {crops} shared crop(s); not tested"
        return (
            f"- {r['model']}: {difference}, CI [{_fmt(r['diff_ci_low'])}, "
            f"{_fmt(r['diff_ci_high'])}], paired sign-flip p = {_p(r['p_value'])} (the chance "
            "level, not a candidate for best: `above_baseline` compares each model with it)"
        )
    if pd.isna(r["p_adjusted"]):
        return (
            f"- {r['model']}: {difference} on {crops} shared crop(s); not tested "
            f"(fewer than {s.min_crops_for_statistics}, or not on the same crops as the others)"
        )
    verdict = "significantly worse" if r["significant"] else "not significantly different"
    return (
        f"- {r['model']}: {verdict} ({difference}, CI [{_fmt(r['diff_ci_low'])}, "
        f"{_fmt(r['diff_ci_high'])}], adjusted p = {_p(r['p_adjusted'])}, {crops} crops)"
    )


def _markdown_differences(summary: Summary) -> list[str]:
    s, table = summary.settings, summary.table
    lines = ["", "## Differences to the best model", ""]
    best = table["best_model"].iloc[0] if len(table) else None
    compared = table[table["compared_crops"].notna() & (table["model"] != best)]
    if best is None or pd.isna(best) or compared.empty:
        return [*lines, "No paired comparison (fewer than two models or no shared crops)."]
    tested = int(compared["p_adjusted"].notna().sum())
    if not tested:
        lines += [f"No comparison with **{best}** was tested (fewer than "
                  f"{s.min_crops_for_statistics} shared crops): the differences are point "
                  "estimates, untested.", ""]  # fmt: skip
        return lines + [_comparison_line(r, s) for _, r in compared.iterrows()]
    if summary.inference_unit == "dataset":
        how = (
            "a studentized step-down max-T over all pairwise differences with joint sign flips "
            "of whole datasets (a flip reflects every model's scores on a dataset's crops)"
        )
    else:
        how = (
            "a studentized step-down max-T over all pairwise differences with joint sign flips "
            "of the crops, and a bootstrap-t over the crops that sees skewed differences (a "
            "model failing badly on a few crops): a model is called worse only when both find "
            "a model scoring higher better than it"
        )
    lines += [
        "Worse than the best, **" + str(best) + "**? Every pair of ranked models is tested "
        f"at once: {how}. Every pair is in the family, so choosing the best from the same "
        "crops is accounted for, and the chance of any wrong claim stays at most "
        f"{s.significance} whatever the models' spreads, no exchangeability assumed "
        f"(`cellseg.statistics.compare_with_best`; {tested} comparison(s)). The CI is the "
        "paired t-interval of the difference.",
        "",
    ]
    return lines + [_comparison_line(r, s) for _, r in compared.iterrows()]


def _markdown_rank_sets(summary: Summary) -> list[str]:
    """Each ranked model's rank set and share of resamples in which it is best."""
    s, table = summary.settings, summary.table
    rows = table[table["rank_low"].notna()].sort_values("rank")
    if rows.empty:
        return []
    lines = [
        "",
        "## How sure is the ranking?",
        "",
        f"The ranks each model could hold, all models together with {s.confidence:.0%} "
        "confidence (from the simultaneous tests of every pairwise difference above: a model "
        "ranks below another only when that pair's difference is clear), and how often it came "
        f"out best when the test {'datasets' if summary.inference_unit == 'dataset' else 'crops'}"
        f" were drawn again with replacement ({s.rank_resamples} times).",
        "",
        "| model | rank | could rank | best in |",
        "|---|---:|---|---:|",
    ]
    for _, r in rows.iterrows():
        low, high = int(r["rank_low"]), int(r["rank_high"])
        span = str(low) if low == high else f"{low}–{high}"
        lines.append(f"| {r['model']} | {int(r['rank'])} | {span} | {r['p_best']:.0%} |")
    return lines


def _markdown_problems(summary: Summary) -> list[str]:
    lines = ["", "## Failed, not converged or missing models", ""]
    lines += [f"- {note}" for note in summary.notes] or ["None: every expected model finished."]
    if summary.missing:
        lines += ["", f"Missing from this comparison: {', '.join(summary.missing)}."]
    return lines


def starting_weights(table: pd.DataFrame) -> list[str]:
    """Which runs start from weights and how much of them (train_summary.json's
    ``init_loaded_fraction``): a start below :data:`cellseg.training.init.MIN_PRETRAINED_FRACTION`
    is named as starting essentially from scratch. None when no run sets ``init``."""
    if "init" not in table:
        return []
    lines = ["", "## Starting weights", ""]
    for _, r in table.iterrows():
        init = r.get("init")
        if not isinstance(init, str | dict):
            continue
        source = init if isinstance(init, str) else f"checkpoint {init.get('checkpoint')}"
        share = r.get("init_loaded_fraction")
        known = isinstance(share, float | int) and np.isfinite(share)
        digits = ".1%" if known and share >= 0.001 else ".2%"
        loaded = f"{share:{digits}} of the parameters loaded" if known else "share not recorded"
        verdict = (
            "starts pretrained"
            if r.get("starts_pretrained") in (True, np.True_)
            else "below the pretrained share: starts essentially from scratch"
        )
        lines.append(f"- `{r['model']}`: init {source}, {loaded}: {verdict}")
    return lines


def untrained_notes(table: pd.DataFrame) -> list[str]:
    """Which runs did not train which classes (train_summary.json's ``untrained_classes``,
    :mod:`cellseg.trained_classes`). None when every run trained all 14."""
    rows = [
        (r["model"], r["untrained_classes"])
        for _, r in table.iterrows()
        if isinstance(r.get("untrained_classes"), str) and r["untrained_classes"]
    ]
    if not rows:
        return []
    lines = [
        "",
        "## Classes not trained",
        "",
        "No training crop annotated these classes (nor a group label holding them): their output "
        "channels never saw a label, so they are not scored (their `dice_<class>` is empty, not "
        "0), predicted or drawn.",
        "",
    ]
    return lines + [f"- `{model}`: {', '.join(names.split())}" for model, names in rows]


def run_starts(train_summaries: Mapping[str, Path | str]) -> pd.DataFrame:
    """``model`` (the run), ``init``, ``init_loaded_fraction``, ``starts_pretrained`` of the runs
    whose ``train_summary.json`` records a start from weights (for :func:`starting_weights`)."""
    rows = []
    for run, path in train_summaries.items():
        try:
            train = json.loads(Path(path).read_text())
        except (OSError, ValueError):
            continue
        if "init" in train:
            keys = ("init", "init_loaded_fraction", "starts_pretrained")
            rows.append({"model": run, **{k: train.get(k) for k in keys}})
    return pd.DataFrame(rows)


def summary_markdown(summary: Summary) -> str:
    """``summary.md``: the ranked table, winners per class, significance, problems."""
    lines = [
        *_markdown_intro(summary),
        *_markdown_table(summary.table),
        *starting_weights(summary.table),
        *untrained_notes(summary.table),
        *_markdown_baseline(summary),
        *_markdown_winners(summary),
        *_markdown_groups(summary),
        *_markdown_challenge(summary),
        *_markdown_differences(summary),
        *_markdown_rank_sets(summary),
        *_markdown_problems(summary),
    ]
    return "\n".join(lines) + "\n"


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
        "differences; **p**: worse than the best, the best chosen from these same runs: the "
        "larger of a two-sided t test with that interval's df (Holm-adjusted over the groups "
        "compared; it counts crops and seeds) and, with 3 or more groups, a permutation test "
        "that shuffles the groups' labels within each seed index and picks the best again "
        "every time (`cellseg.statistics.compare_runs_with_best`; with few seeds it cannot go "
        f"low). No CI or p with fewer than {s.min_crops_for_statistics} crops.",
        "",
        "**What the claims generalise to**: new training runs (seeds) of each group's recipe, "
        "scored on test crops like these; the crops of one dataset are counted as independent "
        "here, so with test crops from few datasets the claims hold for those datasets. A "
        "group of one seed is one trained instance: its differences may be the luck of that "
        "run.",
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
