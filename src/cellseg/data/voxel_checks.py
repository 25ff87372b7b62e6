"""The checks that read a crop's voxels, not only its metadata: EM on the 0-255 scale of
``data.em_range``, label values within their encoding (and no binary mask stored 0/255), and no
label chunk lost in a download or copy.

Each reads an array once, a z row of chunks at a time, and ends in one line naming the array,
the chunk (and its file) and the fix. :func:`cellseg.data.store.read_crop_geometry` does the
checks the metadata allows; these run where the voxels are read anyway (the datasplit's checks,
the patches, ``cellseg import``'s read-back).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from cellseg.data.multiscale import LabelEncoding, Multiscale, ScaleLevel, StoredArray
from cellseg.data.store import CropGeometry
from cellseg.errors import CellsegError

EM_SAMPLE_EDGE = 32
"""Voxels per axis of the central block of the coarsest EM level that :func:`check_em_values`
reads (at most 32 KiB of float32 values: one chunk or a few)."""


def check_em_values(em: Multiscale, em_range: Sequence[float]) -> None:
    """Floating-point EM must hold values on the scale of ``data.em_range`` (raw 8-bit values):
    EM stored as float in [0, 1] (a common export) lies wholly below the seed's window
    [10.6, 194.1], so every voxel would clip to its bottom and the model would train on a
    blank image. Checks the coarsest level (:func:`check_em_array`: a central block of it,
    cheap). ``uint8`` EM is not checked: any window of it is a choice.

    Raises:
        CellsegError: naming the array, the values observed, ``data.em_range`` and the fix.
    """
    level = max(em.levels, key=lambda lv: float(np.prod(lv.voxel_size_nm)))
    check_em_array(em.open_level(level), em_range)


def check_em_array(array: StoredArray, em_range: Sequence[float]) -> None:
    """:func:`check_em_values` on one EM level: reads a central block of at most
    :data:`EM_SAMPLE_EDGE` voxels an axis of a floating-point ``array`` (nothing for an integer
    one) and refuses it when more than half of the finite values lie outside ``em_range``
    (raw 8-bit values, ``(low, high)``).

    Raises:
        CellsegError: naming the array, the values observed, ``data.em_range`` and the fix.
    """
    if array.dtype.kind != "f":
        return
    block = tuple(
        slice(
            max(0, n // 2 - EM_SAMPLE_EDGE // 2),
            max(0, n // 2 - EM_SAMPLE_EDGE // 2) + EM_SAMPLE_EDGE,
        )
        for n in array.shape
    )
    sample = np.asarray(array[block], dtype=np.float64)
    values = sample[np.isfinite(sample)]
    if not values.size:
        return
    low, high = float(em_range[0]), float(em_range[1])
    outside = float(np.mean((values < low) | (values > high)))
    if outside <= 0.5:
        return
    seen_low, seen_high = float(values.min()), float(values.max())
    side = "bottom" if float(np.median(values)) < low else "top"
    level = array.location.rsplit("/", 1)[-1]
    unit = seen_low >= 0.0 and seen_high <= 1.0  # the usual float export: [0, 1]
    example = "[0, 1]" if unit else f"[{seen_low:.3g}, {seen_high:.3g}]"
    raise CellsegError(
        f"{array.location}: float EM whose sampled values (central {list(sample.shape)} voxels "
        f"of {level}) lie in [{seen_low:.3g}, {seen_high:.3g}], {100 * outside:.0f}% of them "
        f"outside data.em_range = [{low:g}, {high:g}] (raw 8-bit values), so they would clip to "
        f"its {side} and the model would see a blank image; rescale the EM to uint8 (0-255), or "
        f"set data.em_range to the EM's own scale (e.g. {example})"
    )


FOREIGN_LABEL_LIMIT = 1e-3
"""Fraction of a semantic label array's voxels that may hold a value outside its encoding (read
as unknown, and reported) before the array is refused: a handful of stray values is noise, more
is a wrong encoding or a broken copy that would silently drop annotation."""


def check_label_data(
    geometry: CropGeometry, levels: Mapping[str, Iterable[ScaleLevel]] | None = None
) -> list[str]:
    """Read a crop's label arrays once and refuse data that would be scored wrongly.

    Two checks per array (each class's ``levels``; every level when not given):

    * **values outside the encoding**: in a semantic array, a value that is none of absent,
      present and unknown (a 2 in a 0/1/255 array) is read as unknown; above
      :data:`FOREIGN_LABEL_LIMIT` of the array's voxels it is refused. Instance arrays hold
      any id, so they are not checked.
    * **lost chunks**: a chunk that is not stored reads as the fill value, which is ``absent``
      in CellMap stores, and writers legitimately skip chunks that hold only it. A missing chunk
      is refused when the next coarser level of the same class holds a voxel of another value
      (present or unknown) lying wholly inside the chunk's box: the chunk held annotation that a download or copy lost
      (a Dice of 0 would become 1 through the empty-class rule). With a single level, a lost
      chunk cannot be told from an empty one.

    Returns:
        One line per array with a few foreign values (below the limit), and one per class
        whose array has no present voxel and mostly unknown ones (a binary mask stored 0/255
        would: its positives read as unknown), for the log.

    Raises:
        CellsegError: naming the array, the chunk (and its file), the count and the fix.
    """
    notes: list[str] = []
    masks: set[str] = set()
    for name, multiscale in geometry.labels.items():
        encoding = geometry.encodings[name]
        chosen = multiscale.levels if levels is None else tuple(levels.get(name, ()))
        for level in dict.fromkeys(chosen):
            array = multiscale.open_level(level)
            if not encoding.instance:
                foreign, mask = _check_foreign_values(array, encoding)
                notes.extend([foreign] if foreign else [])
                if mask and name not in masks:  # one line a class, not one a level
                    masks.add(name)
                    notes.append(mask)
            if array.fill_value is not None and array.fill_value != encoding.unknown:
                _check_lost_chunks(multiscale, level, array, encoding)
    return notes


def _chunk_file(array: StoredArray, key: Sequence[int]) -> str:
    separator = getattr(array.array.metadata, "dimension_separator", ".") or "."
    return f"{array.location}/{separator.join(map(str, key))}"


UNKNOWN_MASK_SHARE = 0.5
"""Share of a semantic array's voxels that are unknown, with none present, above which the
array is said to look like a binary mask stored 0/255 (its positives read as unknown)."""


def _check_foreign_values(
    array: StoredArray, encoding: LabelEncoding
) -> tuple[str | None, str | None]:
    """Count a semantic array's voxels outside ``encoding``, one z row of chunks at a time.

    Returns:
        ``(foreign, mask)``: a note about a few values outside the encoding (see
        :func:`check_label_data`), and a warning when no voxel is present and more than
        :data:`UNKNOWN_MASK_SHARE` are unknown: a binary mask stored 0/255 reads its every
        positive voxel as unknown (255 is the unknown code), so the class would vanish.
    """
    codes = np.array([encoding.absent, encoding.present, encoding.unknown])
    # uint8 (most CellMap labels): one table lookup per voxel instead of np.isin's sort
    table = None
    if array.dtype == np.uint8 and codes.min() >= 0 and codes.max() < 256:
        table = np.ones(256, dtype=bool)
        table[codes] = False
    chunks = np.asarray(array.chunks)
    foreign = present = unknown = 0
    per_chunk: Counter[tuple[int, ...]] = Counter()
    seen: set[int] = set()
    for z in range(0, array.shape[0], int(chunks[0])):
        slab = np.asarray(array[z : z + int(chunks[0])])
        if not present:
            present = int(np.count_nonzero(slab == encoding.present))
            unknown += int(np.count_nonzero(slab == encoding.unknown))
        bad = table[slab] if table is not None else ~np.isin(slab, codes)
        count = int(np.count_nonzero(bad))
        if not count:
            continue
        foreign += count
        where = np.stack(np.nonzero(bad), axis=1)
        where[:, 0] += z
        keys, counts = np.unique(where // chunks, axis=0, return_counts=True)
        for key, n in zip(keys, counts, strict=True):
            per_chunk[tuple(int(k) for k in key)] += int(n)
        if len(seen) < 5:
            seen.update(int(v) for v in np.unique(slab[bad])[:5])
    total = int(np.prod(array.shape))
    mask = None
    if not present and unknown > UNKNOWN_MASK_SHARE * total:
        mask = (
            f"{array.location}: no voxel is present ({encoding.present}) and {unknown} of {total} "
            f"({100 * unknown / total:.0f}%) are unknown ({encoding.unknown}), so the class is "
            "read as unannotated there; if this is a binary mask stored 0/255, its positives "
            f"are lost: re-encode it with positives {encoding.present}, absent "
            f"{encoding.absent} and unknown {encoding.unknown} only where not annotated"
        )
    if not foreign:
        return None, mask
    key, in_chunk = per_chunk.most_common(1)[0]
    values = ", ".join(map(str, sorted(seen)[:5]))
    what = (
        f"{array.location}: {foreign} of {total} voxels ({100 * foreign / total:.2g}%) hold "
        f"values ({values}) outside the encoding (absent {encoding.absent}, present "
        f"{encoding.present}, unknown {encoding.unknown}), {in_chunk} of them in chunk "
        f"{list(key)} (file {_chunk_file(array, key)}); they read as unknown"
    )
    if foreign > FOREIGN_LABEL_LIMIT * total:
        raise CellsegError(
            f"{what}, and more than {100 * FOREIGN_LABEL_LIMIT:g}% is refused: fix the values, "
            "or the encoding in the group's cellmap.annotation attributes, or copy the array again"
        )
    return what, mask


def _stored_chunk_keys(array: StoredArray) -> set[tuple[int, ...]] | None:
    """The chunk keys stored in a local directory store, or None when it cannot be listed."""
    directory = Path(array.location)
    if not directory.is_dir():
        return None
    separator = getattr(array.array.metadata, "dimension_separator", ".") or "."
    names = (
        ["/".join(p.relative_to(directory).parts) for p in directory.rglob("*") if p.is_file()]
        if separator == "/"
        else [p.name for p in directory.iterdir() if p.is_file()]
    )
    keys = set()
    for name in names:
        parts = name.split(separator)
        if len(parts) == array.ndim and all(part.isdigit() for part in parts):
            keys.add(tuple(int(part) for part in parts))
    return keys


def _check_lost_chunks(
    multiscale: Multiscale, level: ScaleLevel, array: StoredArray, encoding: LabelEncoding
) -> None:
    """See :func:`check_label_data`: a missing chunk contradicted by a coarser level."""
    chunks = np.asarray(array.chunks)
    grid = [range(-(-n // c)) for n, c in zip(array.shape, chunks, strict=True)]
    expected = int(np.prod([len(r) for r in grid]))
    if array.array.nchunks_initialized >= expected:
        return
    stored = _stored_chunk_keys(array)
    coarser = [
        other
        for other in multiscale.levels
        if float(np.prod(other.voxel_size_nm)) > float(np.prod(level.voxel_size_nm)) + 1e-9
    ]
    if stored is None or not coarser:
        return
    # the nearest coarser level only: it sees the smallest objects (mode downsampling drops
    # them level by level), and each further level would be one more full read
    coarser = [min(coarser, key=lambda other: float(np.prod(other.voxel_size_nm)))]
    missing = {key for key in itertools.product(*grid) if key not in stored}
    span = chunks * np.asarray(level.voxel_size_nm)  # one chunk's extent per axis, nm
    for other in coarser:
        # per axis: the chunk of `level` wholly holding each voxel of `other`, or -1
        holder = []
        for axis in range(3):
            size = other.voxel_size_nm[axis]
            low = other.start_nm[axis] + np.arange(other.shape[axis]) * size
            first = np.floor((low - level.start_nm[axis]) / span[axis] + 1e-6).astype(int)
            last = np.floor((low + size - level.start_nm[axis]) / span[axis] - 1e-6).astype(int)
            inside = (first == last) & (first >= 0) & (low + size <= level.stop_nm[axis] + 1e-3)
            holder.append(np.where(inside, first, -1))
        source = multiscale.open_level(other)
        depth = int(source.chunks[0])
        contradicted: Counter[tuple[int, ...]] = Counter()
        fill = array.fill_value  # what every voxel of a missing chunk reads as
        for z in range(0, other.shape[0], depth):  # a z slab at a time: memory stays bounded
            annotated = np.asarray(source[z : z + depth]) != fill
            iz, iy, ix = np.nonzero(annotated)
            keys = np.stack([holder[0][iz + z], holder[1][iy], holder[2][ix]], axis=1)
            keys = keys[np.all(keys >= 0, axis=1)]
            if not len(keys):
                continue
            # count per chunk of `level` with a bincount over flat chunk indices (np.unique
            # over rows sorts every annotated voxel)
            shape = tuple(len(r) for r in grid)
            counts = np.bincount(np.ravel_multi_index(keys.T, shape), minlength=expected)
            for flat in np.flatnonzero(counts):
                key = tuple(int(k) for k in np.unravel_index(flat, shape))
                if key in missing:
                    contradicted[key] += int(counts[flat])
        if contradicted:
            key = min(contradicted)
            more = len(contradicted) - 1
            others = f" ({more} more missing chunks likewise)" if more else ""
            absent = fill == encoding.absent
            raise CellsegError(
                f"{array.location}: chunk {list(key)} (file {_chunk_file(array, key)}) is not "
                f"stored, so it reads as {fill}{' (absent)' if absent else ''}, but the coarser "
                f"level {other.path} holds {contradicted[key]} "
                f"{'present or unknown voxels' if absent else f'voxels other than {fill}'} "
                f"inside it{others}: the chunk was lost in a download or copy; copy the array "
                "again"
            )
