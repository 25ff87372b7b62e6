"""Figures shared by training (TensorBoard) and the visualize rule: sample panels, per-class
panels and training curves, every class in its colour of :mod:`cellseg.palette`."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from cellseg.classes import CLASS_INDEX, CLASSES, GROUP_NAMES, NUM_CLASSES
from cellseg.groups import group_prediction
from cellseg.palette import COLOURS, UNANNOTATED
from cellseg.palette import rgb as _palette_rgb

PALETTE: dict[str, str] = COLOURS
"""Each class's and group's colour: :data:`cellseg.palette.COLOURS`, the viewer's as well."""
UNANNOTATED_RGB = np.array(matplotlib.colors.to_rgb(UNANNOTATED))


def _rgb(name: str) -> np.ndarray:
    return np.array(_palette_rgb(name))


def label_rgb(target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour a ``(C, H, W)`` target or probability map (one class per voxel: the largest).

    Returns:
        ``(rgb (H, W, 3), unannotated (H, W) bool)``: voxels where every channel is NaN are grey
        and flagged, so figures can hatch them instead of showing them as background.
    """
    annotated = ~np.isnan(target)
    values = np.where(annotated, target, -1.0)
    winner = values.argmax(axis=0)
    positive = values.max(axis=0) >= 0.5
    colours = np.stack([_rgb(name) for name in CLASSES])
    rgb = np.where(positive[..., None], colours[winner], 1.0)
    unannotated = ~annotated.any(axis=0)
    rgb[unannotated] = UNANNOTATED_RGB
    return rgb, unannotated


def legend_handles(classes: Sequence[str] = CLASSES) -> list[Patch]:
    handles = [Patch(facecolor=PALETTE[name], edgecolor="k", label=name) for name in classes]
    handles.append(Patch(facecolor=UNANNOTATED_RGB, hatch="//", edgecolor="w", label="unannotated"))
    return handles


def _middle_slice(x: np.ndarray) -> np.ndarray:
    """``(C, [D,] H, W)`` → ``(C, H, W)`` (the middle z slice of a 3D patch)."""
    return x[:, x.shape[1] // 2] if x.ndim == 4 else x


def sample_figure(image: torch.Tensor, target: torch.Tensor, probabilities: torch.Tensor) -> Figure:
    """Input / ground truth / prediction panels, one row per sample.

    Args:
        image: ``(N, 1, [D,] H, W)`` in [0, 1].
        target: ``(N, C, [D,] H, W)`` with NaN where unannotated.
        probabilities: ``(N, C, [D,] H, W)`` adjusted probabilities.
    """
    n = image.shape[0]
    figure, axes = plt.subplots(n, 3, figsize=(9, 3 * n), squeeze=False)
    for row in range(n):
        em = _middle_slice(image[row].float().numpy())[0]
        truth, unannotated = label_rgb(_middle_slice(target[row].float().numpy()))
        prediction, _ = label_rgb(_middle_slice(probabilities[row].float().numpy()))
        for ax, picture, title in zip(
            axes[row], (em, truth, prediction), ("input", "ground truth", "prediction"), strict=True
        ):
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
            ax.set_title(title)
            ax.axis("off")
        if unannotated.any():
            axes[row, 1].contourf(unannotated, levels=[0.5, 1.5], hatches=["//"], colors="none")
    figure.legend(handles=legend_handles(), loc="lower center", ncol=5, fontsize="small")
    figure.tight_layout(rect=(0, 0.12, 1, 1))
    return figure


def logit_adjustment_figure(exact: np.ndarray, online: np.ndarray | None = None) -> Figure:
    """Bar chart of the per-class logit adjustment ``a_c``: negative bars are boosted classes."""
    figure, ax = plt.subplots(figsize=(8, 3.5))
    x = np.arange(len(CLASSES))
    ax.bar(
        x - 0.2,
        exact,
        width=0.4,
        label="exact prior",
        color=[PALETTE[c] for c in CLASSES],
        edgecolor="k",
    )
    if online is not None:
        ax.bar(
            x + 0.2,
            online,
            width=0.4,
            label="online estimate",
            color="none",
            edgecolor="k",
            hatch="..",
        )
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(x, CLASSES, rotation=60, ha="right")
    ax.set_ylabel("a_c (< 0: boosted in the loss)")
    ax.legend()
    figure.tight_layout()
    return figure


def crop_panels_figure(
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, str]],
    title: str = "",
    aspect: float = 1.0,
    classes: Sequence[str] = CLASSES,
) -> Figure:
    """Input / ground truth / prediction panels, one row per sample of possibly different size.

    Args:
        samples: ``(em (H, W) in [0, 1], target (C, H, W) with NaN where unannotated,
            probabilities (C, H, W), row title)`` per row.
        title: the figure's title.
        aspect: height over width of one pixel, the y over the x voxel size (1 for the
            isotropic voxels of FIB-SEM).
        classes: the classes the legend lists: the model's trained classes, so that a run
            trained on ``pm`` alone does not list 13 colours it never draws.

    Returns:
        A figure with a class legend; unannotated ground truth is grey and hatched, not background.
    """
    n = max(len(samples), 1)
    figure, axes = plt.subplots(n, 3, figsize=(9, 3 * n + 0.6), squeeze=False)
    for row, (em, target, probabilities, row_title) in enumerate(samples):
        truth, unannotated = label_rgb(target)
        prediction, _ = label_rgb(probabilities)
        for ax, picture, name in zip(
            axes[row], (em, truth, prediction), ("input", "ground truth", "prediction"), strict=True
        ):
            ax.imshow(
                picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest",
                aspect=aspect,
            )  # fmt: skip
            ax.set_title(name, fontsize="small")
            ax.axis("off")
        if unannotated.any() and not unannotated.all():
            axes[row, 1].contourf(unannotated, levels=[0.5, 1.5], hatches=["//"], colors="none")
        elif unannotated.all():
            axes[row, 1].add_patch(
                Rectangle(
                    (0, 0), 1, 1, hatch="//", fill=False, edgecolor="w",
                    transform=axes[row, 1].transAxes,
                )
            )  # fmt: skip
        axes[row, 0].text(
            -0.05, 0.5, row_title, transform=axes[row, 0].transAxes, rotation=90, ha="right",
            va="center", fontsize="small",
        )  # fmt: skip
    figure.legend(handles=legend_handles(classes), loc="lower center", ncol=5, fontsize="small")
    height = 3 * n + 0.6
    if title:
        figure.suptitle(title, fontsize="medium")
    figure.tight_layout(rect=(0.03, 0.6 / height + 0.1 / n, 1, 1 - (0.3 / height if title else 0)))
    return figure


OVERLAY_ALPHA = 0.6
"""Weight of a class's colour over the EM in the per-class panels."""
PANELS_PER_ROW = 4
"""Classes side by side in :func:`class_panels_figure` (each a truth and a prediction panel)."""


def overlay(
    em: np.ndarray, mask: np.ndarray, name: str, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """``em`` ``(H, W)`` in [0, 1] as grey RGB ``(H, W, 3)``, ``name``'s palette colour blended in
    (weight ``alpha``) where ``mask`` ``(H, W)`` is true."""
    picture = np.repeat(np.clip(em, 0, 1)[..., None], 3, axis=-1).astype(np.float64)
    picture[mask] = (1 - alpha) * picture[mask] + alpha * _rgb(name)
    return picture


def channel_names(channels: int) -> tuple[str, ...]:
    """The names of a target's ``channels``: the 14 classes, then the groups when it has them."""
    return (*CLASSES, *GROUP_NAMES)[:channels]


def slice_dice(prediction: np.ndarray, truth: np.ndarray) -> float | None:
    """Dice of a bool ``prediction`` against ``truth`` (1, 0, NaN unannotated) over the annotated
    voxels of one slice; ``None`` when both are empty there."""
    annotated = ~np.isnan(truth)
    positive = truth == 1
    tp = int((prediction & positive).sum())
    fp = int((prediction & annotated & ~positive).sum())
    fn = int((~prediction & positive).sum())
    return None if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def class_panels_figure(
    em: np.ndarray,
    target: np.ndarray,
    probabilities: np.ndarray,
    names: Sequence[str] | None = None,
    threshold: float = 0.5,
    title: str = "",
    untrained: Collection[str] = (),
    aspect: float = 1.0,
) -> Figure:
    """One slice of one crop: EM, then ground truth and prediction of each class (and group) the
    crop annotates, each over the EM in its palette colour.

    The top row is the EM and every class at once (as :func:`crop_panels_figure` draws them);
    below, per name, a truth panel (the class's colour where it is 1; unannotated voxels
    hatched) and a prediction panel (where the probability exceeds ``threshold``; a group's
    prediction is the union of its members', as evaluation scores it), framed in the colour and
    titled with the slice's Dice over its annotated voxels.

    Args:
        em: ``(H, W)`` in [0, 1].
        target: ``(14, H, W)``, or ``(14 + groups, H, W)`` with the group labels after, 1 / 0
            and NaN where unannotated.
        probabilities: ``(14, H, W)``.
        names: the classes and groups to show, in this order; default: every channel of
            ``target`` not NaN throughout.
        threshold: probability above which a voxel is predicted (the evaluation's).
        title: the figure's title.
        untrained: names the model did not train (:mod:`cellseg.trained_classes`): their
            prediction panel is the bare EM titled "not trained", never a mask.
        aspect: height over width of one pixel, the y over the x voxel size.

    Raises:
        ValueError: a name that is not a channel of ``target``.
    """
    channels = channel_names(target.shape[0])
    if names is None:
        names = [n for c, n in enumerate(channels) if not np.isnan(target[c]).all()]
    names = list(names)
    unknown = [n for n in names if n not in channels]
    if unknown:
        raise ValueError(
            f"{', '.join(unknown)}: not channels of a {target.shape[0]}-channel target"
        )
    binary = probabilities[:NUM_CLASSES] > threshold
    rows = max(1, -(-len(names) // PANELS_PER_ROW))
    figure = plt.figure(figsize=(2 * PANELS_PER_ROW * 1.7, 3.2 + 2.0 * rows), layout="constrained")
    top, bottom = figure.subfigures(2, 1, height_ratios=[3.2, 2.0 * rows])
    head = top.subplots(1, 3)
    truth_rgb, unannotated = label_rgb(target[:NUM_CLASSES])
    for ax, picture, label in zip(
        head,
        (em, truth_rgb, label_rgb(probabilities[:NUM_CLASSES])[0]),
        ("EM", "ground truth (all classes)", "prediction (all classes)"),
        strict=True,
    ):
        ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest",
                  vmin=0, vmax=1, aspect=aspect)  # fmt: skip
        ax.set_title(label, fontsize="small")
        ax.axis("off")
    if unannotated.any():
        head[1].contourf(unannotated, levels=[0.5, 1.5], hatches=["//"], colors="none")
    grid = bottom.subplots(rows, 2 * PANELS_PER_ROW, squeeze=False)
    for ax in grid.ravel():
        ax.axis("off")
    for k, name in enumerate(names):
        truth = target[channels.index(name)]
        if name in untrained:
            predicted = np.zeros(truth.shape, dtype=bool)
            score = "not trained"
        else:
            if name in CLASS_INDEX:
                predicted = binary[CLASS_INDEX[name]]
            else:
                predicted = group_prediction(binary, name)
            dice = slice_dice(predicted, truth)
            score = f"Dice {'–' if dice is None else f'{dice:.2f}'}"
        row, column = divmod(k, PANELS_PER_ROW)
        for ax, mask, label in (
            (grid[row, 2 * column], truth == 1, f"{name}: truth"),
            (grid[row, 2 * column + 1], predicted, f"{name}: prediction\n{score}"),
        ):
            ax.axis("on")
            ax.imshow(overlay(em, mask, name), interpolation="nearest", aspect=aspect)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_edgecolor(COLOURS[name])
                spine.set_linewidth(3)
            ax.set_title(label, fontsize="x-small")
        missing = np.isnan(truth)
        if missing.any():
            ax_truth = grid[row, 2 * column]
            ax_truth.contourf(missing, levels=[0.5, 1.5], hatches=["//"], colors="none")
    if title:
        figure.suptitle(title, fontsize="medium")
    return figure


def training_curves_figure(history: Any, title: str = "") -> Figure:
    """Training curves from a trainer's ``history.csv``.

    Four panels over epochs: train and validation loss; learning rate (log scale, at each epoch's
    end); validation mean Dice; validation Dice per class (palette colours; classes never
    validated are left out), and per group (dashed) when the validation crops hold group labels.

    Args:
        history: a ``pandas.DataFrame`` with the trainer's columns (``epoch``, ``train_loss``,
            ``val_loss``, ``lr``, ``val_mean_dice``, ``val_dice_<class>``).
        title: the figure's title (the model).
    """
    figure, axes = plt.subplots(2, 2, figsize=(11, 7))
    epoch = history["epoch"].to_numpy()
    marker = "o" if len(epoch) < 20 else None
    ax = axes[0, 0]
    ax.plot(epoch, history["train_loss"], marker=marker, label="train")
    ax.plot(epoch, history["val_loss"], marker=marker, label="validation")
    ax.set(xlabel="epoch", ylabel="loss (1 - Tversky)", title="loss")
    ax.legend()
    ax = axes[0, 1]
    ax.plot(epoch, history["lr"], marker=marker, color="k")
    if (history["lr"] > 0).all():
        ax.set_yscale("log")
    ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate (end of epoch)")
    ax = axes[1, 0]
    ax.plot(epoch, history["val_mean_dice"], marker=marker, color="k")
    ax.set(xlabel="epoch", ylabel="Dice", title="validation mean Dice", ylim=(0, 1.02))
    ax = axes[1, 1]
    title = "validation Dice per class"
    for name in (*CLASSES, *GROUP_NAMES):
        column = f"val_dice_{name}"
        if column in history and history[column].notna().any():
            group = name in GROUP_NAMES
            if group:
                title = "validation Dice per class and group"
            # a group (whole organelle) dashed, in its palette shade
            style = "--" if group else "-"
            ax.plot(epoch, history[column], style, marker=marker, color=PALETTE[name], label=name)
    ax.set(xlabel="epoch", ylabel="Dice", title=title, ylim=(0, 1.02))
    ax.legend(fontsize="x-small", ncol=2, loc="best")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
