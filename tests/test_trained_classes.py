"""Which classes a run trained on (:mod:`cellseg.trained_classes`), from hand-made annotation
tables."""

from __future__ import annotations

import pytest

from cellseg.classes import CLASSES
from cellseg.errors import CellsegError
from cellseg.trained_classes import (
    read_trained_classes,
    trained_classes,
    trained_names,
    untrained_classes,
    untrained_line,
)


def test_a_class_is_trained_when_some_crop_annotates_it():
    table = {"pm": 120.0, "nuc": 0.0, "ecs": 3.0, "unknown_name": 5.0}
    assert trained_classes(table) == ("ecs", "pm")
    assert untrained_classes(("ecs", "pm")) == tuple(c for c in CLASSES if c not in ("ecs", "pm"))
    assert trained_classes({}) == ()
    assert trained_classes(dict.fromkeys(CLASSES, 1)) == CLASSES


def test_a_group_label_trains_all_its_members_and_only_them():
    table = {"pm": 10, "mito": 4, "er": 0, "golgi_mem": 0}
    assert trained_classes(table) == ("pm", "mito_mem", "mito_lum", "mito_ribo")
    # a fine label of one member trains that member alone; its group is then trained too
    trained = trained_classes({"endo_mem": 1})
    assert trained == ("endo_mem",)
    assert trained_names(trained, ["endo", "endo_lum", "endo_mem", "er", "nuc"]) == [
        "endo",
        "endo_mem",
    ]


def test_the_untrained_line_names_classes_and_groups_or_is_absent():
    assert untrained_line(CLASSES) is None
    line = untrained_line(("pm", "mito_mem"))
    assert line is not None and line.startswith("untrained classes: ecs, mito_lum")
    # mito keeps a trained member; every other group has none
    assert "(groups golgi, ves, endo, er)" in line and "nuc" in line


def test_a_document_without_the_key_is_all_fourteen_and_a_bad_one_is_refused():
    assert read_trained_classes({}, "x") == CLASSES
    assert read_trained_classes({"trained_classes": ["nuc", "pm"]}, "x") == ("pm", "nuc")
    with pytest.raises(CellsegError, match="x: trained_classes is"):
        read_trained_classes({"trained_classes": ["mitochondria"]}, "x")
