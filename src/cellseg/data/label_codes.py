"""CellMap's label encodings written from per-voxel label codes (the demo, ``cellseg import``).

Kept out of :mod:`cellseg.data.demo` because ``cellseg import`` writes the same arrays, and no
production module imports the demo generator. The demo's scene (:mod:`cellseg.data.demo.scene`)
labels each voxel with one uint16 *code*: 0 cytoplasm (no class),
``1..13`` for ``CLASSES[0..12]``, nucleus instance ``i`` as ``NUC_BASE + i``, and
:data:`UNKNOWN_CODE`. One code space for the class and the instance id lets the label pyramid
take a single block mode and derive every array from it, so ``all``, the per-class arrays and the
nuc instance array agree at every level. :func:`arrays_from_codes` turns codes into what a
CellMap crop holds: ``all`` (CellMap label ids, :data:`CELLMAP_LABEL_IDS`), one 0/1 array per
semantic class and the nucleus instance ids, each with 255 where unannotated; the groups'
``cellmap.annotation`` attributes say which encoding each uses.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from cellseg.classes import CLASSES, GROUP_NAMES

UNKNOWN = 255

CELLMAP_LABEL_IDS: dict[str, int] = {
    "ecs": 1,
    "pm": 2,
    "mito_mem": 3,
    "mito_lum": 4,
    "mito_ribo": 5,
    "golgi_mem": 6,
    "golgi_lum": 7,
    "ves_mem": 8,
    "ves_lum": 9,
    "endo_mem": 10,
    "endo_lum": 11,
    "er_mem": 16,
    "er_lum": 17,
    # CellMap's nuc is a composite of nuclear sub-classes; its voxels carry the nucleoplasm id.
    "nuc": 28,
}
"""Value of each class in ``cropN/all`` (CellMap label ids); 0 = none of the annotated classes."""

SEMANTIC_ENCODING: dict[str, int] = {"absent": 0, "present": 1, "unknown": UNKNOWN}
INSTANCE_ENCODING: dict[str, int] = {"absent": 0, "unknown": UNKNOWN}
INSTANCE_CLASSES: frozenset[str] = frozenset({"nuc"})

# Internal per-voxel label codes (uint16): 0 cytoplasm (no class), 1..13 = CLASSES[0..12],
# nucleus instance i = NUC_BASE + i, and UNKNOWN_CODE. One code space for the class and the
# instance id lets the label pyramid take a single block mode and derive every array from it,
# so `all`, the per-class arrays and the nuc instance array always agree at every level.
CYTO = 0
CODE: dict[str, int] = {name: i + 1 for i, name in enumerate(CLASSES) if name != "nuc"}
NUC_BASE = 1000
UNKNOWN_CODE = 65535
NUC_CLASS_INDEX = len(CLASSES)  # index of nuc in the 0..14 class-index space (0 = cyto)
# Imported group labels (whole organelles, issue 33 item 2; never in the demo): code
# GROUP_CODE_BASE + g for GROUP_NAMES[g], below NUC_BASE and above the class codes, so the block
# mode keeps them apart; `all` holds 0 there (no fine class is known) and the group's array 1.
GROUP_CODE_BASE = 100
GROUP_CODE: dict[str, int] = {name: GROUP_CODE_BASE + g for g, name in enumerate(GROUP_NAMES)}


def code_to_class_index(codes: np.ndarray) -> np.ndarray:
    """Class index per voxel: 0 cytoplasm, c+1 for ``CLASSES[c]`` (nuc instances → nuc), 255 unknown."""
    out = np.where(codes >= NUC_BASE, NUC_CLASS_INDEX, codes).astype(np.uint8)
    out[codes == UNKNOWN_CODE] = UNKNOWN
    return out


def annotation_attrs(class_name: str) -> dict[str, Any]:
    """CellMap ``cellmap.annotation`` attributes of a class group (semantic or instance)."""
    if class_name in INSTANCE_CLASSES:
        annotation_type = {"type": "instance_segmentation", "encoding": dict(INSTANCE_ENCODING)}
    else:
        annotation_type = {"type": "semantic_segmentation", "encoding": dict(SEMANTIC_ENCODING)}
    return {
        "cellmap": {"annotation": {"class_name": class_name, "annotation_type": annotation_type}}
    }


def all_attrs(classes: Sequence[str]) -> dict[str, Any]:
    """Attributes of a crop's ``all`` group: its encoding and the ids of its ``classes``."""
    return {
        "cellmap": {
            "annotation": {
                "class_name": "all",
                "annotation_type": {
                    "type": "semantic_segmentation",
                    "encoding": {"absent": 0, "unknown": UNKNOWN},
                },
            }
        },
        "cellseg": {
            "class_ids": {name: CELLMAP_LABEL_IDS[name] for name in classes if name in CLASSES}
        },
    }


def arrays_from_codes(
    codes: np.ndarray, classes: Sequence[str]
) -> Iterator[tuple[str, np.ndarray]]:
    """(group name, array) for ``all`` and each annotated class, from label codes."""
    unknown = codes == UNKNOWN_CODE
    cls = code_to_class_index(codes)
    lut = np.zeros(256, dtype=np.uint8)
    for name in classes:
        if name in CLASSES:
            lut[CLASSES.index(name) + 1] = CELLMAP_LABEL_IDS[name]
    lut[UNKNOWN] = UNKNOWN
    yield "all", lut[cls]
    for name in classes:
        if name in GROUP_CODE:
            binary = (codes == GROUP_CODE[name]).astype(np.uint8)
            binary[unknown] = UNKNOWN
            yield name, binary
        elif name in INSTANCE_CLASSES:
            inst = np.where(codes >= NUC_BASE, codes - NUC_BASE, 0).astype(np.uint16)
            inst[unknown] = UNKNOWN
            yield name, inst
        else:
            binary = (cls == CLASSES.index(name) + 1).astype(np.uint8)
            binary[unknown] = UNKNOWN
            yield name, binary
