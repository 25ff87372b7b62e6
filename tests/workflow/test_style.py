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
        [BIN / "ruff", "check", "--no-cache", "src", "tests", "bench"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:]


def test_snakefmt_is_clean():
    files = ["Snakefile", *map(str, sorted((REPO / "workflow/rules").glob("*.smk")))]
    result = subprocess.run(
        [BIN / "snakefmt", "--check", *files], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_snakemake_lint_reports_nothing(tmp_path):
    result = snakemake(tmp_path, "--lint", "--configfile", str(TEST_CONFIG), check=False)
    output = result.stdout + result.stderr
    lints = re.findall(r"^    \* (.+?):?$", output, re.MULTILINE)
    assert not lints, output[-3000:]
    assert result.returncode == 0 and "your workflow is in a good condition" in output, output
