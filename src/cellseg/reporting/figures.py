"""Figures of the model comparison (``results/figures/summary/``) and of each model.

The summary figures draw ``summary.csv`` (:func:`cellseg.reporting.summary.summarize`'s table):
:func:`write_summary_figures` writes :data:`SUMMARY_FIGURES`. The per-model
figures (the ``visualize`` rule) are :func:`make_model_figures`, drawn from the slices evaluation
kept (:mod:`cellseg.figure_slices`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from cellseg.classes import CLASSES, NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.figure_slices import FigureSlices, read_figure_slices
from cellseg.io import atomic_path
from cellseg.reporting.study import STUDY_LOSS_DEFAULTS, STUDY_LOSS_KEYS, Study
from cellseg.reporting.summary_inputs import BASELINE
from cellseg.trained_classes import trained_names

__all__ = [
    "STUDY_FIGURES",
    "SUMMARY_FIGURES",
    "crop_class_panels",
    "dim_figure",
    "heatmap_figure",
    "make_model_figures",
    "mean_dice_figure",
    "pareto_figure",
    "pixel_aspect",
    "rank_sets_figure",
    "save_figure",
    "write_summary_figures",
]

SUMMARY_FIGURES: tuple[str, ...] = (
    "dice_heatmap.png",
    "mean_dice.png",
    "pareto.png",
    "dim_comparison.png",
    "rank_sets.png",
)
"""File names of the summary figures, in ``results/figures/summary/``."""

STUDY_FIGURES: tuple[str, ...] = ("seeds.png", "dice_vs_tau.png", "dice_vs_alpha.png")
"""File names of the study figures, in ``results/figures/study/``."""


def save_figure(figure: Figure, path: Path) -> None:
    """Write ``figure`` as PNG (atomically) and close it."""
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=110)
    plt.close(figure)


def _models(table: pd.DataFrame) -> pd.DataFrame:
    return table[table["mean_dice"].notna()]


def heatmap_figure(table: pd.DataFrame) -> Figure:
    """Per-class pooled Dice and, beside it, pooled IoU (the challenge's semantic metric): models
    (ranked, baseline last) × classes; unannotated grey. IoU is left out for a table without
    ``iou_<class>`` columns."""
    rows = _models(table)
    metrics = [("Dice", "dice")]
    if all(f"iou_{name}" in rows for name in CLASSES):
        metrics.append(("IoU", "iou"))
    height = 1.2 + 0.45 * max(len(rows), 1)
    figure, axes = plt.subplots(len(metrics), 1, figsize=(11, height * len(metrics)), squeeze=False)
    cmap = plt.get_cmap("viridis").with_extremes(bad="0.85")
    for ax, (label, prefix) in zip(axes[:, 0], metrics, strict=True):
        values = rows[[f"{prefix}_{name}" for name in CLASSES]].to_numpy(dtype=float)
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
        for (i, j), v in np.ndenumerate(values):
            if np.isfinite(v):
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="k" if v > 0.6 else "w")  # fmt: skip
        ax.set_xticks(range(NUM_CLASSES), CLASSES, rotation=60, ha="right")
        ax.set_yticks(range(len(rows)), rows["model"])
        # a run with untrained classes (cellseg.trained_classes) leaves them empty too
        grey = "no test crop annotates it" + (
            ", or not trained" if "untrained_classes" in table else ""
        )
        ax.set_title(f"pooled {label} per class (grey: {grey})")
        figure.colorbar(image, ax=ax, label=label)
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
    ax.set(ylabel="mean Dice over crops", ylim=(0, 1), title="mean Dice with its CI over crops")
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


def rank_sets_figure(table: pd.DataFrame) -> Figure:
    """Each ranked model's simultaneous rank set (a bar from its best to its worst possible
    rank), its observed rank (a dot) and its share of crop resamples in which it is best."""
    models = table[table["rank"].notna()].sort_values("rank")
    figure, ax = plt.subplots(figsize=(6, max(2.5, 0.45 * len(models) + 1)))
    y = np.arange(len(models))
    known = models["rank_low"].notna().to_numpy()
    ax.hlines(y[known], models["rank_low"][known], models["rank_high"][known], lw=6, color="0.7")
    ax.plot(models["rank"], y, "ko")
    for i, p_best in zip(y, models["p_best"], strict=True):
        if pd.notna(p_best):
            ax.annotate(f"best in {p_best:.0%}", (len(models) + 0.6, i), va="center", fontsize=8)
    ax.set_yticks(y, models["model"])
    ax.invert_yaxis()
    ax.set(
        xlim=(0.5, len(models) + 2.5),
        xlabel="rank (bar: the ranks the model could hold, simultaneously for all models)",
        title="how sure is the ranking?",
    )
    ax.set_xticks(np.arange(1, len(models) + 1))
    figure.tight_layout()
    return figure


def write_summary_figures(table: pd.DataFrame, figures_dir: Path | str) -> None:
    """Draw ``summary.csv``'s table into :data:`SUMMARY_FIGURES`.

    Args:
        table: :attr:`cellseg.reporting.summary.Summary.table` (one row per model, baseline last).
        figures_dir: where the PNGs go (created).
    """
    figures_dir = Path(figures_dir)
    draws = (heatmap_figure, mean_dice_figure, pareto_figure, dim_figure, rank_sets_figure)
    for name, draw in zip(SUMMARY_FIGURES, draws, strict=True):
        save_figure(draw(table), figures_dir / name)


# ------------------------------------------------------------------------------ study figures


def seeds_figure(study: Study) -> Figure:
    """Per-seed score of every (model, variant) group (dots), its mean over seeds (bar) and its
    crops-and-seeds CI, ranked overall."""
    table = study.table
    figure, ax = plt.subplots(figsize=(max(5, 0.6 * len(table) + 2), 4.5))
    x = np.arange(len(table))
    low = (table["score"] - table["ci_low"]).clip(lower=0).fillna(0)
    high = (table["ci_high"] - table["score"]).clip(lower=0).fillna(0)
    ax.bar(x, table["score"], color="0.8", edgecolor="k", yerr=[low, high], capsize=4)
    for i, group in enumerate(table["group"]):
        scores = study.seeds.loc[study.seeds["group"] == group, "score"].to_numpy()
        offsets = np.linspace(-0.2, 0.2, len(scores)) if len(scores) > 1 else np.zeros(1)
        ax.plot(i + offsets, scores, "o", color="tab:blue", markersize=5)
    ax.set_xticks(x, table["group"], rotation=45, ha="right")
    ax.set(
        ylabel="score per seed (dots), mean and CI",
        ylim=(0, 1),
        title="per-seed scores; CI over crops and seeds",
    )
    figure.tight_layout()
    return figure


def one_factor_rows(
    table: pd.DataFrame, loss: Mapping[str, Any], keys: Sequence[str]
) -> pd.DataFrame:
    """The study rows whose loss agrees with ``loss`` on every reported key but ``keys``: the
    variants that move only those keys (a sign or an adjustment changed along with tau would
    confound a line against tau)."""
    loss = {**STUDY_LOSS_DEFAULTS, **loss}
    mask = pd.Series(True, index=table.index)
    for key in STUDY_LOSS_KEYS:
        if key not in keys and key in loss and key in table:
            mask &= table[key].astype(object) == loss[key]
    return table[mask]


def factor_figure(
    table: pd.DataFrame, loss: Mapping[str, Any], key: str, also: Sequence[str] = ()
) -> Figure:
    """Per-class Dice (mean over seeds) against the loss key ``key``, one panel per model, over
    the variants that move only ``key`` (and ``also``, e.g. beta with alpha)."""
    rows = one_factor_rows(table, loss, (key, *also)).dropna(subset=[key])
    models = sorted(set(rows["model"]))
    if not models or rows.groupby("model")[key].nunique().max() < 2:
        figure, ax = plt.subplots(figsize=(6, 2))
        ax.axis("off")
        ax.text(0.5, 0.5, f"no two variants differ only in loss.{key}", ha="center", va="center")
        return figure
    figure, axes = plt.subplots(
        1, len(models), figsize=(5 * len(models) + 2, 4.5), squeeze=False, sharey=True
    )
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, NUM_CLASSES))
    for ax, model in zip(axes[0], models, strict=True):
        part = rows[rows["model"] == model].sort_values(key)
        x = part[key].astype(float).to_numpy()
        for c, name in enumerate(CLASSES):
            y = part[f"dice_{name}"].to_numpy(dtype=float)
            if np.isfinite(y).any():
                ax.plot(x, y, "o-", color=colours[c], label=name, markersize=4)
        ax.plot(x, part["score"], "k--", linewidth=2, label="score")
        ax.set(xlabel=f"loss.{key}", title=model, ylim=(0, 1))
    axes[0, 0].set_ylabel("Dice per class (mean over seeds)")
    axes[0, -1].legend(fontsize="x-small", bbox_to_anchor=(1.02, 1), loc="upper left")
    figure.tight_layout()
    return figure


def write_study_figures(study: Study, loss: Mapping[str, Any], figures_dir: Path | str) -> None:
    """Draw :data:`STUDY_FIGURES`: per-seed scores, Dice against tau and
    against alpha (beta moving with it)."""
    figures_dir = Path(figures_dir)
    figures = (
        seeds_figure(study),
        factor_figure(study.table, loss, "tau"),
        factor_figure(study.table, loss, "alpha", also=("beta",)),
    )
    for name, figure in zip(STUDY_FIGURES, figures, strict=True):
        save_figure(figure, figures_dir / name)


# ------------------------------------------------------------------------------ model figures


def pixel_aspect(model: Any) -> float:
    """Height over width of a z slice's pixel: the model's (``resolution_nm``) y over its x
    voxel size."""
    _, r_y, r_x = model.resolution_nm
    return float(r_y) / float(r_x)


def crop_class_panels(slices: FigureSlices) -> Figure:
    """:func:`cellseg.visualization.class_panels_figure` of the per-class panels' slice (the
    middle prediction-grid slice of :func:`cellseg.figure_slices.figure_crop`): EM, then truth
    and prediction of every class and group it annotates (an untrained one's prediction panel
    says "not trained", :mod:`cellseg.trained_classes`).

    Raises:
        CellsegError: ``slices`` has no such slice (no test crop).
    """
    from cellseg.visualization import class_panels_figure

    panel = slices.classes
    if panel is None:
        raise CellsegError(f"{slices.model}: no test crop, so no per-class panels to draw")
    names = list(slices.names)
    untrained = set(names) - set(trained_names(slices.trained_classes, names))
    title = (
        f"{slices.model}: {panel.crop}, z={panel.z} "
        f"(adjustment {slices.mode}, threshold {slices.threshold:g})"
    )
    return class_panels_figure(
        panel.em,
        panel.target,
        panel.probabilities,
        names,
        slices.threshold,
        title,
        untrained,
        pixel_aspect(slices),
    )


def make_model_figures(
    figure_slices: Path | str,
    history: Path | str,
    samples_path: Path | str,
    curves_path: Path | str,
    classes_path: Path | str | None = None,
) -> None:
    """The ``visualize`` rule: sample panels of test crops, per-class panels of one test crop
    and training curves of one model, drawn from what its evaluation predicted (no model runs).

    ``figure_slices`` is the ``evaluate`` rule's :mod:`cellseg.figure_slices` file: z slices of
    the prediction grid (the model's resolution) of seeded test crops, their ground truth on
    that grid (nearest label voxel; unannotated voxels are grey and hatched) and the
    probabilities evaluation scored (its first adjustment mode). ``classes_path`` (when given)
    gets :func:`crop_class_panels`: the middle slice of the test crop that annotates the most
    classes and groups, every one of them in its palette colour.
    """
    from cellseg.visualization import crop_panels_figure, training_curves_figure

    slices = read_figure_slices(figure_slices)
    panels = [(s.em, s.target, s.probabilities, f"{s.crop}, z={s.z}") for s in slices.samples]
    figure = crop_panels_figure(
        panels,
        f"{slices.model}: test crops (adjustment {slices.mode})",
        pixel_aspect(slices),
        classes=slices.trained_classes,
    )
    save_figure(figure, Path(samples_path))
    if classes_path is not None:
        save_figure(crop_class_panels(slices), Path(classes_path))
    table = pd.read_csv(history)
    save_figure(training_curves_figure(table, title=slices.model), Path(curves_path))
