"""The voxel size models see (``data.resolution_nm``): one number (isotropic) or ``[z, y, x]`` nm.

The configuration spells it either way; inside cellseg a voxel size is always a :data:`Vec3`
``(z, y, x)`` in nm (:func:`as_vec3`). Where it is written back out (the settings hashed into
checkpoints, prediction stores' attributes, the class-frequency JSON) it takes its compact
spelling (:func:`compact`): one number when the three are equal, so an isotropic configuration
writes exactly what it wrote before voxel sizes had three axes (the same bytes, the same hashes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cellseg.errors import CellsegError

Vec3 = tuple[float, float, float]
"""A ``(z, y, x)`` triple in nm."""

Resolution = float | Vec3
"""A voxel size as the configuration spells it: one number (isotropic) or ``(z, y, x)`` nm."""


def as_vec3(value: float | Sequence[float]) -> Vec3:
    """``value`` (one number, or three ``(z, y, x)``) as a ``(z, y, x)`` tuple of floats, nm.

    Raises:
        ValueError: a sequence of another length (configuration values are checked with a
            readable message first, :func:`parse_resolution`).
    """
    if isinstance(value, int | float):
        r = float(value)
        return (r, r, r)
    values = tuple(float(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"a voxel size needs 1 or 3 values (z, y, x), got {len(values)}")
    return values  # type: ignore[return-value]


def compact(value: float | Sequence[float]) -> Resolution:
    """The spelling written out: a float when isotropic (what cellseg always wrote), else the
    ``(z, y, x)`` tuple."""
    z, y, x = as_vec3(value)
    return z if z == y == x else (z, y, x)


def to_json(value: float | Sequence[float]) -> float | list[float]:
    """:func:`compact` as JSON holds it (and reads it back): a float or a ``[z, y, x]`` list."""
    compacted = compact(value)
    return compacted if isinstance(compacted, float) else list(compacted)


def parse_resolution(value: Any, where: str) -> Resolution:
    """A configuration's ``resolution_nm`` checked and in its compact spelling
    (:func:`compact`; ``[8, 8, 8]`` is ``8.0``).

    Args:
        value: the configured number or list.
        where: the file and key, for the message (e.g. ``"config.yaml: data.resolution_nm"``).

    Raises:
        CellsegError: one line naming ``where`` and the fix, for a value that is not one positive
            number or three.
    """
    fix = "give one positive number (isotropic voxels, nm) or three, [z, y, x] nm, e.g. [50, 8, 8]"
    if isinstance(value, bool):
        raise CellsegError(f"{where}: {value!r} is not a voxel size; {fix}")
    if isinstance(value, int | float):
        values: list[Any] = [value]
    elif isinstance(value, list | tuple):
        values = list(value)
        if len(values) != 3:
            raise CellsegError(f"{where}: {len(values)} values {list(values)}; {fix}")
    else:
        raise CellsegError(f"{where}: {value!r} is not a voxel size; {fix}")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and v > 0 for v in values):
        raise CellsegError(f"{where}: {value!r} has a value that is not a positive number; {fix}")
    return compact(float(values[0]) if len(values) == 1 else values)


def format_resolution(value: float | Sequence[float], spec: str = "") -> str:
    """``value`` as messages print it: one number (formatted with ``spec``, as messages did
    before voxel sizes had three axes) when isotropic, else ``[50, 8, 8]``."""
    z, y, x = as_vec3(value)
    if z == y == x:
        return format(z, spec)
    return "[" + ", ".join(f"{v:g}" for v in (z, y, x)) + "]"


def cli_value(value: Any) -> Any:
    """A configured ``resolution_nm`` as a command-line word of ``--resolution-nm``: a number
    unchanged (the workflow's params stay what they were), three as ``50,8,8``."""
    if isinstance(value, int | float):
        return value
    return ",".join(f"{float(v):g}" for v in value)


def resolution_argument(text: str) -> Resolution:
    """``--resolution-nm``'s type: ``8`` or ``50,8,8`` (z, y, x nm), in the compact spelling.

    Raises:
        argparse.ArgumentTypeError: anything else (argparse prints it with the option's name).
    """
    import argparse

    try:
        values = [float(word) for word in text.split(",")]
        return parse_resolution(values[0] if len(values) == 1 else values, "--resolution-nm")
    except (ValueError, CellsegError) as error:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give one positive number or three, z,y,x nm (e.g. 50,8,8)"
        ) from error


def table_value(value: float | Sequence[float]) -> float | str:
    """A voxel size as one table cell: the number when isotropic (as tables always held it),
    else ``"[50, 8, 8]"``."""
    compacted = compact(value)
    return compacted if isinstance(compacted, float) else format_resolution(compacted)
