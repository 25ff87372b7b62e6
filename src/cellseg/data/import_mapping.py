"""The mapping file of ``cellseg import``: its schema, and reading it with ``file:line: key``
errors.

The format, key by key, is in docs/data.md ("Importing your own EM"); ``config/import/`` holds
one example per public volume of ``real_em/``. Validation is a JSON schema
(:data:`SCHEMA`) plus what a schema cannot say: the keys each label kind takes
(:data:`KIND_KEYS`), class names among the 14 (:data:`cellseg.classes.CLASSES`) or the groups
(:data:`cellseg.classes.GROUP_NAMES`), integer label
values, and dataset names given once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cellseg.classes import CLASSES, GROUP_NAMES
from cellseg.data.import_sources import FORMATS
from cellseg.errors import CellsegError
from cellseg.yamlfile import DuplicateKeyError, UniqueKeyLoader

_VEC3 = {"type": "array", "items": {"type": "number"}, "minItems": 3, "maxItems": 3}
_SOURCE = {
    "type": "object",
    "required": ["path"],
    "additionalProperties": False,
    "properties": {
        "path": {"type": "string", "minLength": 1},
        "format": {"enum": list(FORMATS)},
        "key": {"type": "string"},
        "channel": {"type": "integer", "minimum": 0},
        "channel_axis": {"type": "integer", "minimum": 0, "maximum": 3},
    },
}
_CLASS = {"type": "string"}
SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["datasets"],
    "additionalProperties": False,
    "properties": {
        "datasets": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "em", "voxel_size_nm", "labels"],
                "additionalProperties": False,
                "properties": {
                    "name": {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"},
                    "em": _SOURCE,
                    "voxel_size_nm": {**_VEC3, "items": {"type": "number", "exclusiveMinimum": 0}},
                    "offset_nm": _VEC3,
                    "labels": {
                        "type": "object",
                        "required": ["kind"],
                        "additionalProperties": False,
                        "properties": {
                            "kind": {"enum": ["masks", "label_image", "instance_ids"]},
                            "source": _SOURCE,
                            "masks": {"type": "object", "additionalProperties": _SOURCE},
                            "overlap": {"enum": ["refuse", "unknown"]},
                            "values": {"type": "object", "additionalProperties": _CLASS},
                            "other_values": {"enum": ["none", "unknown"]},
                            "unknown_value": {"type": "integer"},
                            "background_value": {"type": "integer"},
                            "instance_class": _CLASS,
                            "derive_boundary": _CLASS,
                            "annotated": _SOURCE,
                            "unknown_mask": _SOURCE,
                        },
                    },
                    "crops": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "required": ["start", "size", "unit"],
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string", "pattern": r"^[A-Za-z0-9_]+$"},
                                "start": _VEC3,
                                "size": _VEC3,
                                "unit": {"enum": ["voxels", "nm"]},
                            },
                        },
                    },
                },
            },
        }
    },
}
"""JSON schema of a mapping file (integer keys of ``labels.values`` are read as strings)."""

KIND_KEYS: dict[str, tuple[set[str], set[str]]] = {
    "masks": ({"masks"}, {"masks", "overlap"}),
    "label_image": ({"source", "values"}, {"source", "values", "other_values", "unknown_value"}),
    "instance_ids": ({"source"}, {"source", "unknown_value", "background_value", "instance_class",
                                  "derive_boundary"}),
}  # fmt: skip
"""Per label kind: (required keys, allowed keys) besides ``kind``, ``annotated`` and
``unknown_mask`` (every kind)."""


class MappingFile:
    """A mapping file's parsed content and its YAML node tree, for ``file:line: key`` errors."""

    def __init__(self, path: Path, content: dict[str, Any], node: Any) -> None:
        self.path, self.content, self.node = path, content, node

    def at(self, *keys: str | int) -> str:
        """``file:line: a.b.c``, the line of the deepest key of ``keys`` the file holds."""
        node, line = self.node, 1
        for key in keys:
            child, key_line = None, None
            if isinstance(node, yaml.MappingNode):
                pair = next(((k, v) for k, v in node.value if k.value == str(key)), None)
                if pair is not None:
                    child, key_line = pair[1], pair[0].start_mark.line + 1
            elif (
                isinstance(node, yaml.SequenceNode)
                and isinstance(key, int)
                and 0 <= key < len(node.value)
            ):
                child = node.value[key]
                key_line = child.start_mark.line + 1
            if child is None:
                break
            node, line = child, key_line or line
        return f"{self.path}:{line}: {'.'.join(map(str, keys)) or '(top level)'}"


def _stringify_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _stringify_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_stringify_keys(v) for v in value]
    return value


def _check_class(name: str, where: str, allow_none: bool = False) -> None:
    # a whole-organelle group (mito, …) is imported as a group label (issue 33 item 2)
    if name in CLASSES or name in GROUP_NAMES or (allow_none and name == "none"):
        return
    also = " or none (annotated, no class)" if allow_none else ""
    raise CellsegError(
        f"{where}: unknown class {name!r}; use one of {', '.join(CLASSES)}{also} (or a "
        f"whole-organelle group: {', '.join(GROUP_NAMES)})"
    )


def load_mapping(path: Path | str) -> MappingFile:
    """Read and validate a mapping file (schema, class names, keys of each label kind).

    Raises:
        CellsegError: one line ``file:line: key: problem; fix``.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise CellsegError(f"{path}: cannot read the mapping file ({error.strerror})") from None
    try:
        content = yaml.load(text, Loader=UniqueKeyLoader)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except DuplicateKeyError as error:
        raise CellsegError(
            f"{path}:{error.line}: key {error.key} appears twice in one mapping; keep one"
        ) from None
    except yaml.YAMLError as error:
        raise CellsegError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    mapping = MappingFile(path, _stringify_keys(content or {}), node)
    validator = jsonschema.Draft202012Validator(SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(mapping.content))
    if error is not None:
        keys = list(error.absolute_path)
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = sorted(error.schema.get("properties", {}))
            extra = sorted(set(error.instance) - set(allowed))[:1]
            raise CellsegError(
                f"{mapping.at(*keys, *extra)}: unknown key; valid keys: {', '.join(allowed)} "
                "(docs/data.md, 'Importing your own EM')"
            )
        raise CellsegError(
            f"{mapping.at(*keys)}: {error.message}; see docs/data.md, 'Importing your own EM'"
        )
    for i, dataset in enumerate(mapping.content["datasets"]):
        labels = dataset["labels"]
        required, allowed = KIND_KEYS[labels["kind"]]
        for key in sorted(required - set(labels)):
            raise CellsegError(
                f"{mapping.at('datasets', i, 'labels')}: kind {labels['kind']} needs key {key}"
            )
        for key in sorted(set(labels) - allowed - {"kind", "annotated", "unknown_mask"}):
            raise CellsegError(
                f"{mapping.at('datasets', i, 'labels', key)}: not a key of kind "
                f"{labels['kind']}; its keys: {', '.join(sorted(allowed))}"
            )
        for cls in labels.get("masks", {}):
            _check_class(cls, mapping.at("datasets", i, "labels", "masks", cls))
        for value, cls in labels.get("values", {}).items():
            where = mapping.at("datasets", i, "labels", "values", value)
            try:
                int(value)
            except ValueError:
                raise CellsegError(
                    f"{where}: key {value!r} is not an integer label value"
                ) from None
            _check_class(cls, where, allow_none=True)
        for key in ("instance_class", "derive_boundary"):
            if key in labels:
                _check_class(labels[key], mapping.at("datasets", i, "labels", key))
        if labels["kind"] == "instance_ids" and not {"instance_class", "derive_boundary"} & set(
            labels
        ):
            raise CellsegError(
                f"{mapping.at('datasets', i, 'labels')}: kind instance_ids maps no class; set "
                "instance_class (the ids' class) and/or derive_boundary (e.g. pm)"
            )
        if labels.get("instance_class") and labels.get("instance_class") == labels.get(
            "derive_boundary"
        ):
            raise CellsegError(
                f"{mapping.at('datasets', i, 'labels', 'derive_boundary')}: the same class as "
                "instance_class; the boundary class must be another"
            )
    names = [d["name"] for d in mapping.content["datasets"]]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise CellsegError(f"{mapping.at('datasets', i, 'name')}: {name} is named twice")
    return mapping
