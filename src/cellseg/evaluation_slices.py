"""Evaluation keeps the slices a model's figures draw (:mod:`cellseg.figure_slices`) while it
predicts each test crop, so the figures show exactly the probabilities that were scored and the
``visualize`` rule loads no model.

:class:`FigureSliceCollector` picks the slices before the first crop (:func:`sample_slices`,
:func:`figure_crop`, from the same crops and seed the figures always used) and is fed every
predicted slab of the first test-time augmentation; for a slab holding a pick it keeps the
slice's first-mode probabilities and reads its EM (as the network read it) and ground truth
(on the prediction grid, as :class:`cellseg.data.patches.CropReader` reads training targets).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from cellseg.classes import GROUP_NAMES
from cellseg.data.patches import CropReader, PatchGrid
from cellseg.data.store import Crop, CropGeometry, read_crop_geometry
from cellseg.figure_slices import (
    FigureSlice,
    FigureSlices,
    ModelFigureSettings,
    annotated_names,
    figure_crop,
    sample_slices,
)
from cellseg.inference import PredictionGrid, Predictor, crop_em

__all__ = ["FigureSliceCollector", "truth_slice"]


def truth_slice(
    predictor: Predictor, geometry: CropGeometry, z: int, groups: bool = False
) -> np.ndarray:
    """``(14[+groups], H, W)`` float32 ground truth of prediction-grid slice ``z`` of a crop
    (nearest label voxel; NaN where unannotated; the group channels after the 14 when
    ``groups``)."""
    grid = PredictionGrid.for_crop(geometry, predictor.resolution_nm)
    r_z, r_y, r_x = grid.resolution_nm
    yy, xx = np.meshgrid(
        grid.origin_nm[1] + np.arange(grid.shape[1]) * r_y,
        grid.origin_nm[2] + np.arange(grid.shape[2]) * r_x,
        indexing="ij",
    )
    z_nm = np.array([grid.origin_nm[0] + z * r_z])
    reader = CropReader(
        geometry, grid.resolution_nm, predictor.em_range, infer_true_negatives=False, groups=groups
    )
    _, target = reader.read(PatchGrid(z_nm, np.stack([yy, xx], axis=-1)))
    return target[:, 0]


class FigureSliceCollector:
    """The figure slices of one model's evaluation.

    Args:
        predictor: the model evaluated.
        crops: the test crops, in the datasplit's order (the picks index them).
        settings: which slices (``evaluation.figure_samples``, ``figure_seed``).
        mode: the adjustment mode of the probabilities fed (evaluation's first).
        threshold: evaluation's threshold (recorded for the per-class panels).
        overlap: evaluation's window overlap (the EM is read on the volume's grid it makes).
    """

    def __init__(
        self,
        predictor: Predictor,
        crops: Sequence[Crop],
        settings: ModelFigureSettings,
        mode: str,
        threshold: float,
        overlap: float,
    ) -> None:
        self.predictor, self.crops = predictor, list(crops)
        self.mode, self.threshold, self.overlap = mode, float(threshold), overlap
        geometries = [read_crop_geometry(crop, predictor.resolution_nm) for crop in self.crops]
        depths = [PredictionGrid.for_crop(g, predictor.resolution_nm).shape[0] for g in geometries]
        # (key, crop index, z, with group channels)
        self.wanted: list[tuple[str, int, int, bool]] = [
            (f"sample{k}", index, z, False)
            for k, (index, z) in enumerate(
                sample_slices(len(self.crops), depths, settings.samples, settings.seed)
            )
        ]
        self.names: tuple[str, ...] = ()
        if self.crops:
            index = figure_crop(self.crops, geometries, settings.seed, predictor.trained_classes)
            self.names = tuple(annotated_names(geometries[index]))
            groups = any(name in GROUP_NAMES for name in self.names)
            self.wanted.append(("classes", index, depths[index] // 2, groups))
        self.found: dict[str, FigureSlice] = {}

    def add(
        self, index: int, geometry: CropGeometry, z0: int, z1: int, probabilities: torch.Tensor
    ) -> None:
        """Keep the picks of crop ``index`` among prediction-grid slices ``[z0, z1)``.

        Args:
            probabilities: ``(14, z1 - z0, H, W)`` of :attr:`mode`.
        """
        for key, crop, z, groups in self.wanted:
            if crop == index and z0 <= z < z1:
                self.found[key] = FigureSlice(
                    self.crops[index].name,
                    z,
                    crop_em(self.predictor, geometry, (z, z + 1), self.overlap)[0],
                    truth_slice(self.predictor, geometry, z, groups),
                    # a copy: the slab's tensor is not kept alive
                    np.array(probabilities[:, z - z0].numpy(), dtype=np.float32),
                )

    def slices(self) -> FigureSlices:
        """What the figures draw (every pick fed by now)."""
        missing = [key for key, *_ in self.wanted if key not in self.found]
        if missing:  # a bug, not bad input: evaluation predicts every slice of every crop
            raise RuntimeError(f"figure slices never predicted: {', '.join(missing)}")
        samples = tuple(self.found[key] for key, *_ in self.wanted if key != "classes")
        return FigureSlices(
            model=self.predictor.key,
            mode=self.mode,
            threshold=self.threshold,
            trained_classes=tuple(self.predictor.trained_classes),
            resolution_nm=tuple(float(r) for r in self.predictor.resolution_nm),  # type: ignore[arg-type]
            samples=samples,
            classes=self.found.get("classes"),
            names=self.names,
        )
