"""YAML as cellseg reads the user's files: a key given twice in one mapping is an error.

``yaml.safe_load`` keeps the last of two equal keys silently, so a config file with a second
``unet_2d:`` entry would drop the first one's settings without a word.
"""

from __future__ import annotations

from typing import Any

import yaml


class DuplicateKeyError(yaml.YAMLError):
    """A mapping of a YAML document names the same key twice."""

    def __init__(self, key: Any, line: int) -> None:
        super().__init__(f"key {key!r} appears twice (line {line})")
        self.key, self.line = key, line


class UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping: the safe loader keeps
    the last silently, so a second ``unet_2d:`` entry would drop the first one's settings."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise DuplicateKeyError(key, key_node.start_mark.line + 1)
                seen.add(key)
            except TypeError:  # an unhashable key: the safe loader's own error follows
                pass
        return super().construct_mapping(node, deep)


def tab_indented_line(text: str) -> int | None:
    """The number (1-based) of the first line of ``text`` indented with a tab, or None.

    YAML indents with spaces only: a tab in a line's leading whitespace is a scanner error
    ("found character '\\t' that cannot start any token") that names neither the cause nor, in
    Snakemake's message, the file. Only called on a document that failed to load, as a tab may
    stand inside a block scalar's text.
    """
    for number, line in enumerate(text.splitlines(), start=1):
        indent = line[: len(line) - len(line.lstrip(" \t"))]
        if "\t" in indent and line.strip():
            return number
    return None
