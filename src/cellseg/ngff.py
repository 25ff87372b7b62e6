"""OME-NGFF 0.4 multiscale groups in zarr format 2: the one way cellseg writes them.

The demo generator (:mod:`cellseg.data.demo`), evaluation's prediction writer
(:mod:`cellseg.evaluation`) and ``cellseg predict`` (:mod:`cellseg.prediction`) all write
images through this module:

* metadata: :func:`multiscales_attrs` (axes ``z, y, x`` in nanometres, one ``scale`` and one
  ``translation`` per level, :func:`level_transform`); :func:`image_label_attrs` and
  :func:`labels_attrs` for the NGFF labels convention (a group listing label images, each an
  ``image-label`` multiscale image of integers, which napari opens as a Labels layer and
  neuroglancer as a segmentation);
* codec: :func:`blosc_zstd`, the compressor of every array;
* groups: :func:`create_multiscale_group` (empty levels, filled slab by slab),
  :func:`write_multiscale_array` (levels held in memory), and, where zarr's API is too slow,
  the same zarr v2 documents written directly (:func:`array_metadata`,
  :func:`write_documents`) and whole chunks encoded straight into the store's files
  (:class:`ChunkWriter`);
* pyramids: level ``k`` is ×2 coarser than ``k - 1`` per axis, ``ceil(shape / 2**k)`` voxels
  (:func:`level_shape`, :func:`pyramid_levels`); images are reduced by block means
  (:func:`block_mean`, :func:`downsample_mean`), labels by block modes
  (:func:`downsample_labels`).

Coordinates are nanometres, ``(z, y, x)``; a translation is the centre of a level's first voxel.
Nothing here imports torch.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

NGFF_VERSION = "0.4"
CHUNK = 64
"""Default chunk edge (voxels) of a multiscale group's arrays."""
AXES: tuple[str, str, str] = ("z", "y", "x")


# ------------------------------------------------------------------------------ metadata


def blosc_zstd() -> Any:
    """The compressor for every array: Blosc/zstd level 3 with bit-shuffle (numcodecs)."""
    import numcodecs

    return numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.BITSHUFFLE)


def level_transform(
    voxel_size_nm: Sequence[float], translation_nm: Sequence[float], level: int
) -> tuple[list[float], list[float]]:
    """Scale and translation (nm, z y x) of pyramid level ``level`` of a ×2-per-level pyramid.

    Translations give the centre of the first voxel, so level k's translation is the base
    translation plus half the voxel-size growth: ``t_k = t_0 + (s_k - s_0) / 2``
    (an 8 nm level over a 4 nm base: +2 nm).
    """
    scale = [float(s) * 2**level for s in voxel_size_nm]
    translation = [
        float(t) + (sk - float(s0)) / 2
        for t, sk, s0 in zip(translation_nm, scale, voxel_size_nm, strict=True)
    ]
    return scale, translation


def multiscales_attrs(
    name: str, voxel_size_nm: Sequence[float], translation_nm: Sequence[float], n_levels: int
) -> dict[str, Any]:
    """OME-NGFF 0.4 ``multiscales`` attributes for levels ``s0..s{n_levels-1}``.

    Axes ``z, y, x`` (space, nanometer); per level ``[scale, translation]`` in nm, see
    :func:`level_transform`. ``name`` is what viewers call the layer.
    """
    datasets = []
    for level in range(n_levels):
        scale, translation = level_transform(voxel_size_nm, translation_nm, level)
        datasets.append(
            {
                "path": f"s{level}",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale},
                    {"type": "translation", "translation": translation},
                ],
            }
        )
    return {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": name,
                "axes": [{"name": axis, "type": "space", "unit": "nanometer"} for axis in AXES],
                "datasets": datasets,
            }
        ]
    }


def image_label_attrs(
    source_image: str | None = None,
    colors: Mapping[int, Sequence[int]] | None = None,
) -> dict[str, Any]:
    """The ``image-label`` attribute that makes a multiscale group of integers a label image.

    Args:
        source_image: path of the image the labels annotate, relative to the label group
            (e.g. ``"../../probabilities/ecs"``); readers load it with the labels.
        colors: label value → RGBA (0-255 each) for viewers.
    """
    label: dict[str, Any] = {"version": NGFF_VERSION}
    if colors:
        label["colors"] = [
            {"label-value": int(value), "rgba": [int(c) for c in rgba]}
            for value, rgba in colors.items()
        ]
    if source_image is not None:
        label["source"] = {"image": source_image}
    return {"image-label": label}


def labels_attrs(paths: Sequence[str]) -> dict[str, Any]:
    """The ``labels`` attribute of a labels group: the label images' paths, relative to it."""
    return {"labels": list(paths)}


# ------------------------------------------------------------------------------ groups


def level_shape(shape: Sequence[int], level: int) -> tuple[int, ...]:
    """Voxels of pyramid level ``level`` over an s0 of ``shape``: ``ceil(shape / 2**level)``."""
    return tuple(-(-int(n) // 2**level) for n in shape)


def create_multiscale_group(
    parent: Any,
    name: str,
    shape: Sequence[int],
    dtype: str | np.dtype,
    voxel_size_nm: Sequence[float],
    translation_nm: Sequence[float],
    n_levels: int,
    attrs: dict[str, Any] | None = None,
    chunks: int = CHUNK,
) -> list[Any]:
    """Create group ``parent/name`` with empty arrays ``s0..s{n_levels-1}``; return them.

    ``shape`` is s0's shape in voxels (z, y, x); level k has :func:`level_shape`. Arrays are
    chunked ``min(chunks, extent)`` per axis, Blosc/zstd compressed, fill value 0. The group gets
    :func:`multiscales_attrs` (named ``name``) plus ``attrs``. Fill the arrays slab by slab to
    keep memory bounded.
    """
    group = parent.create_group(
        name,
        attributes={
            **multiscales_attrs(name, voxel_size_nm, translation_nm, n_levels),
            **(attrs or {}),
        },
    )
    arrays = []
    for level in range(n_levels):
        shape_k = level_shape(shape, level)
        arrays.append(
            group.create_array(
                f"s{level}",
                shape=shape_k,
                chunks=tuple(min(chunks, n) for n in shape_k),
                dtype=dtype,
                compressors=blosc_zstd(),
                fill_value=0,
            )
        )
    return arrays


def write_multiscale_array(
    parent: Any,
    name: str,
    levels: Sequence[np.ndarray],
    voxel_size_nm: Sequence[float],
    translation_nm: Sequence[float],
    attrs: dict[str, Any] | None = None,
    chunks: int = CHUNK,
) -> Any:
    """Write in-memory pyramid ``levels`` (s0 first, each ×2 coarser) as group ``parent/name``.

    ``voxel_size_nm`` and ``translation_nm`` describe s0 (nm, z y x; translation = centre of
    the first voxel); coarser levels get :func:`level_transform`. Returns the group.
    """
    arrays = create_multiscale_group(
        parent, name, levels[0].shape, levels[0].dtype, voxel_size_nm, translation_nm,
        len(levels), attrs, chunks,
    )  # fmt: skip
    for array, data in zip(arrays, levels, strict=True):
        if array.shape != data.shape:
            raise ValueError(f"{name}: level shape {data.shape} != expected {array.shape}")
        array[...] = data
    return parent[name]


def array_metadata(shape: Sequence[int], chunks: Sequence[int], dtype: str) -> dict[str, Any]:
    """The ``.zarray`` document zarr writes for an array of :func:`create_multiscale_group`'s
    kind (made once, in a scratch directory, through zarr's public API)."""
    import zarr

    with tempfile.TemporaryDirectory() as scratch:
        root = zarr.open_group(scratch, mode="w", zarr_format=2)
        root.create_array(
            "a", shape=tuple(shape), chunks=tuple(chunks), dtype=dtype,
            compressors=blosc_zstd(), fill_value=0,
        )  # fmt: skip
        return json.loads((Path(scratch) / "a" / ".zarray").read_text())


def write_documents(out: Path, documents: Mapping[str, Any]) -> None:
    """Write zarr v2 metadata documents (``path → JSON``) under ``out``, as zarr does: an
    array's ``.zarray`` gets an empty ``.zattrs`` beside it unless one is given or already there.

    Not atomic one by one: the caller writes a last document atomically that says they are all
    there. Why not zarr's API: it pays an event-loop round trip and several reads per node, a
    fixed cost that dominated small prediction stores (docs/benchmarks.md); the documents are
    zarr's own (:func:`array_metadata`), so the store is the same.
    """
    documents = dict(documents)
    for path in list(documents):
        # an array's attributes beside its .zarray, as zarr writes them: readers such as
        # neuroglancer ask for every array's .zattrs, s0's included (issue 34)
        if Path(path).name == ".zarray":
            attributes = str(Path(path).with_name(".zattrs"))
            if attributes not in documents and not (out / attributes).exists():
                documents[attributes] = {}
    for path, document in documents.items():
        target = out / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(document, indent=4))


class ChunkWriter:
    """Writes whole chunks of arrays straight into a store's files (zarr v2: key
    ``"iz.iy.ix"``, the chunk's C-order bytes through :func:`blosc_zstd`; edge chunks padded
    with the fill value 0 to the full chunk shape; an all-fill chunk not stored), as zarr does.

    Why not ``array[box] = values``: zarr-python 3's event-loop and codec-pipeline overhead per
    chunk exceeds the Blosc encoding itself and made writing, not the network, the bottleneck
    of ``cellseg predict`` (docs/benchmarks.md). Arrays written this way read back through zarr
    (tests compare every value and every chunk file).
    """

    def __init__(self, out: Path, chunks: Sequence[int]) -> None:
        """``out``: the store; ``chunks``: ``(cz, cy, cx)`` voxels, the arrays' chunk shape."""
        self.out = Path(out)
        self.chunks = tuple(int(c) for c in chunks)
        self.compressor = blosc_zstd()

    def write(self, array: str, box: tuple[slice, slice, slice], values: np.ndarray) -> None:
        """Write ``values`` (``(D, H, W)``) on ``box`` of array ``array`` (a path in the store),
        whose start is a chunk corner and whose stop is one too or the array's end."""
        folder = self.out / array
        ranges = [
            range(s.start // c, -(-s.stop // c)) for s, c in zip(box, self.chunks, strict=True)
        ]
        for key in itertools.product(*ranges):
            local = tuple(
                slice(k * c - s.start, min((k + 1) * c, s.stop) - s.start)
                for k, c, s in zip(key, self.chunks, box, strict=True)
            )
            piece = values[local]
            path = folder / ".".join(map(str, key))
            if not piece.any():  # fill value 0 everywhere: zarr stores no chunk
                path.unlink(missing_ok=True)
                continue
            if piece.shape != self.chunks:
                piece = np.pad(
                    piece, [(0, c - n) for c, n in zip(self.chunks, piece.shape, strict=True)]
                )
            path.write_bytes(self.compressor.encode(np.ascontiguousarray(piece)))


# ------------------------------------------------------------------------------ pyramids


def pyramid_levels(shape: Sequence[int], chunk: int, requested: int | None = None) -> int:
    """Levels in all (s0 included): ``requested``, or halve until every axis fits one chunk."""
    if requested is not None:
        return requested
    levels = 1
    while max(level_shape(shape, levels - 1)) > chunk:
        levels += 1
    return levels


def block_mean(values: np.ndarray, factor: int = 2) -> np.ndarray:
    """Means over ``factor``³ blocks of a ``(D, H, W)`` float array (image pyramids).

    An axis that ``factor`` does not divide is padded by repeating its last voxel, so the
    result has :func:`level_shape` voxels (level 1 for ``factor`` 2).
    """
    pad = [(0, -n % factor) for n in values.shape]
    if any(b for _, b in pad):
        values = np.pad(values, pad, mode="edge")
    d, h, w = (n // factor for n in values.shape)
    return values.reshape(d, factor, h, factor, w, factor).mean(axis=(1, 3, 5))


def downsample_mean(volume: np.ndarray, factor: int) -> np.ndarray:
    """Block mean over ``factor``³ blocks of a uint8 volume (EM pyramids), rounded to uint8."""
    return np.round(block_mean(volume.astype(np.float32), factor)).astype(np.uint8)


def downsample_labels(
    codes: np.ndarray, unknown: int | None = None, factor: Sequence[int] = (2, 2, 2)
) -> np.ndarray:
    """×2 label pyramid step: block mode over 2×2×2 (or ``factor`` blocks, z y x, each 1 or 2);
    any ``unknown`` voxel makes the block unknown.

    Ties go to the larger value (so thin membranes and instances survive a 4-4 split). Uses a
    bincount of the values present instead of sorting, which keeps it linear in the voxel count.
    The factor must divide the shape; ``codes`` of a non-negative integer dtype.
    """
    out_shape = tuple(n // f for n, f in zip(codes.shape, factor, strict=True))
    values = np.flatnonzero(np.bincount(codes.ravel(), minlength=1))
    best = np.zeros(out_shape, dtype=codes.dtype)
    best_count = np.zeros(out_shape, dtype=np.uint8)
    views = [
        codes[dz :: factor[0], dy :: factor[1], dx :: factor[2]]
        for dz, dy, dx in itertools.product(*(range(f) for f in factor))
    ]
    for value in values:
        if value == unknown:
            continue
        count = np.zeros(out_shape, dtype=np.uint8)
        for view in views:
            count += view == value
        better = count >= best_count  # ascending values + ">=": ties go to the larger value
        best[better] = value
        best_count[better] = count[better]
    if unknown is not None and unknown in values:
        any_unknown = np.zeros(out_shape, dtype=bool)
        for view in views:
            any_unknown |= view == unknown
        best[any_unknown] = unknown
    return best
