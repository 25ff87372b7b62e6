"""Merging nested mappings: the one rule by which config layers and per-run overrides combine.

It lives below :mod:`cellseg.config` (config files layered) and :mod:`cellseg.config.settings`
(a run's settings resolved), which both merge the same way.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any


def deep_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``base`` updated by ``update``: nested mappings merge key by key, every other
    value (lists included) replaces."""
    merged = copy.deepcopy(dict(base))
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged
