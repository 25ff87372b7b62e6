"""Reading a lab's own volumes for ``cellseg import``: one 3D array from a file of any common kind.

A *source* is a mapping from the import YAML (:mod:`cellseg.data.importer`): ``path`` (a file or
a folder), optional ``format`` (inferred from the name when absent), ``key`` (the dataset inside
an HDF5 file or the array path inside a zarr group) and ``channel`` / ``channel_axis`` (one
channel of a 4D array such as a ``(Z, C, Y, X)`` mask stack). Every reader returns a whole
``(z, y, x)`` NumPy array in voxels: the importer holds one volume in memory at a time.

Formats: TIFF stacks (``tifffile``), NumPy ``.npy`` (memory-mapped), HDF5 (``h5py``, only when it
is installed: cellseg does not depend on it), zarr (format 2 or 3, an array or ``key`` inside a
group) and a folder of 2D slices (TIFF or PNG, sorted by file name). N5 is not readable by zarr 3
(cellseg's zarr) and is refused with a line saying how to convert it.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.errors import CellsegError

FORMATS: tuple[str, ...] = ("tiff", "npy", "hdf5", "zarr", "n5", "slices")
SLICE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png")


def infer_format(path: Path) -> str:
    """The source format from the path's name: a folder of slices, or a file's suffix."""
    name = path.name.lower()
    if name.endswith(".n5"):
        return "n5"
    if name.endswith(".zarr") or (path / ".zarray").is_file() or (path / "zarr.json").is_file():
        return "zarr"
    if path.is_dir():
        return "slices"
    for suffixes, kind in (
        ((".tif", ".tiff"), "tiff"),
        ((".npy",), "npy"),
        ((".h5", ".hdf5", ".hdf"), "hdf5"),
    ):
        if name.endswith(suffixes):
            return kind
    raise CellsegError(
        f"{path}: cannot tell the format from the name; set format: to one of {', '.join(FORMATS)}"
    )


def _read_slices(path: Path) -> np.ndarray:
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in SLICE_SUFFIXES)
    if not files:
        raise CellsegError(
            f"{path}: no slice files ({', '.join(SLICE_SUFFIXES)}) in this folder; point path: "
            "at a folder of 2D slices or at a volume file"
        )
    planes = []
    for file in files:
        if file.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(file) as image:
                plane = np.asarray(image)
        else:
            import tifffile

            plane = tifffile.imread(file)
        if plane.ndim != 2:
            raise CellsegError(f"{file}: a slice of shape {plane.shape}, not 2D; use grey slices")
        if planes and plane.shape != planes[0].shape:
            raise CellsegError(
                f"{file}: slice shape {plane.shape} differs from {files[0].name}'s "
                f"{planes[0].shape}; every slice of the folder must have one shape"
            )
        planes.append(plane)
    return np.stack(planes)


def _read_hdf5(path: Path, key: str | None, where: str) -> np.ndarray:
    try:
        import h5py
    except ImportError:
        raise CellsegError(
            f"{where}: {path} is HDF5, which needs h5py (not a cellseg dependency); "
            "`pip install h5py` in cellseg's environment, or convert the volume to .npy or TIFF"
        ) from None
    if not key:
        raise CellsegError(f"{where}.key: missing; name the dataset inside {path} (e.g. key: raw)")
    with h5py.File(path, "r") as file:
        if key not in file:
            raise CellsegError(f"{where}.key: {path} has no dataset {key!r}; check the name")
        return np.asarray(file[key])


def _read_zarr(path: Path, key: str | None, where: str) -> np.ndarray:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
        if key:
            node = node[key]
    except Exception as error:  # zarr raises several types for a missing node
        raise CellsegError(
            f"{where}: cannot open {path}{'/' + key if key else ''} as a zarr array "
            f"({type(error).__name__}); check path: and key:"
        ) from None
    if not isinstance(node, zarr.Array):
        raise CellsegError(
            f"{where}.key: {path}{'/' + key if key else ''} is a zarr group, not an array; name "
            "the array inside it with key: (e.g. key: s0)"
        )
    return np.asarray(node[...])


def read_volume(source: Mapping[str, Any], base: Path, where: str) -> np.ndarray:
    """The ``(z, y, x)`` array a source names (voxels; dtype as stored).

    Args:
        source: the YAML mapping (``path``, ``format``, ``key``, ``channel``, ``channel_axis``).
        base: folder that a relative ``path`` is resolved against.
        where: the source's key path in the YAML file, for errors (``file: key``).

    Raises:
        CellsegError: a missing file, an unknown or unavailable format, or an array that is not
            3D after the channel is chosen; one line naming the key and the fix.
    """
    path = Path(source["path"])
    path = path if path.is_absolute() else base / path
    if not path.exists():
        raise CellsegError(
            f"{where}.path: {path} does not exist; paths are relative to the mapping file or to "
            "--source-root"
        )
    kind = source.get("format") or infer_format(path)
    key = source.get("key")
    if kind == "n5":
        raise CellsegError(
            f"{where}.format: {path} is N5, which zarr 3 cannot read; convert the array to zarr "
            "(e.g. with tensorstore, or zarr 2's N5Store) and set format: zarr"
        )
    if kind == "tiff":
        import tifffile

        volume = tifffile.imread(path)
    elif kind == "npy":
        volume = np.load(path, mmap_mode="r")
    elif kind == "hdf5":
        volume = _read_hdf5(path, key, where)
    elif kind == "zarr":
        volume = _read_zarr(path, key, where)
    else:
        volume = _read_slices(path)
    channel = source.get("channel")
    if channel is not None:
        axis = int(source.get("channel_axis", 1))
        if volume.ndim != 4 or not 0 <= axis < 4 or not 0 <= channel < volume.shape[axis]:
            raise CellsegError(
                f"{where}.channel: {path} has shape {volume.shape}; channel {channel} of axis "
                f"{axis} does not exist (channel_axis: the axis of a 4D array holding channels)"
            )
        volume = np.take(volume, channel, axis=axis)
    if volume.ndim != 3:
        hint = " (a 4D array: pick one with channel: and channel_axis:)" if volume.ndim == 4 else ""
        raise CellsegError(
            f"{where}: {path} has shape {volume.shape}, not a 3D (z, y, x) volume{hint}"
        )
    return np.asarray(volume)
