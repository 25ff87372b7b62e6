"""Exact per-class frequencies over the training crops: the prior of the balanced loss (SPEC §4).

Counted per label array at the scale level the patch loader reads (the level nearest
``resolution_nm``), each stored voxel weighted by its volume in units of ``resolution_nm``³, so a
crop annotated at 16 nm counts 8 training voxels per stored voxel and one at 4 nm counts 1/8.
This is what the loader sees up to nearest-neighbour rounding at crop borders, without
resampling whole crops. Arrays are streamed one chunk-row of z at a time, so memory does not grow
with the size of the store.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.data.datasplit import read_datasplit
from cellseg.data.multiscale import StoredArray
from cellseg.data.store import Crop, check_outside_stores, read_crop_geometry
from cellseg.errors import CellsegError
from cellseg.io import write_json_atomic
from cellseg.trained_classes import TRAINED_KEY, trained_classes, untrained_line
from cellseg.voxels import Resolution, as_vec3, format_resolution, resolution_argument, to_json

COUNTED_AT = (
    "per label array, at the scale level nearest resolution_nm (the level the patch loader "
    "reads); each stored voxel weighted by its volume in units of resolution_nm^3"
)


def count_array(
    array: StoredArray | zarr.Array, encoding: Any, slab_depth: int | None = None
) -> tuple[int, int]:
    """``(annotated, positive)`` stored voxels of one label array, streamed in z slabs.

    Args:
        array: a ``(z, y, x)`` label array (from :meth:`Multiscale.open_level`, whose reads
            name the array and chunk when a chunk is corrupt).
        encoding: its :class:`cellseg.data.multiscale.LabelEncoding`.
        slab_depth: z voxels per read; defaults to the array's chunk depth.
    """
    depth = slab_depth or array.chunks[0]
    annotated = positive = 0
    for z in range(0, array.shape[0], depth):
        slab_annotated, slab_positive = encoding.count(np.asarray(array[z : z + depth]))
        annotated += slab_annotated
        positive += slab_positive
    return annotated, positive


def class_frequencies(
    crops: Sequence[Crop], resolution_nm: Resolution = 8.0, allow_missing_classes: bool = False
) -> dict[str, Any]:
    """Annotated and positive voxels (in ``resolution_nm`` voxels), crop counts and priors.

    ``resolution_nm`` is one number (isotropic) or ``(z, y, x)`` nm: a stored voxel counts as
    its volume over the model voxel's volume, per axis (a 50x4x4 nm voxel is a quarter of a
    50x8x8 nm one).

    Returns:
        JSON-ready ``{"classes", "resolution_nm", "counted_at", "crops", "per_class"}`` where
        ``per_class[name]`` has ``annotated_voxels``, ``positive_voxels``, ``crops``, ``prior``
        (``positive / annotated``) and ``prior_source``; ``per_group[group]`` (only when a crop
        holds a group label) ``annotated_voxels`` and ``crops``; ``trained_classes`` the classes
        the run trains (:func:`cellseg.trained_classes.trained_classes`: annotated themselves or
        through a group label).

    Raises:
        CellsegError: a class annotated by no crop, unless ``allow_missing_classes``.
    """
    voxel = np.asarray(as_vec3(resolution_nm))
    annotated = dict.fromkeys(CLASSES, 0.0)
    positive = dict.fromkeys(CLASSES, 0.0)
    crop_counts = dict.fromkeys(CLASSES, 0)
    # group labels (issue 33 item 2) give no member its prior (a group positive is some member,
    # which one unknown; members count from fine labels elsewhere or are imputed as missing
    # classes are), but a member learns through the group: counted for the trained classes
    groups: dict[str, dict[str, float]] = {}
    for crop in crops:
        geometry = read_crop_geometry(crop, resolution_nm)
        for name, multiscale in geometry.labels.items():
            level = multiscale.level_for(resolution_nm)
            array = multiscale.open_level(level)
            weight = float(np.prod(np.asarray(level.voxel_size_nm) / voxel))
            n_annotated, n_positive = count_array(array, geometry.encodings[name])
            if name not in annotated:
                group = groups.setdefault(name, {"annotated_voxels": 0.0, "crops": 0})
                group["annotated_voxels"] += n_annotated * weight
                group["crops"] += 1
                continue
            annotated[name] += n_annotated * weight
            positive[name] += n_positive * weight
            crop_counts[name] += 1
    missing = [name for name in CLASSES if annotated[name] == 0]
    if missing and not allow_missing_classes:
        raise CellsegError(
            f"class(es) {', '.join(missing)} annotated in no training crop; add crops that annotate "
            "them, or set data.allow_missing_classes: true to train with an imputed prior"
        )
    priors = {n: positive[n] / annotated[n] for n in CLASSES if n not in missing}
    # an unseen class gets the median prior: no adjustment either way is the least-assuming choice
    imputed = float(np.median(list(priors.values()))) if priors else 0.5
    per_class = {
        name: {
            "annotated_voxels": annotated[name],
            "positive_voxels": positive[name],
            "crops": crop_counts[name],
            "prior": priors.get(name, imputed),
            "prior_source": "imputed: median of the other classes"
            if name in missing
            else "counted",
        }
        for name in CLASSES
    }
    trained = trained_classes(
        {**annotated, **{g: v["annotated_voxels"] for g, v in groups.items()}}
    )
    return {
        "classes": list(CLASSES),
        "resolution_nm": to_json(resolution_nm),
        "counted_at": COUNTED_AT,
        "crops": [crop.name for crop in crops],
        "per_class": per_class,
        # only with group labels: a store without them writes the file as before
        **({"per_group": {g: groups[g] for g in GROUP_NAMES if g in groups}} if groups else {}),
        TRAINED_KEY: list(trained),
    }


def _run(args: argparse.Namespace) -> int:
    crops = read_datasplit(args.datasplit, splits=["train"])
    check_outside_stores(args.out, crops)
    frequencies = class_frequencies(crops, args.resolution_nm, args.allow_missing_classes)
    write_json_atomic(args.out, frequencies)
    print(f"{args.out}: {len(crops)} training crops at {format_resolution(args.resolution_nm)} nm")
    if (line := untrained_line(frequencies[TRAINED_KEY])) is not None:
        print(f"{args.out}: {line}")
    return 0


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "class-frequencies", help="count per-class annotated/positive voxels over training crops"
    )
    parser.add_argument("--datasplit", type=Path, required=True, help="datasplit CSV")
    parser.add_argument("--out", type=Path, required=True, help="output JSON")
    parser.add_argument(
        "--resolution-nm", type=resolution_argument, default=8.0, help="8 or z,y,x: 50,8,8 (nm)"
    )
    parser.add_argument("--allow-missing-classes", action="store_true")
    parser.set_defaults(func=_run)
