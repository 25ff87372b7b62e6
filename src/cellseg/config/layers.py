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
from cellseg.voxels import parse_resolution
from cellseg.yamlfile import DuplicateKeyError, UniqueKeyLoader, tab_indented_line

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
        CellsegError: unreadable YAML (a line indented with a tab named by its number), a key
            given twice in one mapping, or a top level that is not a mapping, naming the file.
    """
    path = Path(path)
    try:
        text = path.read_text()
        layer = yaml.load(text, Loader=UniqueKeyLoader) or {}
    except DuplicateKeyError as error:
        raise CellsegError(
            f"{path}:{error.line}: key {error.key} appears twice in the same mapping, and only "
            "the last would count; merge the two into one entry"
        ) from None
    except yaml.YAMLError as error:
        line = tab_indented_line(text)
        if line is not None:
            raise CellsegError(
                f"{path}:{line}: this line is indented with a tab, but YAML indents with spaces "
                "only: replace the tab with spaces (as many as the line's level needs)"
            ) from None
        raise CellsegError(
            f"{path}: cannot read this config file ({str(error).splitlines()[0]})"
        ) from None
    except OSError as error:
        raise CellsegError(
            f"{path}: cannot read this config file ({str(error).splitlines()[0]})"
        ) from None
    if not isinstance(layer, Mapping):
        raise CellsegError(f"{path}: a config file must hold a mapping at the top level")
    return dict(layer)


def _key_path(error: jsonschema.ValidationError) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def layer_holding(key_path: Sequence[str | int], sources: Sequence[Path | str]) -> str:
    """The config file whose value at ``key_path`` the layered config holds (what an error
    about that key names): the last layer that sets it, where a later layer naming a key of
    :data:`REPLACED_KEYS` without it hides the earlier ones. ``--config`` when no file sets it
    (the value came from the command line); every file for the top level or an unreadable one.
    """
    if not key_path:
        return ", ".join(map(str, sources)) or "config"
    holder: str | None = None
    for source in sources:
        try:
            node: Any = read_layer(source)
        except CellsegError:
            return ", ".join(map(str, sources))
        replaced = key_path[0] in REPLACED_KEYS and key_path[0] in node
        for part in key_path:
            in_mapping = isinstance(node, Mapping) and part in node
            in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
            if in_mapping or in_list:
                node = node[part]
            else:
                holder = None if replaced else holder
                break
        else:
            holder = str(source)
    return holder or "--config"


def schema_error_line(
    config: Mapping[str, Any], schema_path: Path | str, sources: Sequence[str]
) -> str | None:
    """The most relevant schema violation of ``config`` as one line, or None when it is valid."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = jsonschema.Draft202012Validator(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(dict(config)))
    if error is None:
        return None
    path = list(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        patterns = list(error.schema.get("patternProperties", {}))
        hint = (
            f"valid keys: {', '.join(allowed)}"
            if allowed
            else f"keys must match {', '.join(patterns)}"
        )
        key = ".".join(map(str, [*path, unknown[0] if unknown else "?"]))
        where = layer_holding([*path, unknown[0]] if unknown else path, sources)
        return f"{where}: unknown key {key}; {hint}"
    where = layer_holding(path, sources)
    return f"{where}: {_key_path(error)}: {error.message}; see config/README.md"


MODEL_NAMES: tuple[str, ...] = ("unet", "resnet", "swin", "vit", "resenc", "mednext", "cosem")
"""The registry's model names (``cellseg.models.list_models``), known here without importing
torch: Snakemake plans the DAG in a process that must not need it. A test keeps the two equal,
so a 9th model fails it until it is named here too."""

PATCH_FORM: dict[str, str] = {"2d": "[H, W]", "3d": "[D, H, W]"}


def check_models(config: Mapping[str, Any], sources: Sequence[Path | str]) -> None:
    """Refuse, at planning time, a ``models`` key no registered model has and a patch shape
    whose length does not fit the model's dimension (each would otherwise fail only in its
    job's log, after the data steps ran).

    Raises:
        CellsegError: one line naming the file and the key that holds the bad value.
    """
    training = config.get("training") or {}
    for key, entry in (config.get("models") or {}).items():
        name, _, dim = str(key).rpartition("_")
        if name not in MODEL_NAMES:
            raise CellsegError(
                f"{layer_holding(['models', key], sources)}: models.{key}: no model named "
                f"{name!r} is registered (registered: {', '.join(MODEL_NAMES)}, each _2d or "
                "_3d); fix the name, or register the model (docs/models.md)"
            )
        for path in (["models", key], ["training", dim], ["training", "defaults"]):
            section = entry if path[0] == "models" else training.get(path[1])
            if isinstance(section, Mapping) and "patch_shape" in section:
                shape = section["patch_shape"]
                if len(shape) != int(dim[0]):
                    holder = layer_holding([*path, "patch_shape"], sources)
                    raise CellsegError(
                        f"{holder}: {'.'.join(path)}.patch_shape = {list(shape)} has "
                        f"{len(shape)} values, but {key} is a {dim} model; give "
                        f"{int(dim[0])}: {PATCH_FORM[dim]} voxels"
                    )
                break  # the most specific layer that sets it is the one the model gets


def check_config(
    config: Mapping[str, Any], schema_path: Path | str, sources: Sequence[str]
) -> None:
    """Raise a one-line :class:`CellsegError` for a schema violation or a missing input path."""
    data = config.get("data")
    if isinstance(data, Mapping) and "resolution_nm" in data:
        # before the schema's "is not valid under any of the given schemas": the key and the fix
        holder = layer_holding(["data", "resolution_nm"], sources)
        parse_resolution(data["resolution_nm"], f"{holder}: data.resolution_nm")
    line = schema_error_line(config, schema_path, sources)
    if line:
        raise CellsegError(line)
    check_models(config, sources)
    where = ", ".join(map(str, sources)) or "config"
    data = config["data"]
    if data.get("datasplit_csv") and not Path(data["datasplit_csv"]).is_file():
        raise CellsegError(
            f"{layer_holding(['data', 'datasplit_csv'], sources)}: data.datasplit_csv "
            f"{data['datasplit_csv']} does not exist; fix the path"
        )
    low, high = data.get("em_range", (10.6, 194.1))
    # EM is uint8 (store.check_em_dtype refuses any other): a reversed, empty or out-of-range
    # window makes every input voxel the same value (or NaN), and training would still "finish"
    if not 0 <= low < high <= 255:
        raise CellsegError(
            f"{layer_holding(['data', 'em_range'], sources)}: data.em_range = [{low}, {high}] must be [low, high] with "
            "0 <= low < high <= 255 (raw uint8 EM values); e.g. the seed's [10.6, 194.1]"
        )
    imports = data.get("imports", [])
    if imports and data["demo"]["enabled"]:
        raise CellsegError(
            f"{layer_holding(['data', 'imports'], sources)}: data.imports needs "
            "data.demo.enabled: false (the demo's synthetic crops and your own would be split "
            "and scored together); set it in the same config file"
        )
    if imports and data.get("datasplit_csv"):
        raise CellsegError(
            f"{layer_holding(['data', 'imports'], sources)}: data.imports and data.datasplit_csv "
            "both given; the imported datasets are split by the workflow: remove one of them"
        )
    for i, entry in enumerate(imports):
        for key in ("mapping", "source_root"):
            path = entry.get(key)
            if path is not None and not Path(path).exists():
                raise CellsegError(
                    f"{layer_holding(['data', 'imports'], sources)}: data.imports[{i}].{key} "
                    f"{path} does not exist (relative paths start at the directory snakemake "
                    "runs in, the clone's root); fix the path"
                )
    stems = [Path(entry["mapping"]).stem for entry in imports]
    if len(set(stems)) < len(stems):
        raise CellsegError(
            f"{layer_holding(['data', 'imports'], sources)}: two data.imports mapping files share "
            f"the name {sorted(s for s in stems if stems.count(s) > 1)[0]!r}; each is imported "
            "to results/imported/{its file name}: rename one"
        )
    if not data["demo"]["enabled"]:
        if not data.get("roots") and not data.get("datasplit_csv") and not imports:
            raise CellsegError(
                f"{where}: data.demo.enabled is false but data.roots is empty; list your CellMap "
                "data roots (or data.imports: mapping files to import)"
            )
        for root in data.get("roots", []):
            if not Path(root).is_dir():
                raise CellsegError(
                    f"{layer_holding(['data', 'roots'], sources)}: data.roots entry {root} does "
                    "not exist; fix the path"
                )


def config_digest(value: Any) -> str:
    """A short digest of a config value (a section, the whole config), for a rule's ``params``:
    Snakemake reruns a job when a param changes and prints the param before and after as the
    reason, so a digest keeps that reason one short line where the value itself would print
    kilobytes twice for every job."""
    import hashlib
    import json

    text = json.dumps(value, sort_keys=True, default=str)
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]


def resolved_config_document(
    config: Mapping[str, Any], layers: Sequence[Path | str]
) -> dict[str, Any]:
    """What a run resolves to: the config files in the order they were layered, every model's
    complete training settings (``training.defaults``, then ``training.{dim}``, then its
    ``models`` entry), and the whole layered config."""
    from dataclasses import asdict

    from cellseg.config.settings import jsonable, resolve_settings

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
