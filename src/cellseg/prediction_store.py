"""A prediction store's values and state: probabilities as stored and their masks; the block
markers, what each finished block wrote, and which of it is lost.

Probabilities are stored as ``dtype`` (:data:`DTYPES`); a mask is 1 exactly where the *stored*
probability exceeds the threshold (:func:`mask_of`).

A block's chunk files are written and fsynced, then its marker
``OUT/.cellseg/blocks/{index}.json`` (atomically). The marker also records *which* chunk files
the block stored in each s0 array: zarr stores no chunk that is all fill value (0), so a missing
file is an all-zero chunk or a lost one, and only the record tells them apart. Per array it is a
bitmask over the block's chunk keys (C order of ``(iz, iy, ix)``), as a hex string: 64 characters
for a block of 16 × 16 chunks.

When the store is complete the markers are gathered into one manifest,
``OUT/.cellseg/chunks.json`` (block index → marker), which stays with the store, so a later
run can find chunk files lost from a finished prediction too.

A marker whose recorded chunk files are not all there is *lost*: :func:`lost_chunks` names the
files, and the prediction redoes the block instead of skipping it (:mod:`cellseg.prediction`).
Markers written before the record existed are trusted as they are.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cellseg.errors import CellsegError
from cellseg.io import write_json_atomic
from cellseg.ownership import STATE_DIR

__all__ = [
    "DTYPES",
    "MANIFEST",
    "chunk_keys",
    "dequantize",
    "level_mask",
    "lost_chunks",
    "marker_path",
    "mask_of",
    "quantize",
    "read_marker",
    "reopen_lost",
    "sync_chunks",
    "write_marker",
]

DTYPES: dict[str, float] = {"uint8": 255.0, "uint16": 65535.0, "float32": 1.0}
"""Probability dtypes → the factor a probability in [0, 1] is scaled by before rounding."""


MANIFEST = "chunks.json"
"""The complete store's markers, one file in ``OUT/.cellseg``."""

Box = tuple[slice, slice, slice]


# ------------------------------------------------------------------------------ values


def quantize(probabilities: torch.Tensor, dtype: str) -> np.ndarray:
    """Probabilities in [0, 1] as stored: ``round(p × DTYPES[dtype])`` (float32: as they are)."""
    if dtype == "float32":
        return probabilities.numpy().astype(np.float32, copy=False)
    # in place after the one copy clamp makes: 4x faster than three temporaries
    scaled = probabilities.clamp(0, 1).mul_(DTYPES[dtype]).round_()
    return scaled.to(torch.uint8).numpy() if dtype == "uint8" else scaled.numpy().astype(dtype)


def dequantize(values: np.ndarray, dtype: str) -> np.ndarray:
    """Stored values back to probabilities (float32)."""
    return values.astype(np.float32) / np.float32(DTYPES[dtype])


def mask_of(stored: np.ndarray, dtype: str, threshold: float) -> np.ndarray:
    """The mask of stored probabilities (uint8): 1 where ``stored / DTYPES[dtype] > threshold``
    (compared in float64), else 0.

    Derived from the values as stored (not from the probabilities before rounding), so a reader
    that thresholds the stored probabilities gets the mask exactly, at every level.
    """
    if dtype == "float32":
        return (stored > np.float64(threshold)).view(np.uint8)
    scale = DTYPES[dtype]
    table = (np.arange(int(scale) + 1) / scale > threshold).astype(np.uint8)
    return table[stored]


def level_mask(dtype: str, threshold: float) -> Callable[[int, Any, np.ndarray], np.ndarray]:
    """A class's mask for the pyramid writer: ``mask(k, box, stored)`` is :func:`mask_of` the
    level's stored probabilities (the level and box do not matter to a class; a group's mask
    reads its members' masks there, :func:`cellseg.prediction_groups.pyramid_mask`)."""

    def mask(k: int, box: Any, stored: np.ndarray) -> np.ndarray:
        return mask_of(stored, dtype, threshold)

    return mask


# ------------------------------------------------------------------------------ markers


def marker_path(out: Path, index: int) -> Path:
    """Block ``index``'s marker."""
    return out / STATE_DIR / "blocks" / f"{index}.json"


def chunk_keys(box: Box, chunks: Sequence[int]) -> list[str]:
    """The chunk file names (``"iz.iy.ix"``) of an output ``box`` whose start is a chunk corner,
    in C order."""
    ranges = [range(s.start // c, -(-s.stop // c)) for s, c in zip(box, chunks, strict=True)]
    return [".".join(map(str, key)) for key in itertools.product(*ranges)]


def sync_chunks(
    out: Path, arrays: Sequence[str], box: Box, chunks: Sequence[int]
) -> dict[str, str]:
    """fsync the chunk files of ``box`` in each array, then the arrays' directories (which hold
    the new names, and the removal of all-zero chunks).

    Returns:
        array → hex bitmask of the chunk keys of ``box`` (:func:`chunk_keys` order) stored.
    """
    keys = chunk_keys(box, chunks)
    stored = {}
    for array in arrays:
        folder = out / array
        bits = 0
        for i, key in enumerate(keys):
            with contextlib.suppress(FileNotFoundError):  # an all-zero chunk is not stored
                _fsync(folder / key)
                bits |= 1 << i
        _fsync(folder)
        stored[array] = format(bits, "x")
    return stored


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_marker(
    out: Path, index: int, box: Box, seconds: float, stored: Mapping[str, str]
) -> None:
    """Block ``index``'s marker (atomically): its box, time and the chunks it stored."""
    write_json_atomic(
        marker_path(out, index),
        {
            "block": index,
            "box": [[s.start, s.stop] for s in box],
            "seconds": round(seconds, 3),
            "chunks": dict(stored),
        },
    )


def read_marker(out: Path, index: int) -> dict[str, Any] | None:
    """Block ``index``'s marker, or ``None`` when it has none (or an unreadable one)."""
    try:
        return json.loads(marker_path(out, index).read_text())
    except (OSError, ValueError):
        return None


class ChunkListing:
    """The chunk file names present in each array of a store, listed once per array (one
    directory read instead of a ``stat`` per chunk)."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self._names: dict[str, set[str]] = {}

    def __call__(self, array: str) -> set[str]:
        if array not in self._names:
            try:
                self._names[array] = set(os.listdir(self.out / array))
            except FileNotFoundError:
                self._names[array] = set()
        return self._names[array]


def lost_chunks(
    marker: Mapping[str, Any], chunks: Sequence[int], listing: ChunkListing
) -> list[str]:
    """The chunk files (``array/key``) a block's marker records as stored that are gone.

    Args:
        marker: the block's marker (one without a ``chunks`` record loses nothing).
        chunks: the arrays' chunk shape.
        listing: the store's chunk files.
    """
    recorded = marker.get("chunks")
    if not isinstance(recorded, Mapping):
        return []
    box = tuple(slice(int(a), int(b)) for a, b in marker["box"])
    keys = chunk_keys(box, chunks)  # type: ignore[arg-type]
    lost = []
    for array, mask in recorded.items():
        bits, present = int(mask, 16), listing(array)
        lost += [f"{array}/{k}" for i, k in enumerate(keys) if bits >> i & 1 and k not in present]
    return lost


def write_manifest(out: Path, markers: Mapping[int, Mapping[str, Any]]) -> None:
    """Gather a complete store's markers into ``.cellseg/chunks.json`` (atomically)."""
    write_json_atomic(out / STATE_DIR / MANIFEST, {str(k): dict(v) for k, v in markers.items()})


def read_manifest(out: Path) -> dict[int, dict[str, Any]]:
    """A complete store's markers (empty when it has no manifest: made before it existed)."""
    try:
        held = json.loads((out / STATE_DIR / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return {int(k): v for k, v in held.items()}


def describe_lost(lost: Sequence[str], limit: int = 3) -> str:
    """``"a/0.0.0, b/0.1.0 and 3 more"``."""
    shown = ", ".join(lost[:limit])
    return shown + (f" and {len(lost) - limit} more" if len(lost) > limit else "")


def reopen_lost(out: Path, chunks: Sequence[int], reopen: bool, key: str, log: Any) -> bool:
    """Check a complete store's chunk files against its manifest; when some are gone, name them
    and, with ``reopen``, mark the store incomplete with markers for the intact blocks only (the
    run then redoes the others and the pyramid).

    Returns:
        whether the store was reopened.

    Raises:
        CellsegError: chunk files are gone and not ``reopen`` (a parallel part or stage).
    """
    manifest = read_manifest(out)
    listing = ChunkListing(out)
    lost = {b: lost_chunks(m, chunks, listing) for b, m in manifest.items()}
    lost = {b: files for b, files in lost.items() if files}
    if not lost:
        return False
    blocks = ", ".join(map(str, sorted(lost)[:5])) + (" …" if len(lost) > 5 else "")
    files = describe_lost([f for b in sorted(lost) for f in lost[b]])
    if not reopen:
        raise CellsegError(
            f"{out}: complete, but chunk files of blocks {blocks} are gone ({files}); run "
            "cellseg predict once without --part/--parts (or --stage init) to redo them"
        )
    print(
        f"[{key}] {out}: chunk files of {len(lost)} finished blocks ({blocks}) are gone "
        f"({files}); predicting those blocks and the pyramid again",
        file=log,
        flush=True,
    )
    for b, marker in manifest.items():
        if b not in lost:
            write_json_atomic(marker_path(out, b), marker)
    attrs = json.loads((out / ".zattrs").read_text())
    attrs["cellseg"]["complete"] = False
    write_json_atomic(out / ".zattrs", attrs)
    return True
