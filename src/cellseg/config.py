"""The workflow config: how its layers combine, and checks that end in one line naming the
file, the key and the fix.

Layers, later winning: ``config/config.yaml`` (the base), each ``--configfile`` in the order
given, then ``--config`` overrides. Mappings merge key by key, except ``models``: a layer that
names ``models`` replaces the whole list, so a preset chooses exactly which models run and no
per-model entry of an earlier layer survives into it.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cellseg.errors import CellsegError
from cellseg.mappings import deep_merge

REPLACED_KEYS: frozenset[str] = frozenset({"models"})
"""Top-level keys a layer replaces instead of merging into."""


def merge_layer(base: Mapping[str, Any], layer: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``layer`` (:func:`deep_merge`), except that a top-level key in
    :data:`REPLACED_KEYS` replaces as a whole."""
    merged = deep_merge(base, {k: v for k, v in layer.items() if k not in REPLACED_KEYS})
    merged.update({k: copy.deepcopy(v) for k, v in layer.items() if k in REPLACED_KEYS})
    return merged


def layered_config(
    base: Mapping[str, Any],
    presets: Sequence[Mapping[str, Any]] = (),
    overrides: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The workflow config from its layers: ``base``, then each preset, then ``overrides``
    (Snakemake's ``--config``, see :func:`typed_overrides`), each through :func:`merge_layer`."""
    config = copy.deepcopy(dict(base))
    for layer in (*presets, typed_overrides(overrides or {})):
        config = merge_layer(config, layer or {})
    return config


def typed_overrides(value: Any) -> Any:
    """``--config`` values with their nested scalars typed as in a config file.

    Snakemake reads a nested ``--config`` value such as ``training={'3d': {'batch_per_gpu': 7}}``
    with YAML's base loader, so every nested scalar arrives as a string (``'7'``). Each string
    is read again as a YAML scalar, and ``1e-3``-style numbers (strings to YAML 1.1) as floats.
    """
    if isinstance(value, Mapping):
        return {key: typed_overrides(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed_overrides(item) for item in value]
    if not isinstance(value, str):
        return value
    try:
        typed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if isinstance(typed, str):
        try:
            return float(typed)
        except ValueError:
            return value
    return typed if typed is None or isinstance(typed, bool | int | float) else value


def read_layer(path: Path | str) -> dict[str, Any]:
    """One config file as a mapping (empty file: empty mapping).

    Raises:
        CellsegError: unreadable YAML or a top level that is not a mapping, naming the file.
    """
    path = Path(path)
    try:
        layer = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise CellsegError(
            f"{path}: cannot read this config file ({str(error).splitlines()[0]})"
        ) from None
    if not isinstance(layer, Mapping):
        raise CellsegError(f"{path}: a config file must hold a mapping at the top level")
    return dict(layer)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def schema_error_line(
    config: Mapping[str, Any], schema_path: Path | str, sources: Sequence[str]
) -> str | None:
    """The most relevant schema violation of ``config`` as one line, or None when it is valid."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(dict(config)))
    if error is None:
        return None
    where = ", ".join(map(str, sources)) or "config"
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        patterns = list(error.schema.get("patternProperties", {}))
        hint = (
            f"valid keys: {', '.join(allowed)}"
            if allowed
            else f"keys must match {', '.join(patterns)}"
        )
        return f"{where}: unknown key {_key_path(error)}.{unknown[0] if unknown else '?'}; {hint}"
    return f"{where}: {_key_path(error)}: {error.message}; see config/README.md"


def check_config(
    config: Mapping[str, Any], schema_path: Path | str, sources: Sequence[str]
) -> None:
    """Raise a one-line :class:`CellsegError` for a schema violation or a missing input path."""
    line = schema_error_line(config, schema_path, sources)
    if line:
        raise CellsegError(line)
    where = ", ".join(map(str, sources)) or "config"
    data = config["data"]
    if data.get("datasplit_csv") and not Path(data["datasplit_csv"]).is_file():
        raise CellsegError(
            f"{where}: data.datasplit_csv {data['datasplit_csv']} does not exist; fix the path"
        )
    low, high = data.get("em_range", (10.6, 194.1))
    # EM is uint8 (store.check_em_dtype refuses any other): a reversed, empty or out-of-range
    # window makes every input voxel the same value (or NaN), and training would still "finish"
    if not 0 <= low < high <= 255:
        raise CellsegError(
            f"{where}: data.em_range = [{low}, {high}] must be [low, high] with "
            "0 <= low < high <= 255 (raw uint8 EM values); e.g. the seed's [10.6, 194.1]"
        )
    if not data["demo"]["enabled"]:
        if not data.get("roots") and not data.get("datasplit_csv"):
            raise CellsegError(
                f"{where}: data.demo.enabled is false but data.roots is empty; list your CellMap data roots"
            )
        for root in data.get("roots", []):
            if not Path(root).is_dir():
                raise CellsegError(f"{where}: data.roots entry {root} does not exist; fix the path")


def resolved_config_document(
    config: Mapping[str, Any], layers: Sequence[Path | str]
) -> dict[str, Any]:
    """What a run resolves to: the config files in the order they were layered, every model's
    complete training settings (``training.defaults``, then ``training.{dim}``, then its
    ``models`` entry), and the whole layered config."""
    from dataclasses import asdict

    from cellseg.training.settings import jsonable, resolve_settings

    return {
        "config_files": [str(path) for path in layers],
        "models": {
            key: jsonable(asdict(resolve_settings(config, key))) for key in config.get("models", {})
        },
        "config": jsonable(dict(config)),
    }


def write_resolved_config(
    config: Mapping[str, Any], layers: Sequence[Path | str], path: Path | str
) -> None:
    """Write :func:`resolved_config_document` as YAML, atomically."""
    from cellseg.io import write_text_atomic

    document = resolved_config_document(config, layers)
    write_text_atomic(Path(path), yaml.safe_dump(document, sort_keys=False))
