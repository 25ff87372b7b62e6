"""Tiny hand-built CellMap stores, written with plain zarr (independent of cellseg's writer).

A module of its own (not conftest) so tests of every folder import it by a unique name
(``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

import numpy as np
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
    chunks: tuple[int, ...] | None = None,
) -> None:
    """An OME-NGFF 0.4 multiscale group: level ``s{i}`` holds ``levels[i]`` (z, y, x) with the
    voxel size and translation (nm) given for it; ``chunks`` default to 8 voxels an axis."""
    group = root.require_group(group_path)
    datasets = []
    for index, (data, scale, translation) in enumerate(
        zip(levels, voxel_sizes, translations, strict=True)
    ):
        level_chunks = chunks or tuple(min(8, n) for n in data.shape)
        group.create_array(f"s{index}", data=data, chunks=level_chunks)
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
