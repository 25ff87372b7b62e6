"""Test-time augmentation compared (``inference.tta_compare``): per model and TTA mode, the scores
and the inference time per voxel, from the metrics CSVs (``summary.md``'s section and the study
preset ``config/experiments/tta.yaml``)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import pandas as pd

from cellseg.classes import CLASSES

__all__ = ["TTA_COLUMNS", "seconds_per_voxel", "tta_comparison", "tta_markdown"]

TTA_COLUMNS: tuple[str, ...] = (
    "model",
    "tta",
    "n_crops",
    "mean_dice",
    "pooled_dice",
    "inference_seconds",
    "predicted_voxels",
    "inference_us_per_voxel",
)
"""One row per (model, TTA mode): ``mean_dice`` per class the mean over the crops annotating it
of their Dice, then the mean over classes (the summary's mean Dice); ``pooled_dice`` per class
the Dice of the summed counts, then the mean over classes; the time summed over crops and per
predicted voxel (µs)."""


def seconds_per_voxel(table: pd.DataFrame) -> float:
    """Inference seconds per predicted voxel of one mode's metrics rows (each crop counted once;
    NaN when the CSV predates ``predicted_voxels``)."""
    if "predicted_voxels" not in table or table.empty:
        return float("nan")
    per_crop = table.groupby("crop")[["inference_seconds", "predicted_voxels"]].first()
    voxels = float(per_crop["predicted_voxels"].sum())
    return float(per_crop["inference_seconds"].sum()) / voxels if voxels else float("nan")


def _scores(rows: pd.DataFrame) -> tuple[float, float]:
    """``(mean Dice, pooled Dice)`` over the 14 classes' rows (group rows left out, as the
    summary's means leave them out); a class with empty sums scores 1."""
    per_class = rows[rows["class"].isin(CLASSES)].groupby("class")
    mean = float(per_class["dice"].mean().mean())
    sums = per_class[["tp", "fp", "fn"]].sum()
    denominator = 2 * sums["tp"] + sums["fp"] + sums["fn"]
    pooled = (2 * sums["tp"] / denominator.where(denominator > 0, 1)).where(denominator > 0, 1.0)
    return mean, float(pooled.mean())


def tta_comparison(metrics: Mapping[str, Path | str | None]) -> pd.DataFrame | None:
    """Rows :data:`TTA_COLUMNS` for every model whose metrics CSV scores more than one TTA mode
    (its first adjustment mode); ``None`` when none does."""
    rows = []
    for model, path in metrics.items():
        if path is None or not Path(path).is_file():
            continue
        table = pd.read_csv(path)
        if "tta" not in table or table["tta"].nunique() < 2:
            continue
        table = table[table["adjustment"] == table["adjustment"].iloc[0]]
        for tta, part in table.groupby("tta", sort=False):
            mean, pooled = _scores(part)
            per_crop = part.groupby("crop")[["inference_seconds", "predicted_voxels"]].first()
            rows.append(
                {
                    "model": model,
                    "tta": tta,
                    "n_crops": len(per_crop),
                    "mean_dice": mean,
                    "pooled_dice": pooled,
                    "inference_seconds": float(per_crop["inference_seconds"].sum()),
                    "predicted_voxels": int(per_crop["predicted_voxels"].sum()),
                    "inference_us_per_voxel": 1e6 * seconds_per_voxel(part),
                }
            )
    return pd.DataFrame(rows, columns=list(TTA_COLUMNS)) if rows else None


def tta_markdown(table: pd.DataFrame | None) -> list[str]:
    """``summary.md``'s section comparing the TTA modes (none without a comparison)."""
    if table is None or table.empty:
        return []
    lines = [
        "",
        "## Test-time augmentation",
        "",
        "Each model's test crops predicted once per mode (`inference.tta_compare`); the ranking "
        "above uses `inference.tta`. Mean Dice: per class over the crops annotating it, then "
        "over classes; pooled Dice: per class of the summed counts. Time: the crops' inference "
        "time on this machine per predicted voxel.",
        "",
        "| model | tta | mean Dice | Δ vs first | pooled Dice | inference s | µs / voxel |",
        "|---|---|---|---|---|---|---|",
    ]
    for model, part in table.groupby("model", sort=False):
        first = part["mean_dice"].iloc[0]
        for _, r in part.iterrows():
            lines.append(
                f"| {model} | {r['tta']} | {r['mean_dice']:.4f} | "
                f"{r['mean_dice'] - first:+.4f} | {r['pooled_dice']:.4f} | "
                f"{r['inference_seconds']:.1f} | {r['inference_us_per_voxel']:.2f} |"
            )
    return lines
