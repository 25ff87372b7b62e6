"""The one colour of each class and group: the figures and the viewer draw with these.

Every class of :data:`cellseg.classes.CLASSES` and every group of
:data:`cellseg.classes.GROUPS` has one fixed colour (:data:`COLOURS`, ``#RRGGBB``); the sample
panels, the per-class panels and the training curves (:mod:`cellseg.visualization`) and the
masks of ``cellseg view`` (:mod:`cellseg.viewer`) take them from here, so ``nuc`` is the same
orange in a figure and in neuroglancer.

How they were chosen: a membrane and its lumen are a dark and a light shade of one hue, and the
organelle's group a third shade of it (``er_mem`` dark blue, ``er_lum`` light blue, ``er``
medium blue), mostly from Paul Tol's colour-blind-safe "muted", "bright" and "light" schemes.
No colour is grey, white or black: a mask is drawn over grey EM in the viewer and over a white
background in the figures, where grey means "unannotated" (:data:`UNANNOTATED`). Any two of the
19 colours are at least :data:`MIN_DISTANCE` apart in RGB (0-255 per channel); tests keep it so.
"""

from __future__ import annotations

__all__ = [
    "COLOURS",
    "MIN_DISTANCE",
    "UNANNOTATED",
    "colour",
    "rgb",
    "rgb255",
]

COLOURS: dict[str, str] = {
    # the 14 classes (channel order)
    "ecs": "#BBCC33",  # pear
    "pm": "#332288",  # indigo
    "mito_mem": "#117733",  # dark green
    "mito_lum": "#44AA99",  # teal
    "mito_ribo": "#CC3311",  # red
    "golgi_mem": "#882255",  # wine
    "golgi_lum": "#CC6677",  # rose
    "ves_mem": "#AA4499",  # purple
    "ves_lum": "#EE99AA",  # pink
    "endo_mem": "#997700",  # ochre
    "endo_lum": "#DDCC77",  # sand
    "er_mem": "#004488",  # dark blue
    "er_lum": "#88CCEE",  # light blue
    "nuc": "#EE7733",  # orange
    # the 5 groups (whole organelles), a third shade of their members' hue
    "mito": "#66BB44",  # leaf green
    "golgi": "#DD3366",  # raspberry
    "ves": "#CC77DD",  # lilac
    "endo": "#DDAA33",  # gold
    "er": "#4477AA",  # medium blue
}
"""``#RRGGBB`` of every class and group name (the 14 classes first, in channel order)."""

UNANNOTATED = "#8C8C8C"
"""Grey of unannotated ground truth in the figures (hatched as well), not a class colour."""

MIN_DISTANCE = 45.0
"""Least RGB distance (0-255 per channel) between any two colours of :data:`COLOURS`."""


def colour(name: str) -> str:
    """The ``#RRGGBB`` colour of class or group ``name``.

    Raises:
        KeyError: ``name`` is neither a class nor a group; the message lists them.
    """
    try:
        return COLOURS[name]
    except KeyError:
        raise KeyError(f"{name!r} has no colour: not one of {', '.join(COLOURS)}") from None


def rgb255(name: str) -> tuple[int, int, int]:
    """The colour of ``name`` as ``(r, g, b)``, 0-255 each."""
    value = colour(name).lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


def rgb(name: str) -> tuple[float, float, float]:
    """The colour of ``name`` as ``(r, g, b)`` in [0, 1] (matplotlib's form)."""
    r, g, b = rgb255(name)
    return r / 255, g / 255, b / 255
