"""Figures shared by training (TensorBoard) and the visualize rule: palette and sample panels."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from cellseg.classes import CLASSES
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
    samples: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray, str]], title: str = ""
) -> Figure:
    """Input / ground truth / prediction panels, one row per sample of possibly different size.

    Args:
        samples: ``(em (H, W) in [0, 1], target (C, H, W) with NaN where unannotated,
            probabilities (C, H, W), row title)`` per row.
        title: the figure's title.

    Returns:
        A figure with a class legend; unannotated ground truth is grey and hatched, not background.
    """
    n = max(len(samples), 1)
    figure, axes = plt.subplots(n, 3, figsize=(9, 3 * n + 0.6), squeeze=False)
    for row, (em, target, probabilities, title) in enumerate(samples):
        truth, unannotated = label_rgb(target)
        prediction, _ = label_rgb(probabilities)
        for ax, picture, name in zip(
            axes[row], (em, truth, prediction), ("input", "ground truth", "prediction"), strict=True
        ):
            ax.imshow(picture, cmap="gray" if picture.ndim == 2 else None, interpolation="nearest")
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
            -0.05, 0.5, title, transform=axes[row, 0].transAxes, rotation=90, ha="right",
            va="center", fontsize="small",
        )  # fmt: skip
    figure.legend(handles=legend_handles(), loc="lower center", ncol=5, fontsize="small")
    height = 3 * n + 0.6
    if title:
        figure.suptitle(title, fontsize="medium")
    figure.tight_layout(rect=(0.03, 0.6 / height + 0.1 / n, 1, 1 - (0.3 / height if title else 0)))
    return figure


def training_curves_figure(history: Any, title: str = "") -> Figure:
    """Training curves from a trainer's ``history.csv``.

    Four panels over epochs: train and validation loss; learning rate (log scale, at each epoch's
    end); validation mean Dice; validation Dice per class (palette colours; classes never
    validated are left out).

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
    for name in CLASSES:
        column = f"val_dice_{name}"
        if column in history and history[column].notna().any():
            ax.plot(epoch, history[column], marker=marker, color=PALETTE[name], label=name)
    ax.set(xlabel="epoch", ylabel="Dice", title="validation Dice per class", ylim=(0, 1.02))
    ax.legend(fontsize="x-small", ncol=2, loc="best")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
