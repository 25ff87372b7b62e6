"""Fixtures of the data tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from store_builders import annotation, write_multiscale

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
