"""Workflow config checks that end in one line naming the file, the key and the fix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from cellseg.errors import CellsegError


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
    if not data["demo"]["enabled"]:
        if not data.get("roots") and not data.get("datasplit_csv"):
            raise CellsegError(
                f"{where}: data.demo.enabled is false but data.roots is empty; list your CellMap data roots"
            )
        for root in data.get("roots", []):
            if not Path(root).is_dir():
                raise CellsegError(f"{where}: data.roots entry {root} does not exist; fix the path")
