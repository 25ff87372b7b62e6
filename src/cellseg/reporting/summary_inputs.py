"""What the summary of the trained models is computed from: its settings
(:class:`SummarySettings`), the evaluation's metrics CSVs read into per-crop counts
(:func:`load_metrics`, :func:`metric_counts`), the units of inference the crops' datasets make
(:func:`inference_units`) and the prior baseline's expected counts
(:func:`prior_baseline_counts`). :mod:`cellseg.reporting.summary` and
:mod:`cellseg.reporting.study` build their tables from them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cellseg.classes import CLASS_INDEX, CLASSES, NUM_CLASSES
from cellseg.errors import CellsegError
from cellseg.groups import class_rows
from cellseg.metrics import COUNT_NAMES, Statistic
from cellseg.statistics import DEFAULT_PERMUTATIONS, dataset_of

__all__ = [
    "BASELINE",
    "COMPARISON_ARCHITECTURES",
    "SummarySettings",
    "expected_models",
    "inference_unit",
    "inference_units",
    "load_metrics",
    "metric_counts",
    "prior_baseline_counts",
]


BASELINE = "baseline (prior)"
"""The ``model`` of the baseline row."""


COMPARISON_ARCHITECTURES: tuple[str, ...] = ("unet", "resnet", "swin", "vit")
"""The architectures of the comparison the user asked for (SPEC: each in 2D and 3D)."""


def expected_models() -> list[str]:
    """The ``{model}_{dim}`` keys of the 8 models of the comparison, which ``summary.md`` lists
    as missing when a config leaves one out. The strong baselines and ``cosem_3d`` are
    additions a preset opts into, never reported missing."""
    from cellseg.models import list_models

    return [f"{name}_{dim}" for name, dim in list_models() if name in COMPARISON_ARCHITECTURES]


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
        best_permutations: sign patterns and bootstrap resamples of the simultaneous test of
            every pair of models behind "worse than the best" and the rank sets
            (:func:`cellseg.statistics.compare_with_best`).
        rank_resamples: crop resamples for each model's share of being best
            (:func:`cellseg.statistics.rank_sets`).
        permutation_seed: seed of the Monte Carlo flips and permutations.
        min_datasets_for_clusters: fewest datasets (the ``dataset`` of crops named
            ``dataset/cropN``) from which the datasets, not the crops, are the units of the
            intervals and tests, and the claims are about new datasets like these. Default 6: the
            fewest datasets whose sign flips (``2/2^G``) can reach ``p < 0.05``, and a
            cluster-robust interval on ``G - 1 = 5`` degrees of freedom. With fewer, the crops
            are the units and the claims are about these datasets only.
    """

    adjustment: str | None = None
    rank_by: str = "mean"
    confidence: float = 0.95
    significance: float = 0.05
    min_crops_for_statistics: int = 6
    permutation_resamples: int = DEFAULT_PERMUTATIONS
    best_permutations: int = 9999
    rank_resamples: int = 2000
    permutation_seed: int = 0
    min_datasets_for_clusters: int = 6

    def __post_init__(self) -> None:
        Statistic(self.rank_by)
        if self.permutation_resamples < 1:
            raise CellsegError("evaluation.permutation_resamples must be >= 1")
        if self.min_crops_for_statistics < 2:
            raise CellsegError("evaluation.min_crops_for_statistics must be >= 2")
        if self.min_datasets_for_clusters < 2:
            raise CellsegError("evaluation.min_datasets_for_clusters must be >= 2")

    @classmethod
    def from_config(cls, section: Mapping[str, Any] | None) -> SummarySettings:
        """From the ``evaluation`` section; ``adjustment`` is its first ``adjustment_modes``."""
        section = dict(section or {})
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in section.items() if k in names}
        modes = section.get("adjustment_modes") or []
        values.setdefault("adjustment", modes[0] if modes else None)
        return cls(**values)


def load_metrics(path: Path | str, adjustment: str | None = None) -> tuple[pd.DataFrame, str]:
    """Read a metrics CSV and keep one adjustment mode, and of a CSV that scores several
    test-time augmentations (``inference.tta_compare``) the first, ``inference.tta``'s.

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
    table = table[table["adjustment"] == mode]
    if "tta" in table and len(table):  # the first test-time augmentation: inference.tta's
        table = table[table["tta"] == table["tta"].iloc[0]]
    return table.reset_index(drop=True), mode


def metric_counts(table: pd.DataFrame) -> tuple[list[str], np.ndarray]:
    """Per-crop counts of a metrics table.

    Returns:
        ``(crops, counts)``: the ``N`` crop names (sorted) and ``(N, 14, 4)`` counts in
        ``COUNT_NAMES`` order, zero for classes a crop does not annotate.
    """
    table = class_rows(table)  # group rows (issue 33 item 2) are scored beside, not in, these
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


def inference_units(
    crops: Sequence[str], s: SummarySettings
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(clusters, strata)``: the dataset of each crop as the units of inference, or as the
    strata the crops are centred in; at most one of the two is set.

    The dataset of ``dataset/cropN`` is ``dataset``. With at least ``min_datasets_for_clusters``
    datasets among ``crops`` the intervals and tests count datasets (``clusters``; their claims:
    new datasets like these). With fewer but more than one, they count crops and are given these
    datasets (``strata``: crops centred on their dataset's means; claims about these datasets).
    Crops named without a dataset, or of one dataset: neither.
    """
    if not any("/" in crop for crop in crops):
        return None, None
    datasets = np.asarray([dataset_of(crop) for crop in crops], dtype=object)
    distinct = len(set(datasets))
    if distinct >= s.min_datasets_for_clusters:
        return datasets, None
    return None, (datasets if distinct > 1 else None)


def inference_unit(crops: Sequence[str], s: SummarySettings) -> str:
    """``dataset`` or ``crop``: the unit :func:`inference_units` makes independent."""
    return "crop" if inference_units(crops, s)[0] is None else "dataset"


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
