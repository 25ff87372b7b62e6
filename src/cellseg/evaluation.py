"""Evaluation of a trained model on the held-out (``test``) crops: per crop × class counts and scores.

For every test crop the model predicts the crop's whole box at its own resolution (SPEC §8):

* The prediction grid has voxel size ``r = resolution_nm`` (the model's, ``(z, y, x)``) and starts
  at the crop's lower corner, so its voxel ``i`` is centred at ``start + (i + 1/2) r`` (nm, per
  axis). EM is read around
  the crop with a margin of half a training patch per axis (at least enough for one window), so
  border voxels see as much context as interior ones; EM beyond the volume repeats its edge.
* The model runs through :mod:`cellseg.inference` (:func:`~cellseg.inference.predict_crop`):
  windows of the training patch with the configured overlap and blending (2D models: z slices),
  the crop streamed in z slabs (``slab_voxels`` prediction slices plus context), so memory is
  bounded by one slab, not the crop.
* Probabilities follow training (SPEC §4): ``sigmoid(z + logit_shift)`` for ``train``, the raw
  ``sigmoid(z)`` for ``none``; several modes can be scored from one forward pass.
* Scoring happens at each class's own label grid (its finest scale level, often finer than the
  model's): the binarised prediction is resampled to the label voxels by nearest neighbour (the
  prediction voxel whose centre is nearest each label voxel's centre, ties to the higher index);
  the ground truth is never resampled. Only classes the crop annotates are scored, and only their
  annotated voxels (``unknown`` codes are NaN and count nowhere).
* Only classes the model trained on are scored or saved (:mod:`cellseg.trained_classes`): an
  untrained class, and a group none of whose members was trained, gets no row and no array (its
  channel never saw a label, so its 0 Dice would read as a trained failure).

A crop's group labels (:data:`cellseg.classes.GROUP_NAMES`, issue 33 item 2) are scored beside its
classes, as the challenge scores its group classes: the union of the members' binarised
predictions against the group array (:func:`cellseg.groups.group_prediction`), rows after the
classes; a crop without one gets no group row.

Following SPEC §8 and the CellMap challenge, a class with an empty prediction and an empty ground
truth in a crop scores 1 (flagged in the ``empty`` column); see :mod:`cellseg.metrics`.

Instance classes (of our 14 only ``nuc``, :data:`cellseg.challenge.INSTANCE_CLASSES`) are also
scored as the CellMap challenge scores them (:func:`cellseg.challenge.score_instance_modes`):
connected components of the binarised prediction on the label grid, one-to-one matching to the
ground-truth instances, F1 counts and normalised Hausdorff distances, as the official scorer
computes them (columns ``instance_*`` and ``hausdorff_*``) and with its two quirks corrected
(the same names prefixed ``corrected_``); empty for other classes. Unannotated voxels are
background in both. This needs
the whole crop at once: the class's ground-truth ids (uint32) and one bool prediction per
adjustment mode are kept while the crop is predicted, and the Hausdorff step adds about 13 bytes
per voxel of an instance's bounding box: about 25 bytes per label voxel of the class in all.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import zarr

from cellseg.challenge import (
    INSTANCE_CLASSES,
    INSTANCE_COLUMNS,
    INTEGER_INSTANCE_COLUMNS,
    STATUS_COLUMNS,
    InstanceScore,
    TruthIds,
    connected_components,
    instance_columns,
    score_instance_modes,
)
from cellseg.classes import CLASSES, GROUP_INDEX, GROUP_NAMES
from cellseg.config.options import settings_from_args
from cellseg.data.datasplit import read_scored_crops
from cellseg.data.identity import check_unseen
from cellseg.data.multiscale import LabelEncoding, ScaleLevel
from cellseg.data.store import Crop, CropGeometry, check_outside_stores, read_crop_geometry
from cellseg.errors import CellsegError
from cellseg.evaluation_slices import FigureSliceCollector
from cellseg.figure_slices import ModelFigureSettings, write_figure_slices
from cellseg.groups import group_prediction
from cellseg.inference import (
    BLEND_MODES,
    PredictionGrid,
    Predictor,
    predict_crop,
    resolve_device,
)
from cellseg.io import atomic_path
from cellseg.losses import InferenceLogitAdjustment
from cellseg.metrics import confusion_counts, crop_class_table
from cellseg.ownership import check_output_path
from cellseg.trained_classes import (
    UNTRAINED_KEY,
    trained_names,
    untrained_classes,
    untrained_line,
)
from cellseg.tta import TTA, TTA_MODES
from cellseg.voxels import format_resolution, table_value

__all__ = [
    "INSTANCE_COLUMNS",
    "METRIC_COLUMNS",
    "EvaluationSettings",
    "evaluate_checkpoint",
    "evaluate_crop",
    "evaluate_crops",
]

METRIC_COLUMNS: tuple[str, ...] = (
    "model",
    "dim",
    "adjustment",
    "tta",
    "crop",
    "class",
    "tp",
    "fp",
    "fn",
    "tn",
    "dice",
    "iou",
    "precision",
    "recall",
    "empty",
    "voxel_size_z_nm",
    "voxel_size_y_nm",
    "voxel_size_x_nm",
    "prediction_voxel_size_nm",
    "threshold",
    "inference_seconds",
    "predicted_voxels",
    *INSTANCE_COLUMNS,
)
"""Columns of the metrics CSV, one row per (adjustment mode, test-time augmentation, crop, annotated
class or group); ``inference_seconds`` and ``predicted_voxels`` are the crop's (the same on each of
its rows of one ``tta``). The last are
:data:`cellseg.challenge.INSTANCE_COLUMNS`, empty for semantic classes: per scorer mode (official
unprefixed, then ``corrected_``) matched pairs, unmatched predicted components, unmatched
ground-truth instances, the sum and number of normalised Hausdorff distances (pooled per class by
the summary), their mean in nm, and ``scored`` or ``skipped_too_many_instances``."""


@dataclass(frozen=True)
class EvaluationSettings:
    """How a model is evaluated (the ``evaluation`` section of the config).

    Attributes:
        overlap: fraction of a window shared with its neighbours, in [0, 1).
        blend_mode: ``gaussian`` (weights fall off towards window borders) or ``constant``.
        sw_batch_size: windows per forward pass.
        threshold: probability above which a voxel is predicted positive.
        adjustment_modes: logit adjustments to score (``train``, ``none``); empty: the one the
            model was trained with (its ``loss.inference_logit_adjustment``). The first mode is
            the one figures, saved predictions and the summary use.
        slab_voxels: z slices of the prediction grid predicted at once (memory bound).
        label_chunk_voxels: label voxels read at once while scoring (memory bound).
        device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``.
        save_predictions: also write the probabilities as an OME-NGFF zarr.
        tta: test-time augmentation (``inference.tta``, :mod:`cellseg.tta`): what the figures,
            saved predictions and the summary use.
        tta_compare: further modes scored too (``inference.tta_compare``; rows of their own
            ``tta``, each a prediction of its own, timed).
    """

    overlap: float = 0.25
    blend_mode: str = "gaussian"
    sw_batch_size: int = 4
    threshold: float = 0.5
    adjustment_modes: tuple[str, ...] = ()
    slab_voxels: int = 32
    label_chunk_voxels: int = 2**24
    device: str = "auto"
    save_predictions: bool = False
    tta: str = "none"
    tta_compare: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "tta", TTA.parse(self.tta).value)
        compare = (TTA.parse(t, "inference.tta_compare").value for t in self.tta_compare)
        object.__setattr__(self, "tta_compare", tuple(dict.fromkeys(compare)))
        if not 0.0 <= self.overlap < 1.0:
            raise CellsegError(f"evaluation.overlap = {self.overlap}: must be in [0, 1)")
        if self.blend_mode not in BLEND_MODES:
            raise CellsegError(
                f"evaluation.blend_mode = {self.blend_mode!r}: use one of {', '.join(BLEND_MODES)}"
            )
        for mode in self.adjustment_modes:
            if mode not in {m.value for m in InferenceLogitAdjustment}:
                raise CellsegError(
                    f"evaluation.adjustment_modes: unknown mode {mode!r}; use train or none"
                )
        if min(self.sw_batch_size, self.slab_voxels, self.label_chunk_voxels) < 1:
            raise CellsegError("evaluation: sw_batch_size, slab_voxels, label_chunk_voxels >= 1")

    @property
    def tta_modes(self) -> tuple[str, ...]:
        """The test-time augmentations scored: ``tta`` first, then ``tta_compare``'s others."""
        return tuple(dict.fromkeys((self.tta, *self.tta_compare)))

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any] | None, inference: Mapping[str, Any] | None = None
    ) -> EvaluationSettings:
        """From the config's ``evaluation`` section (keys that are not settings are ignored:
        the section also holds the summary's and the figures' options) and its ``inference``
        section (``tta``, ``tta_compare``)."""
        names = {f.name for f in fields(cls)} - {"tta", "tta_compare"}
        values = {k: v for k, v in (section or {}).items() if k in names}
        if "adjustment_modes" in values:
            values["adjustment_modes"] = tuple(values["adjustment_modes"] or ())
        inference = inference or {}
        values["tta"] = inference.get("tta", "none")
        values["tta_compare"] = tuple(inference.get("tta_compare") or ())
        return cls(**values)


SlabHook = Callable[[CropGeometry, int, int, torch.Tensor], None]
"""Called with every predicted slab of a crop: ``(geometry, z0, z1, probabilities)``."""


def _level_centres(level: ScaleLevel, axis: int) -> np.ndarray:
    return level.translation_nm[axis] + np.arange(level.shape[axis]) * level.voxel_size_nm[axis]


# ------------------------------------------------------------------------------ scoring


class _ClassScorer:
    """Counts of one annotated class of a crop, fed with binarised prediction slabs.

    The label grid is the class's finest level; each label voxel takes the prediction of the
    prediction voxel nearest its centre (precomputed index maps per axis). For an instance class
    (``modes`` given) the whole crop's ground truth and resampled predictions are also kept
    (:class:`_InstanceCollector`).
    """

    def __init__(
        self,
        geometry: CropGeometry,
        name: str,
        grid: PredictionGrid,
        chunk_voxels: int,
        modes: Sequence[str] = (),
    ) -> None:
        multiscale = geometry.labels[name]
        self.level = multiscale.finest
        self.array = multiscale.open_level(self.level)
        self.encoding = geometry.encodings[name]
        self.index = [grid.nearest_index(a, _level_centres(self.level, a)) for a in range(3)]
        self.slice_voxels = self.level.shape[1] * self.level.shape[2]
        self.chunk_slices = max(1, chunk_voxels // max(self.slice_voxels, 1))
        self.instances = (
            _InstanceCollector(self.level.shape, self.encoding, modes) if modes else None
        )

    def label_range(self, z0: int, z1: int) -> tuple[int, int]:
        """Label z slices whose nearest prediction slice lies in ``[z0, z1)`` (a contiguous run:
        the index map is monotone)."""
        iz = self.index[0]
        return int(np.searchsorted(iz, z0, side="left")), int(np.searchsorted(iz, z1, side="left"))

    def counts(
        self, z0: int, z1: int, predicted: Mapping[str, np.ndarray]
    ) -> dict[str, np.ndarray]:
        """``(4,)`` counts per mode of the label slices served by prediction slices ``[z0, z1)``.

        Args:
            predicted: mode → ``(z1 - z0, H, W)`` bool prediction of this class.
        """
        out = {mode: np.zeros(4, dtype=np.int64) for mode in predicted}
        lo, hi = self.label_range(z0, z1)
        for c0 in range(lo, hi, self.chunk_slices):
            c1 = min(hi, c0 + self.chunk_slices)
            raw = np.asarray(self.array[c0:c1])
            target = self.encoding.decode(raw)
            if self.instances is not None:
                self.instances.add_truth(c0, c1, raw, target)
            iz = self.index[0][c0:c1] - z0
            for mode, slab in predicted.items():
                resampled = slab[np.ix_(iz, self.index[1], self.index[2])]
                out[mode] += confusion_counts(resampled[None, None], target[None, None])[0, 0]
                if self.instances is not None:
                    self.instances.add_prediction(mode, c0, c1, resampled, target)
        return out


class _InstanceCollector:
    """One instance class of a crop, whole, on its label grid: ground-truth ids and the binarised
    prediction of each mode, for :func:`cellseg.challenge.score_instance_modes`.

    Unannotated voxels are background in both (the challenge multiplies both by its mask). Ids
    keep their values (uint32, :class:`cellseg.challenge.TruthIds`: the official scorer depends on
    them); a class stored as semantic 0/1 is split into instances by connected components when
    scored.
    """

    def __init__(
        self, shape: tuple[int, int, int], encoding: LabelEncoding, modes: Sequence[str]
    ) -> None:
        self.truth = np.zeros(shape, dtype=np.uint32)
        self.predicted = {mode: np.zeros(shape, dtype=bool) for mode in modes}
        self.ids = (
            TruthIds(background=(encoding.absent, encoding.unknown)) if encoding.instance else None
        )

    def add_truth(self, c0: int, c1: int, raw: np.ndarray, target: np.ndarray) -> None:
        if self.ids is not None:
            self.truth[c0:c1] = self.ids(raw)
        else:
            self.truth[c0:c1] = target == 1.0  # NaN (unannotated) compares False

    def add_prediction(
        self, mode: str, c0: int, c1: int, resampled: np.ndarray, target: np.ndarray
    ) -> None:
        self.predicted[mode][c0:c1] = resampled & ~np.isnan(target)

    def score(self, voxel_size_nm: Sequence[float]) -> dict[str, dict[str, InstanceScore]]:
        """Adjustment mode → scorer mode (official, corrected) → score."""
        truth = self.truth if self.ids is not None else connected_components(self.truth > 0)[0]
        return {
            mode: score_instance_modes(truth, predicted, voxel_size_nm)
            for mode, predicted in self.predicted.items()
        }


class _PredictionWriter:
    """Streams one crop's probabilities into an OME-NGFF (0.4, zarr format 2) group per class."""

    def __init__(
        self,
        root: zarr.Group,
        crop: Crop,
        grid: PredictionGrid,
        slab: int,
        classes: Sequence[str] = CLASSES,
    ) -> None:
        from cellseg.ngff import create_multiscale_group

        dataset, crop_name = crop.name.split("/", 1)
        parent = root.require_group(dataset).require_group(crop_name)
        self.arrays = {
            name: create_multiscale_group(
                parent,
                name,
                grid.shape,
                "uint8",
                grid.resolution_nm,
                tuple(float(v) for v in grid.origin_nm),
                1,
                attrs={"cellseg": {"encoding": "probability * 255 (threshold 0.5 ~ 128)"}},
                chunks=max(1, min(slab, 64)),
            )[0]
            for name in classes  # the trained ones: an untrained channel gets no array
        }

    def write(self, z0: int, z1: int, probabilities: torch.Tensor) -> None:
        values = (probabilities.clamp(0, 1) * 255).round().to(torch.uint8).numpy()
        for name, array in self.arrays.items():
            array[z0:z1] = values[CLASSES.index(name)]


def evaluate_crop(
    predictor: Predictor,
    crop: Crop,
    settings: EvaluationSettings,
    device: torch.device | str = "cpu",
    predictions: zarr.Group | None = None,
    on_slab: SlabHook | None = None,
) -> pd.DataFrame:
    """Predict one crop and score its annotated classes, once per test-time augmentation of
    ``settings.tta_modes`` (each a prediction of its own).

    Args:
        predictor: the model.
        crop: a crop of the datasplit.
        settings: evaluation settings.
        device: where the network runs.
        predictions: when given, an open zarr group the first mode's probabilities (with
            ``settings.tta``) go into (``{dataset}/{crop}/{class}/s0``).
        on_slab: called with ``(geometry, z0, z1, probabilities)`` for every slab of
            ``settings.tta``'s prediction: the first mode's ``(14, z1 - z0, H, W)``
            probabilities (the figures' slices, :mod:`cellseg.evaluation_slices`).

    Returns:
        one row per (mode, tta, annotated class), columns :data:`METRIC_COLUMNS`.
    """
    geometry = read_crop_geometry(crop, predictor.resolution_nm)
    tables = []
    for k, tta in enumerate(settings.tta_modes):
        # the saved probabilities and the figures' slices are settings.tta's
        into, hook = (predictions, on_slab) if k == 0 else (None, None)
        once = replace(settings, tta=tta)
        tables.append(_evaluate_crop_once(predictor, crop, geometry, once, device, into, hook))
    return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]


def _evaluate_crop_once(
    predictor: Predictor,
    crop: Crop,
    geometry: CropGeometry,
    settings: EvaluationSettings,
    device: torch.device | str,
    predictions: zarr.Group | None,
    on_slab: SlabHook | None = None,
) -> pd.DataFrame:
    """:func:`evaluate_crop` with ``settings.tta`` alone."""
    grid = PredictionGrid.for_crop(geometry, predictor.resolution_nm)
    modes = predictor.modes(settings)
    # an untrained class (or a group with no trained member) is not scored: its channel is noise
    scored = trained_names(predictor.trained_classes, geometry.labels)
    scorers = {
        name: _ClassScorer(
            geometry,
            name,
            grid,
            settings.label_chunk_voxels,
            modes if name in INSTANCE_CLASSES else (),
        )
        for name in scored
    }
    writer = (
        _PredictionWriter(predictions, crop, grid, settings.slab_voxels, predictor.trained_classes)
        if predictions is not None
        else None
    )
    # group labels (issue 33 item 2) score after the 14, only in a crop that holds one
    names = (*CLASSES, *GROUP_NAMES) if set(geometry.labels) & set(GROUP_INDEX) else CLASSES
    channel = {name: c for c, name in enumerate(names)}
    counts = {mode: np.zeros((1, len(names), 4), dtype=np.int64) for mode in modes}
    inference_seconds = 0.0
    started = time.perf_counter()
    for z0, z1, logits in predict_crop(predictor, geometry, settings, device):
        inference_seconds += time.perf_counter() - started
        probabilities = {mode: predictor.probabilities(logits, mode) for mode in modes}
        if writer is not None:
            writer.write(z0, z1, probabilities[modes[0]])
        if on_slab is not None:
            on_slab(geometry, z0, z1, probabilities[modes[0]])
        positive = {mode: (p > settings.threshold).numpy() for mode, p in probabilities.items()}
        for name, scorer in scorers.items():
            c = channel[name]
            if name in GROUP_INDEX:
                # as the challenge scores a group: the union of its members' predictions
                slabs = {m: group_prediction(positive[m], name) for m in modes}
            else:
                slabs = {m: positive[m][c] for m in modes}
            slab_counts = scorer.counts(z0, z1, slabs)
            for mode in modes:
                counts[mode][0, c] += slab_counts[mode]
        started = time.perf_counter()
    instance_scores = {}
    for name, scorer in scorers.items():
        if scorer.instances is not None:
            instance_scores[name] = scorer.instances.score(scorer.level.voxel_size_nm)
            scorer.instances = None  # the crop-sized arrays are no longer needed
    tables = []
    for mode in modes:
        table = crop_class_table(counts[mode], [crop.name], names)
        voxel = np.array([scorers[name].level.voxel_size_nm for name in table["class"]]).reshape(
            -1, 3
        )
        table = table.assign(
            model=predictor.model,
            dim=predictor.dim,
            adjustment=mode,
            tta=settings.tta,
            voxel_size_z_nm=voxel[:, 0],
            voxel_size_y_nm=voxel[:, 1],
            voxel_size_x_nm=voxel[:, 2],
            prediction_voxel_size_nm=table_value(predictor.resolution_nm),
            threshold=settings.threshold,
            inference_seconds=inference_seconds,
            predicted_voxels=int(np.prod(grid.shape)),
        )
        table = _with_instance_columns(table, {k: v[mode] for k, v in instance_scores.items()})
        tables.append(table)
    return pd.concat(tables, ignore_index=True)[list(METRIC_COLUMNS)]


def _with_instance_columns(
    table: pd.DataFrame, scores: Mapping[str, Mapping[str, InstanceScore]]
) -> pd.DataFrame:
    """Add :data:`INSTANCE_COLUMNS` to one mode's crop table: filled for the instance classes
    scored (class → scorer mode → score), missing (NA) for the others."""
    integers = INTEGER_INSTANCE_COLUMNS
    columns: dict[str, Any] = {
        name: pd.array([pd.NA] * len(table), dtype="Int64" if name in integers else "Float64")
        for name in INSTANCE_COLUMNS
    }
    for status in STATUS_COLUMNS:
        columns[status] = pd.array([pd.NA] * len(table), dtype="string")
    for i, name in enumerate(table["class"]):
        if name in scores:
            for column, value in instance_columns(scores[name]).items():
                columns[column][i] = value
    return table.assign(**columns)


def evaluate_crops(
    predictor: Predictor,
    crops: Sequence[Crop],
    settings: EvaluationSettings,
    predictions_path: Path | str | None = None,
    log: Any = None,
    figures: FigureSliceCollector | None = None,
) -> pd.DataFrame:
    """Evaluate ``predictor`` on every crop (see :func:`evaluate_crop`).

    Args:
        predictor: the model.
        crops: the held-out crops.
        settings: evaluation settings.
        predictions_path: an OME-NGFF zarr to write probabilities to (replaced atomically), or
            ``None``.
        log: a text stream for one progress line per crop (default stderr).
        figures: fed the figures' slices as the crops are predicted (``crops`` its crops).

    Returns:
        the concatenated metrics table, columns :data:`METRIC_COLUMNS`.
    """
    log = log or sys.stderr
    device = resolve_device(settings.device)
    predictor.network.to(device).eval()
    untrained = untrained_classes(predictor.trained_classes)
    root = temporary = None
    if predictions_path is not None:
        predictions_path = Path(predictions_path)
        check_outside_stores(predictions_path, crops)
        temporary = predictions_path.with_name(f".{predictions_path.name}.tmp")
        shutil.rmtree(temporary, ignore_errors=True)
        root = zarr.open_group(str(temporary), mode="w", zarr_format=2)
        root.attrs["cellseg"] = {
            "model": predictor.key,
            "adjustment": predictor.modes(settings)[0],
            "tta": settings.tta,
            "layout": "{dataset}/{crop}/{class}/s0: uint8 probability * 255",
            # only for a run with untrained classes, which get no array (a store as before else)
            **({UNTRAINED_KEY: list(untrained)} if untrained else {}),
        }
    tables = []
    for index, crop in enumerate(crops):
        hook = functools.partial(figures.add, index) if figures is not None else None
        table = evaluate_crop(predictor, crop, settings, device, root, hook)
        # a class with no annotated voxel (all unknown) has no row: nothing of it can be scored;
        # nor has an untrained one (its channel never saw a label)
        trained = set(trained_names(predictor.trained_classes, crop.classes))
        not_trained = [name for name in crop.classes if name not in trained]
        unscored = [n for n in crop.classes if n in trained and n not in set(table["class"])]
        if table.empty and not trained:
            print(
                f"[{predictor.key}] skipped {crop.name}: none of its classes "
                f"({', '.join(crop.classes)}) was trained (no training crop annotates them)",
                file=log,
                flush=True,
            )
            continue
        if table.empty:
            # skipped, not fatal: the other crops' metrics are kept
            print(
                f"[{predictor.key}] skipped {crop.name}: none of its classes "
                f"({', '.join(crop.classes)}) has an annotated voxel (all unknown), so there is "
                "nothing to score; fix its labels or remove it from the datasplit",
                file=log,
                flush=True,
            )
            continue
        tables.append(table)
        first = table[
            (table["adjustment"] == table["adjustment"].iloc[0]) & (table["tta"] == settings.tta)
        ]
        not_scored = f"; not scored, no annotated voxel: {', '.join(unscored)}" if unscored else ""
        if not_trained:
            not_scored += f"; not scored, not trained: {', '.join(not_trained)}"
        print(
            f"[{predictor.key}] {crop.name}: {len(first)} classes, mean Dice "
            f"{first['dice'].mean():.4f} ({table['inference_seconds'].iloc[0]:.1f} s inference)"
            f"{not_scored}",
            file=log,
            flush=True,
        )
    if temporary is not None and predictions_path is not None:
        shutil.rmtree(predictions_path, ignore_errors=True)
        os.replace(temporary, predictions_path)
    if not tables:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    return pd.concat(tables, ignore_index=True)


def evaluate_checkpoint(
    checkpoint: Path | str,
    datasplit: Path | str,
    out: Path | str,
    settings: EvaluationSettings | None = None,
    predictions_path: Path | str | None = None,
    split: str = "test",
    log: Any = None,
    threads: int | None = None,
    figure_slices_path: Path | str | None = None,
    figure_settings: ModelFigureSettings | None = None,
) -> pd.DataFrame:
    """Load ``best.pt``, evaluate it on the ``split`` crops of ``datasplit`` and write ``out``.

    ``threads``: CPU threads torch may use (the job's ``threads``; ``None``: torch's default, one
    per core). Float sums on the CPU depend on it, so a fixed count gives the same scores on
    every run whatever else runs beside the job.

    ``figure_slices_path``: also write the slices the model's figures draw there
    (:mod:`cellseg.figure_slices`; which ones: ``figure_settings``), kept as they are predicted.

    The CSV is written atomically. Both-empty classes score 1 (``empty`` column, SPEC §8).

    Raises:
        CellsegError: the model was trained or validated on one of the crops to score, or its
            checkpoint does not record its training crops (:func:`check_unseen`); ``out`` lies
            in a data store or is a directory (:func:`cellseg.ownership.check_output_path`).

    Returns:
        the metrics table that was written.
    """
    settings = settings or EvaluationSettings()
    log = log or sys.stderr
    # before any work: the CSV is never written into a data store, nor over a directory
    check_output_path(out, "--out", "file")
    if threads is not None:
        torch.set_num_threads(max(int(threads), 1))
    crops = read_scored_crops(datasplit, [split], log)  # the datasplit step's label checks
    device = resolve_device(settings.device)
    predictor = Predictor.from_checkpoint(checkpoint, device)
    check_unseen(predictor.data_identity, crops, str(checkpoint))
    print(
        f"[{predictor.key}] evaluating {len(crops)} {split} crops at {format_resolution(predictor.resolution_nm)} nm "
        f"on {device}, adjustment {', '.join(predictor.modes(settings))}, test-time augmentation "
        f"{', '.join(settings.tta_modes)}; a class with empty "
        "prediction and empty ground truth scores 1 (column 'empty')",
        file=log,
        flush=True,
    )
    if (line := untrained_line(predictor.trained_classes)) is not None:
        print(f"[{predictor.key}] {line}", file=log, flush=True)
    if predictions_path is None and settings.save_predictions:
        predictions_path = Path(out).with_suffix(".zarr")
    if predictions_path is not None:  # replaced at the end: only ever a store of cellseg's
        check_output_path(predictions_path, "--predictions", "cellseg-store")
    figures = None
    if figure_slices_path is not None:
        check_output_path(figure_slices_path, "--figure-slices", "file")
        figures = FigureSliceCollector(
            predictor,
            crops,
            figure_settings or ModelFigureSettings(),
            predictor.modes(settings)[0],
            settings.threshold,
            settings.overlap,
        )
    table = evaluate_crops(predictor, crops, settings, predictions_path, log, figures)
    if figures is not None and figure_slices_path is not None:
        write_figure_slices(figure_slices_path, figures.slices())
    with atomic_path(out) as temporary:
        table.to_csv(temporary, index=False)
    return table


# ------------------------------------------------------------------------------ command line


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="per-class Dice of a trained model on the held-out crops (metrics CSV)",
        description=(
            "Predict every test crop with a best.pt and write one row per crop x annotated class "
            "(TP, FP, FN, TN, Dice, IoU, precision, recall, empty). Empty prediction and empty "
            "ground truth score 1 (flagged in 'empty')."
        ),
    )
    defaults = EvaluationSettings()
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt of the train rule")
    parser.add_argument("--datasplit", type=Path, required=True, help="datasplit CSV")
    parser.add_argument("--out", type=Path, required=True, help="metrics CSV to write")
    parser.add_argument("--split", default="test", help="which crops (default: test)")
    parser.add_argument(
        "--adjustment",
        action="append",
        choices=[m.value for m in InferenceLogitAdjustment],
        help="logit adjustment to score; repeat for several (default: the model's own)",
    )
    parser.add_argument("--overlap", type=float, default=defaults.overlap)
    parser.add_argument("--blend-mode", choices=BLEND_MODES, default=defaults.blend_mode)
    parser.add_argument("--sw-batch-size", type=int, default=defaults.sw_batch_size)
    parser.add_argument("--threshold", type=float, default=defaults.threshold)
    parser.add_argument("--slab-voxels", type=int, default=defaults.slab_voxels)
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--tta", choices=TTA_MODES, default=defaults.tta, help="test-time augmentation"
    )
    parser.add_argument(
        "--tta-compare",
        action="append",
        choices=TTA_MODES,
        help="also score this test-time augmentation (rows of its own); repeat for several",
    )
    parser.add_argument(
        "--predictions", type=Path, default=None, help="also write an OME-NGFF zarr here"
    )
    parser.add_argument(
        "--figure-slices",
        type=Path,
        default=None,
        help="also write the slices the model's figures draw here (.npz)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(
        EvaluationSettings,
        args,
        adjustment_modes=tuple(args.adjustment or ()),
        tta_compare=tuple(args.tta_compare or ()),
    )
    table = evaluate_checkpoint(
        args.checkpoint,
        args.datasplit,
        args.out,
        settings,
        args.predictions,
        args.split,
        figure_slices_path=args.figure_slices,
    )
    print(f"{args.out}: {len(table)} rows", file=sys.stderr)
    return 0
