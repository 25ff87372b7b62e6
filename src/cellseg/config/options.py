"""Command-line options into a settings dataclass: the sub-commands (``cellseg evaluate``,
``cellseg summary``) take the settings that the workflow reads from the config file as options
named like their fields (``--sw-batch-size`` → ``sw_batch_size``), and build the settings from
them here, so a field is passed on by name rather than copied line by line."""

from __future__ import annotations

import argparse
from dataclasses import fields, is_dataclass
from typing import Any, TypeVar

__all__ = ["settings_from_args"]

T = TypeVar("T")


def settings_from_args(cls: type[T], args: argparse.Namespace, **values: Any) -> T:
    """``cls`` (a dataclass) from the options of ``args`` named like its fields; ``values`` set
    the fields whose option is named otherwise or needs converting (they win over ``args``).
    Fields with neither keep their defaults."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    names = {f.name for f in fields(cls) if f.init}
    given = {name: value for name, value in vars(args).items() if name in names}
    return cls(**(given | values))
