"""The house style, checked as tests so CI and the README's test command enforce it."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from workflow_runner import REPO, TEST_CONFIG, snakemake

BIN = Path(sys.executable).parent


def test_ruff_is_clean():
    result = subprocess.run(
        [BIN / "ruff", "check", "src", "tests", "bench"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout[-3000:]


def test_snakefmt_is_clean():
    files = ["Snakefile", *map(str, sorted((REPO / "workflow/rules").glob("*.smk")))]
    result = subprocess.run(
        [BIN / "snakefmt", "--check", *files], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_snakemake_lint_has_only_the_deployment_lint(tmp_path):
    # cellseg deploys with one virtual environment (scripts/env.sh), not per-rule conda
    # environments or containers: that one lint is expected, any other is a failure
    result = snakemake(tmp_path, "--lint", "--configfile", str(TEST_CONFIG), check=False)
    lints = re.findall(r"^    \* (.+?):?$", result.stdout + result.stderr, re.MULTILINE)
    assert lints, "snakemake --lint printed nothing to check"
    assert set(lints) == {"Specify a conda environment or container for each rule."}
