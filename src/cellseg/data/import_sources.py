"""Reading a lab's own volumes for ``cellseg import``: one 3D array from a file of any common kind.

A *source* is a mapping from the import YAML (:mod:`cellseg.data.importer`): ``path`` (a file or
a folder), optional ``format`` (inferred from the name when absent), ``key`` (the dataset inside
an HDF5 file or the array path inside a zarr group) and ``channel`` / ``channel_axis`` (one
channel of a 4D array such as a ``(Z, C, Y, X)`` mask stack). Every reader returns a whole
``(z, y, x)`` NumPy array in voxels: the importer holds one volume in memory at a time.

Formats: TIFF stacks (``tifffile``), NumPy ``.npy`` (memory-mapped), HDF5 (``h5py``, only when it
is installed: cellseg does not depend on it), zarr (format 2 or 3, an array or ``key`` inside a
group), N5 (``key`` the dataset inside the container; zarr 3 cannot read N5, so
:func:`read_n5` reads its documented block format: raw, gzip, bzip2, xz or Blosc blocks; N5
lists dimensions fastest first, so an ``x, y, z`` dataset becomes ``(z, y, x)``) and a folder of
2D slices (TIFF or PNG, sorted by file name).
"""

from __future__ import annotations

import itertools
import json
import struct
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
    if name.endswith(".n5") or (path / "attributes.json").is_file():
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


N5_DTYPES: frozenset[str] = frozenset(
    {"uint8", "uint16", "uint32", "uint64", "int8", "int16", "int32", "int64", "float32", "float64"}
)


def _n5_decompress(data: bytes, compression: dict[str, Any], where: str) -> bytes:
    kind = compression.get("type", "raw")
    if kind == "raw":
        return data
    if kind == "gzip":
        import zlib

        return zlib.decompress(data, 47)  # gzip or zlib header, detected
    if kind == "bzip2":
        import bz2

        return bz2.decompress(data)
    if kind == "xz":
        import lzma

        return lzma.decompress(data)
    if kind == "blosc":
        import numcodecs

        return bytes(numcodecs.Blosc().decode(data))
    raise CellsegError(
        f"{where}: N5 compression {kind!r} is not readable here (raw, gzip, bzip2, xz, blosc); "
        "convert the dataset to zarr"
    )


def read_n5(path: Path, key: str | None, where: str) -> np.ndarray:
    """An N5 dataset (``path/key``) as a NumPy array in C order (N5's dimensions reversed).

    Blocks are files ``i/j/k`` (grid indices in N5 order) holding a big-endian header (mode,
    number of dimensions, the block's own size per dimension) and the compressed big-endian
    values; a missing block reads as 0.
    """
    folder = path / key if key else path
    try:
        attributes = json.loads((folder / "attributes.json").read_text())
        dims = [int(n) for n in attributes["dimensions"]]
        block = [int(n) for n in attributes["blockSize"]]
        dtype = str(attributes["dataType"])
    except (OSError, ValueError, KeyError, TypeError):
        raise CellsegError(
            f"{where}.key: {folder} is not an N5 dataset (no readable attributes.json with "
            "dimensions, blockSize and dataType); name the dataset inside the container"
        ) from None
    if dtype not in N5_DTYPES:
        raise CellsegError(f"{where}: N5 dataType {dtype!r} is not readable; convert to zarr")
    compression = attributes.get("compression", {"type": "raw"})
    out = np.zeros(dims[::-1], dtype=dtype)
    big_endian = np.dtype(dtype).newbyteorder(">")
    for grid in itertools.product(*(range(-(-d // b)) for d, b in zip(dims, block, strict=True))):
        file = folder.joinpath(*map(str, grid))
        if not file.is_file():
            continue
        raw = file.read_bytes()
        mode, ndim = struct.unpack(">HH", raw[:4])
        size = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        start = 4 + 4 * ndim + (4 if mode == 1 else 0)
        values = np.frombuffer(_n5_decompress(raw[start:], compression, where), big_endian)
        values = values[: int(np.prod(size))].reshape(size[::-1])
        corner = [g * b for g, b in zip(grid, block, strict=True)][::-1]
        out[tuple(slice(c, c + n) for c, n in zip(corner, values.shape, strict=True))] = values
    return out


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


def _read(path: Path, kind: str, key: str | None, where: str) -> np.ndarray:
    if kind == "n5":
        return read_n5(path, key, where)
    if kind == "tiff":
        import tifffile

        return tifffile.imread(path)
    if kind == "npy":
        return np.load(path, mmap_mode="r")
    if kind == "hdf5":
        return _read_hdf5(path, key, where)
    if kind == "zarr":
        return _read_zarr(path, key, where)
    return _read_slices(path)


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
    try:
        volume = _read(path, kind, source.get("key"), where)
    except CellsegError:
        raise
    except Exception as error:  # each library has its own errors for a corrupt or foreign file
        detail = str(error).splitlines()[0] if str(error) else ""
        raise CellsegError(
            f"{where}: cannot read {path} as {kind} ({type(error).__name__}: {detail}); check the "
            "file, or set format: to its real kind"
        ) from None
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
