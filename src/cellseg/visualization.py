"""Figures shared by training (TensorBoard) and the visualize rule: palette and sample panels."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from cellseg.classes import CLASSES

# Paul Tol's "muted" (9) and "light"-scheme extras: distinguishable under the common
# colour-vision deficiencies; membrane / lumen pairs get a dark / light pair of one hue.
PALETTE: dict[str, str] = {
    "ecs": "#DDDDDD",
    "pm": "#332288",
    "mito_mem": "#117733",
    "mito_lum": "#44AA99",
    "mito_ribo": "#000000",
    "golgi_mem": "#882255",
    "golgi_lum": "#CC6677",
    "ves_mem": "#AA4499",
    "ves_lum": "#EE99AA",
    "endo_mem": "#997700",
    "endo_lum": "#DDCC77",
    "er_mem": "#004488",
    "er_lum": "#88CCEE",
    "nuc": "#EE7733",
}
UNANNOTATED_RGB = np.array([0.55, 0.55, 0.55])


def _rgb(name: str) -> np.ndarray:
    return np.array(matplotlib.colors.to_rgb(PALETTE[name]))


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
