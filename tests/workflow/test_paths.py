"""Paths as users have them: spaces and shell characters reach the jobs intact."""

from __future__ import annotations

import shutil

import pytest
from workflow_runner import run_in_clone as run

pytestmark = pytest.mark.minutes(0.5)  # order: tests/conftest.py


def test_data_roots_with_spaces_reach_the_data_rules(clone, tmp_path):
    root = tmp_path / "my data"
    run(clone, "--cores", "1", "results/demo_data", "--config", "data={'demo': {'size': 'small'}}")
    shutil.copytree(clone / "results" / "demo_data", root)
    config = (
        f"data={{'demo': {{'enabled': False}}, 'roots': ['{root}'], 'allow_missing_classes': True}}"
    )
    run(clone, "--cores", "1", "results/class_frequencies.json", "--config", config)
    split = (clone / "results" / "datasplit.csv").read_text()
    assert split.count(f'"{root}/') >= 2 * 28  # every crop, EM and label store, under "my data"
