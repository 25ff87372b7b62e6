"""Command-line options into a settings dataclass (:mod:`cellseg.config.options`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from cellseg.config.options import settings_from_args


@dataclass(frozen=True)
class Settings:
    overlap: float = 0.25
    sw_batch_size: int = 4
    modes: tuple[str, ...] = ()
    device: str = "auto"


def test_options_named_like_fields_are_passed_and_the_rest_ignored():
    args = argparse.Namespace(overlap=0.5, sw_batch_size=2, out="x.csv", func=print)
    assert settings_from_args(Settings, args) == Settings(overlap=0.5, sw_batch_size=2)


def test_values_win_over_options_and_unset_fields_keep_their_defaults():
    args = argparse.Namespace(overlap=0.5, mode=["train"], modes=None)
    settings = settings_from_args(Settings, args, modes=tuple(args.mode), sw_batch_size=8)
    assert settings == Settings(overlap=0.5, sw_batch_size=8, modes=("train",), device="auto")


def test_a_class_that_is_not_a_dataclass_is_refused():
    with pytest.raises(TypeError, match="not a dataclass"):
        settings_from_args(dict, argparse.Namespace())
