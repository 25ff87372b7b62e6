"""Tiny hand-built CellMap stores, written with plain zarr (independent of cellseg's writer)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

SEMANTIC = {
    "type": "semantic_segmentation",
    "encoding": {"absent": 0, "present": 1, "unknown": 255},
}
INSTANCE = {"type": "instance_segmentation", "encoding": {"absent": 0, "unknown": 255}}


def write_multiscale(
    root: zarr.Group,
    group_path: str,
    levels: list[np.ndarray],
    voxel_sizes: list[tuple[float, float, float]],
    translations: list[tuple[float, float, float]],
    attributes: dict | None = None,
) -> None:
    group = root.require_group(group_path)
    datasets = []
    for index, (data, scale, translation) in enumerate(
        zip(levels, voxel_sizes, translations, strict=True)
    ):
        group.create_array(f"s{index}", data=data, chunks=tuple(min(8, n) for n in data.shape))
        datasets.append(
            {
                "path": f"s{index}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": list(scale)},
                    {"type": "translation", "translation": list(translation)},
                ],
            }
        )
    group.attrs.update(
        {
            "multiscales": [
                {
                    "version": "0.4",
                    "axes": [{"name": a, "type": "space", "unit": "nanometer"} for a in "zyx"],
                    "datasets": datasets,
                }
            ],
            **(attributes or {}),
        }
    )


def annotation(name: str, kind: dict = SEMANTIC) -> dict:
    return {"cellmap": {"annotation": {"class_name": name, "annotation_type": kind}}}


StoreFactory = Callable[..., Path]


@pytest.fixture
def make_store(tmp_path: Path) -> StoreFactory:
    """``make_store(name, em, em_voxel, em_translation, crops)`` → the store path.

    ``crops`` maps a crop name to ``{class: (levels, voxel_sizes, translations, kind)}``.
    """

    def factory(
        name: str,
        em: np.ndarray,
        crops: dict[str, dict[str, tuple]],
        em_voxel: tuple[float, float, float] = (8.0, 8.0, 8.0),
        em_translation: tuple[float, float, float] = (4.0, 4.0, 4.0),
    ) -> Path:
        store = tmp_path / "data" / name / f"{name}.zarr"
        root = zarr.open_group(str(store), mode="w", zarr_format=2)
        write_multiscale(root, "recon-1/em/fibsem-uint8", [em], [em_voxel], [em_translation])
        for crop, classes in crops.items():
            for class_name, (levels, voxels, translations, kind) in classes.items():
                write_multiscale(
                    root,
                    f"recon-1/labels/groundtruth/{crop}/{class_name}",
                    levels,
                    voxels,
                    translations,
                    annotation(class_name, kind),
                )
        return store

    return factory
