"""What cellseg may write into or delete: never the user's data (SPEC §3).

A CellMap data store is a zarr hierarchy (a directory holding ``.zgroup``, ``.zarray`` or
``zarr.json``, or named ``*.zarr``). No command writes inside one, and the only directories
cellseg deletes are stores its own metadata identifies as its output: the ``cellseg`` entry of
the root's attributes (written by :mod:`cellseg.prediction` and :mod:`cellseg.evaluation`), or
the ``.cellseg`` state directory a prediction store gets before anything else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cellseg.errors import CellsegError

ZARR_MARKERS: tuple[str, ...] = (".zgroup", ".zarray", "zarr.json")
"""Files that make a directory a zarr v2 or v3 group or array."""

STATE_DIR = ".cellseg"
"""A prediction store's working state (block markers), made first when cellseg creates one."""


def is_zarr_node(directory: Path) -> bool:
    """Whether ``directory`` is a zarr group or array (or is named ``*.zarr``)."""
    if not directory.is_dir():
        return False
    return directory.suffix == ".zarr" or any((directory / m).is_file() for m in ZARR_MARKERS)


def cellseg_metadata(store: Path) -> dict[str, Any] | None:
    """The ``cellseg`` entry of a zarr store's root attributes (v2 ``.zattrs`` or v3
    ``zarr.json``), or ``None`` when the store holds none (cellseg did not write it)."""
    for name, key in ((".zattrs", None), ("zarr.json", "attributes")):
        try:
            document = json.loads((store / name).read_text())
        except (OSError, ValueError):
            continue
        attributes = document.get(key, {}) if key else document
        if isinstance(attributes, dict) and isinstance(attributes.get("cellseg"), dict):
            return attributes["cellseg"]
    return None


def is_prediction_store(path: Path) -> bool:
    """Whether ``path`` is a prediction store cellseg wrote: its attributes say so, or it has
    the state directory :func:`cellseg.prediction.init_store` creates first (a store killed
    before its attributes were written)."""
    if not path.is_dir():
        return False
    metadata = cellseg_metadata(path)
    return bool(metadata and "prediction" in metadata) or (path / STATE_DIR).is_dir()


def outermost_store(path: Path | str) -> Path | None:
    """The outermost zarr hierarchy among ``path``'s existing ancestors (``path`` excluded)."""
    resolved = Path(path).resolve()
    stores = [parent for parent in resolved.parents if is_zarr_node(parent)]
    return stores[-1] if stores else None


def check_output_path(path: Path | str, option: str, kind: str) -> None:
    """Refuse an output path that would write into a data store, or that has the wrong kind.

    Args:
        path: the file or directory about to be written.
        option: how the user gave it (``--out``, ``--run-dir``), for the message.
        kind: ``"file"`` (an existing directory is refused), ``"directory"`` (an existing file
            is refused), ``"store"`` (a prediction store: an existing file, or a non-empty
            directory that is not a prediction store of cellseg's, is refused) or
            ``"cellseg-store"`` (a store that replaces what is there: an existing file, or a
            non-empty directory without cellseg metadata, is refused).

    Raises:
        CellsegError: one line naming the path, the store and the fix.
    """
    path = Path(path)
    store = outermost_store(path)
    if store is not None:
        raise CellsegError(
            f"{option} {path}: lies inside the zarr store {store}, and cellseg never writes "
            "into a data store; choose a path outside it (e.g. under results/)"
        )
    if kind == "file" and path.is_dir():
        raise CellsegError(
            f"{option} {path}: is a directory; give the path of the file to write in it"
        )
    if kind in ("directory", "store", "cellseg-store") and path.exists() and not path.is_dir():
        raise CellsegError(
            f"{option} {path}: is a file, not a directory; choose a directory path (the file "
            "is left as it is)"
        )
    if kind == "store" and path.is_dir() and any(path.iterdir()) and not is_prediction_store(path):
        raise CellsegError(
            f"{option} {path}: exists and is not a prediction store cellseg wrote (no "
            "cellseg metadata in it), so it is left untouched (--overwrite replaces only "
            "cellseg's own prediction stores); choose another path"
        )
    if (
        kind == "cellseg-store"
        and path.is_dir()
        and any(path.iterdir())
        and cellseg_metadata(path) is None
    ):
        raise CellsegError(
            f"{option} {path}: exists and is not a store cellseg wrote (no cellseg metadata in "
            "it), so it is left untouched (it would be replaced); choose another path"
        )
