"""The 14 CellMap organelle classes, in the fixed channel order used everywhere in cellseg."""

from __future__ import annotations

CLASSES: tuple[str, ...] = (
    "ecs",
    "pm",
    "mito_mem",
    "mito_lum",
    "mito_ribo",
    "golgi_mem",
    "golgi_lum",
    "ves_mem",
    "ves_lum",
    "endo_mem",
    "endo_lum",
    "er_mem",
    "er_lum",
    "nuc",
)
"""Class names; channel ``c`` of every target, logit and metric tensor is ``CLASSES[c]``."""

NUM_CLASSES: int = len(CLASSES)

CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
