"""Mapping files for ``cellseg import`` (:mod:`cellseg.data.importer`): a dataset's entry, a
label image's labels section, the file holding them, and a TIFF pair larger than the importer's
blocks (tests/data/test_import_streaming.py's memory test and bench/import_memory.py).

A module of its own (not conftest) so tests of every folder, and the benchmark, import it by a
unique name (``pythonpath = ["tests"]`` in pyproject.toml).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

STRIPED_VALUES = {0: "none", 1: "mito_lum", 2: "pm", 3: "mito"}
"""The classes of :func:`write_striped_tiffs`'s label values."""


def dataset_entry(
    name: str,
    em: str,
    labels: Mapping[str, Any],
    voxel_size_nm: Sequence[float] = (8, 8, 8),
    **extra: Any,
) -> dict[str, Any]:
    """One entry of a mapping's ``datasets``: the EM at ``em`` (a path relative to the mapping
    file), voxels of ``voxel_size_nm`` ``(z, y, x)`` nm, its ``labels`` section, and the keys of
    ``extra`` (``offset_nm``, ``crops``; without ``crops``: one crop of the whole volume)."""
    return {
        "name": name,
        "em": {"path": em},
        "voxel_size_nm": list(voxel_size_nm),
        "labels": dict(labels),
        **extra,
    }


def label_image(source: str, values: Mapping[int, str], **extra: Any) -> dict[str, Any]:
    """A ``label_image`` labels section: ``source`` (a path) whose ``values`` name classes;
    ``extra``: ``unknown_value``, ``other_values``, ``annotated``."""
    return {"kind": "label_image", "source": {"path": source}, "values": dict(values), **extra}


def write_mapping(folder: Path, *datasets: Mapping[str, Any], name: str = "mapping.yaml") -> Path:
    """``folder/name`` holding ``datasets``; returns its path."""
    path = Path(folder) / name
    path.write_text(yaml.safe_dump({"datasets": [dict(d) for d in datasets]}, sort_keys=False))
    return path


def write_striped_tiffs(folder: Path, shape: Sequence[int], seed: int = 0) -> dict[str, Any]:
    """``folder/em.tif``: uniform random uint8 (uncompressed, one contiguous series: the importer
    memory-maps it) and ``folder/labels.tif``: uint8 ``(y // 40 + x // 40 + z // 30) % 4``
    (zlib-compressed pages: read page by page), both of ``shape`` ``(z, y, x)`` voxels and written
    a plane at a time, so no volume is ever in memory. Returns the dataset entry importing them
    (:data:`STRIPED_VALUES`, 8 nm, one crop of the whole volume)."""
    import tifffile

    folder = Path(folder)
    z_size, y_size, x_size = (int(n) for n in shape)
    rng = np.random.default_rng(seed)
    with tifffile.TiffWriter(folder / "em.tif") as em:
        for _ in range(z_size):
            em.write(rng.integers(0, 256, size=(y_size, x_size), dtype=np.uint8), contiguous=True)
    y, x = np.ogrid[:y_size, :x_size]
    with tifffile.TiffWriter(folder / "labels.tif") as labels:
        planes = ((y // 40 + x // 40 + z // 30) % 4 for z in range(z_size))
        labels.write(
            (p.astype(np.uint8) for p in planes), shape=(z_size, y_size, x_size), dtype=np.uint8,
            compression="zlib",
        )  # fmt: skip
    return dataset_entry("striped", "em.tif", label_image("labels.tif", STRIPED_VALUES))
