"""config/README.md documents every key of the schema, and the execution keys match the code."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from cellseg.config.settings import EXECUTION_KEYS, TrainSettings

REPO = Path(__file__).resolve().parents[1]


def schema_keys() -> set[str]:
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    keys = set()

    def walk(node: dict, prefix: str) -> None:
        for key, sub in node.get("properties", {}).items():
            if "$ref" in sub:  # '#/$defs/name'
                sub = schema["$defs"][sub["$ref"].rsplit("/", 1)[1]]
            if "properties" in sub and key != "augmentation":
                walk(sub, f"{prefix}{key}.")
            else:
                keys.add(f"{prefix}{key}")

    for section in ("data", "loss", "evaluation", "resources", "predict", "preflight"):
        walk(schema["properties"][section], f"{section}.")
    keys |= set(schema["$defs"]["settings"]["properties"])
    keys |= {"select_models", "replicates", "variants"}  # the study keys, documented by name
    return keys


def test_every_schema_key_is_documented():
    documented = set(
        re.findall(r"^\| `([\w.]+)` \|", (REPO / "config/README.md").read_text(), re.MULTILINE)
    )
    assert schema_keys() - documented == set()


def test_training_keys_of_schema_and_code_agree():
    schema = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())
    in_schema = set(schema["$defs"]["settings"]["properties"])
    in_code = set(TrainSettings.__dataclass_fields__) - {
        "model",
        "dim",
        "resolution_nm",
        "em_range",
        "infer_true_negatives",
        "loss",
    }
    assert in_schema == in_code
    assert in_code >= EXECUTION_KEYS
    text = (REPO / "config/README.md").read_text()
    marked = set(re.findall(r"^\| `(\w+)` \|.*\*execution\* \|$", text, re.MULTILINE))
    assert marked == set(EXECUTION_KEYS)
