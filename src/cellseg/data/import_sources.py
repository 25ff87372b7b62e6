"""Reading a lab's own volumes for ``cellseg import``: one 3D array from a file of any common kind,
read lazily, region by region.

A *source* is a mapping from the import YAML (:mod:`cellseg.data.importer`): ``path`` (a file or
a folder), optional ``format`` (inferred from the name when absent), ``key`` (the dataset inside
an HDF5 file or the array path inside a zarr group) and ``channel`` / ``channel_axis`` (one
channel of a 4D array such as a ``(Z, C, Y, X)`` mask stack). :func:`open_volume` returns a
:class:`Volume`: its ``shape`` and ``dtype`` come from the file's header, and ``volume[box]``
reads only the voxels (and the file's blocks) of one ``(z, y, x)`` box, so the importer writes a
volume larger than memory block by block. :func:`read_volume` reads a whole source at once.

Formats, and what a box read costs: TIFF stacks (``tifffile``; an uncompressed contiguous file is
memory-mapped, any other is read page, strip or tile at a time through tifffile's zarr store),
NumPy ``.npy`` (memory-mapped), HDF5 (``h5py``, only when it is installed: cellseg does not
depend on it; sliced by h5py), zarr (format 2 or 3, an array or ``key`` inside a group; sliced by
zarr), N5 (``key`` the dataset inside the container; zarr 3 cannot read N5, so :class:`N5Array`
reads its documented block format, only the blocks a box touches: raw, gzip, bzip2, xz or Blosc
blocks; N5 lists dimensions fastest first, so an ``x, y, z`` dataset becomes ``(z, y, x)``) and a
folder of 2D slices (TIFF or PNG, sorted by file name; read one slice at a time, each slice
file's header checked when the folder is opened).
"""

from __future__ import annotations

import itertools
import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.errors import CellsegError

FORMATS: tuple[str, ...] = ("tiff", "npy", "hdf5", "zarr", "n5", "slices")
SLICE_SUFFIXES: tuple[str, ...] = (".tif", ".tiff", ".png")
PIL_MODE_DTYPES: dict[str, str] = {
    "1": "bool", "L": "uint8", "P": "uint8", "I;16": "uint16", "I;16L": "uint16",
    "I;16B": "uint16", "I": "int32", "F": "float32",
}  # fmt: skip
"""NumPy dtype of a one-band PIL image mode (``np.asarray(image).dtype``), read from the header."""


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


def _as_slices(index: Any, shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[int, ...]]:
    """A basic index (slices with step 1, integers, ``...``) as one slice per axis, and the axes
    an integer dropped."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        at = next(n for n, i in enumerate(index) if i is Ellipsis)
        index = (*index[:at], *[slice(None)] * (len(shape) - len(index) + 1), *index[at + 1 :])
    index = (*index, *[slice(None)] * (len(shape) - len(index)))
    slices, dropped = [], []
    for axis, (i, n) in enumerate(zip(index, shape, strict=True)):
        if isinstance(i, slice):
            start, stop, step = i.indices(n)
            if step != 1:
                raise IndexError("only step 1 is supported")
            slices.append(slice(start, max(start, stop)))
        else:
            i = int(i) + (n if int(i) < 0 else 0)
            if not 0 <= i < n:
                raise IndexError(f"index {i} out of range for axis {axis} of size {n}")
            slices.append(slice(i, i + 1))
            dropped.append(axis)
    return tuple(slices), tuple(dropped)


class SliceStack:
    """A folder of 2D slices (TIFF or PNG, sorted by file name) as a ``(z, y, x)`` array that
    reads one slice file at a time. Each file's header is checked when the folder is opened
    (a slice that is not 2D, or of another shape than the first, is refused)."""

    def __init__(self, path: Path) -> None:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in SLICE_SUFFIXES)
        if not files:
            raise CellsegError(
                f"{path}: no slice files ({', '.join(SLICE_SUFFIXES)}) in this folder; point path: "
                "at a folder of 2D slices or at a volume file"
            )
        dtypes: list[np.dtype] = []
        first: tuple[int, ...] | None = None
        for file in files:
            shape, dtype = self._header(file)
            if len(shape) != 2:
                raise CellsegError(f"{file}: a slice of shape {shape}, not 2D; use grey slices")
            if first is not None and shape != first:
                raise CellsegError(
                    f"{file}: slice shape {shape} differs from {files[0].name}'s "
                    f"{first}; every slice of the folder must have one shape"
                )
            first = first or shape
            dtypes.append(dtype)
        self.files = files
        self.shape: tuple[int, ...] = (len(files), *first)  # type: ignore[misc]
        self.dtype = np.result_type(*dtypes)  # as np.stack of the slices would give
        self.ndim = 3

    @staticmethod
    def _header(file: Path) -> tuple[tuple[int, ...], np.dtype]:
        """A slice file's shape (as ``np.asarray`` of it would have) and dtype, from its header."""
        if file.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(file) as image:
                bands = len(image.getbands())
                shape = (image.height, image.width) + ((bands,) if bands > 1 else ())
                if bands == 1 and image.mode in PIL_MODE_DTYPES:
                    return shape, np.dtype(PIL_MODE_DTYPES[image.mode])
                plane = np.asarray(image)  # an unusual mode: decode it once
                return plane.shape, plane.dtype
        import tifffile

        with tifffile.TiffFile(file) as tiff:
            series = tiff.series[0]
            return tuple(series.shape), np.dtype(series.dtype).newbyteorder("=")

    @staticmethod
    def _plane(file: Path) -> np.ndarray:
        if file.suffix.lower() == ".png":
            from PIL import Image

            with Image.open(file) as image:
                return np.asarray(image)
        import tifffile

        return tifffile.imread(file)

    def __getitem__(self, index: Any) -> np.ndarray:
        box, dropped = _as_slices(index, self.shape)
        out = np.empty(tuple(s.stop - s.start for s in box), dtype=self.dtype)
        for z in range(box[0].start, box[0].stop):
            out[z - box[0].start] = self._plane(self.files[z])[box[1], box[2]]
        return out.squeeze(axis=dropped) if dropped else out


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


class N5Array:
    """An N5 dataset (``path/key``) as an array in C order (N5's dimensions reversed) whose
    reads decode only the blocks a box touches.

    Blocks are files ``i/j/k`` (grid indices in N5 order) holding a big-endian header (mode,
    number of dimensions, the block's own size per dimension) and the compressed big-endian
    values; a missing block reads as 0.
    """

    def __init__(self, path: Path, key: str | None, where: str) -> None:
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
        self.folder, self.where = folder, where
        self.compression = attributes.get("compression", {"type": "raw"})
        self.shape: tuple[int, ...] = tuple(dims[::-1])
        self.block: tuple[int, ...] = tuple(block[::-1])  # C order, as the shape
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)

    def _read_block(self, grid: Sequence[int]) -> np.ndarray | None:
        """Block ``grid`` (C-order grid indices) as a C-order array, or None when absent."""
        file = self.folder.joinpath(*map(str, grid[::-1]))
        if not file.is_file():
            return None
        raw = file.read_bytes()
        mode, ndim = struct.unpack(">HH", raw[:4])
        size = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
        start = 4 + 4 * ndim + (4 if mode == 1 else 0)
        big_endian = self.dtype.newbyteorder(">")
        values = np.frombuffer(
            _n5_decompress(raw[start:], self.compression, self.where), big_endian
        )
        return values[: int(np.prod(size))].reshape(size[::-1])

    def __getitem__(self, index: Any) -> np.ndarray:
        box, dropped = _as_slices(index, self.shape)
        out = np.zeros(tuple(s.stop - s.start for s in box), dtype=self.dtype)
        grids = [range(s.start // b, -(-s.stop // b)) for s, b in zip(box, self.block, strict=True)]
        for grid in itertools.product(*grids):
            values = self._read_block(grid)
            if values is None:
                continue
            corner = [g * b for g, b in zip(grid, self.block, strict=True)]
            # the overlap of the block (clipped to its stored size) with the box, in both frames
            lo = [max(c, s.start) for c, s in zip(corner, box, strict=True)]
            hi = [min(c + n, s.stop) for c, n, s in zip(corner, values.shape, box, strict=True)]
            if any(h <= low for low, h in zip(lo, hi, strict=True)):
                continue
            target = tuple(
                slice(a - s.start, b - s.start) for a, b, s in zip(lo, hi, box, strict=True)
            )
            source = tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, corner, strict=True))
            out[target] = values[source]
        return out.squeeze(axis=dropped) if dropped else out


def read_n5(path: Path, key: str | None, where: str) -> np.ndarray:
    """A whole N5 dataset (``path/key``) as a NumPy array in C order (N5's dimensions reversed)."""
    return N5Array(path, key, where)[...]


def _open_hdf5(path: Path, key: str | None, where: str) -> Any:
    try:
        import h5py
    except ImportError:
        raise CellsegError(
            f"{where}: {path} is HDF5, which needs h5py (not a cellseg dependency); "
            "`pip install h5py` in cellseg's environment, or convert the volume to .npy or TIFF"
        ) from None
    if not key:
        raise CellsegError(f"{where}.key: missing; name the dataset inside {path} (e.g. key: raw)")
    file = h5py.File(path, "r")  # kept open by the dataset it returns, closed with it
    if key not in file:
        file.close()
        raise CellsegError(f"{where}.key: {path} has no dataset {key!r}; check the name")
    return file[key]


def _open_zarr(path: Path, key: str | None, where: str) -> Any:
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
    return node


def _open_tiff(path: Path) -> Any:
    """The first series of a TIFF file (what ``tifffile.imread`` reads), memory-mapped when its
    data are uncompressed and contiguous, else as tifffile's zarr store (page, strip or tile at
    a time)."""
    import tifffile

    try:
        return tifffile.memmap(path, mode="r")
    except ValueError:  # compressed, tiled or scattered: not memory-mappable
        pass
    import zarr

    node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
    return node if isinstance(node, zarr.Array) else node["0"]  # a pyramid: its full level


def _open(path: Path, kind: str, key: str | None, where: str) -> Any:
    if kind == "n5":
        return N5Array(path, key, where)
    if kind == "tiff":
        return _open_tiff(path)
    if kind == "npy":
        return np.load(path, mmap_mode="r")
    if kind == "hdf5":
        return _open_hdf5(path, key, where)
    if kind == "zarr":
        return _open_zarr(path, key, where)
    return SliceStack(path)


class Volume:
    """A source's ``(z, y, x)`` volume, read region by region.

    ``volume[box]`` (a tuple of 3 slices, step 1, voxels; or ``...``) reads that box as a NumPy
    array in native byte order; only the file's blocks the box touches are read. ``shape``
    (voxels, z y x) and ``dtype`` come from the file's header.
    """

    def __init__(
        self, array: Any, path: Path, kind: str, where: str, channel: tuple[int, int] | None
    ) -> None:
        """``array``: the opened file (anything sliced like a NumPy array); ``channel``:
        ``(axis, index)`` of a 4D array, or None."""
        self.array, self.path, self.kind, self.where = array, path, kind, where
        self.channel = channel
        shape = tuple(int(n) for n in array.shape)
        if channel is not None:
            shape = shape[: channel[0]] + shape[channel[0] + 1 :]
        self.shape: tuple[int, ...] = shape
        self.dtype: np.dtype = np.dtype(array.dtype).newbyteorder("=")
        self.ndim = len(shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        box, _ = _as_slices(index, self.shape)
        if self.channel is not None:
            axis, channel = self.channel
            box = (*box[:axis], channel, *box[axis:])  # type: ignore[assignment]
        try:
            values = np.asarray(self.array[box])
        except CellsegError:
            raise
        except Exception as error:  # each library has its own errors for a corrupt file
            raise _unreadable(self.path, self.kind, self.where, error) from None
        return values if values.dtype.isnative else values.astype(self.dtype)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        values = self[...]
        return values if dtype is None else values.astype(dtype)


def _unreadable(path: Path, kind: str, where: str, error: Exception) -> CellsegError:
    detail = str(error).splitlines()[0] if str(error) else ""
    return CellsegError(
        f"{where}: cannot read {path} as {kind} ({type(error).__name__}: {detail}); check the "
        "file, or set format: to its real kind"
    )


def open_volume(source: Mapping[str, Any], base: Path, where: str) -> Volume:
    """The ``(z, y, x)`` volume a source names (voxels; dtype as stored), opened for reading
    box by box: nothing but headers is read here.

    Args:
        source: the YAML mapping (``path``, ``format``, ``key``, ``channel``, ``channel_axis``).
        base: folder that a relative ``path`` is resolved against.
        where: the source's key path in the YAML file, for errors (``file: key``).

    Raises:
        CellsegError: a missing file, an unknown or unavailable format, or an array that is not
            3D after the channel is chosen; one line naming the key and the fix. A file that
            turns out corrupt later, when a box is read, raises the same "cannot read" line.
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
        array = _open(path, kind, source.get("key"), where)
    except CellsegError:
        raise
    except Exception as error:  # each library has its own errors for a corrupt or foreign file
        raise _unreadable(path, kind, where, error) from None
    shape = tuple(int(n) for n in array.shape)
    channel = source.get("channel")
    picked = None
    if channel is not None:
        axis = int(source.get("channel_axis", 1))
        if len(shape) != 4 or not 0 <= axis < 4 or not 0 <= channel < shape[axis]:
            raise CellsegError(
                f"{where}.channel: {path} has shape {shape}; channel {channel} of axis "
                f"{axis} does not exist (channel_axis: the axis of a 4D array holding channels)"
            )
        picked = (axis, int(channel))
    volume = Volume(array, path, kind, where, picked)
    if volume.ndim != 3:
        hint = " (a 4D array: pick one with channel: and channel_axis:)" if volume.ndim == 4 else ""
        raise CellsegError(
            f"{where}: {path} has shape {volume.shape}, not a 3D (z, y, x) volume{hint}"
        )
    return volume


def read_volume(source: Mapping[str, Any], base: Path, where: str) -> np.ndarray:
    """The whole ``(z, y, x)`` array a source names, in memory (voxels; dtype as stored); see
    :func:`open_volume` for the arguments and errors."""
    return open_volume(source, base, where)[...]
