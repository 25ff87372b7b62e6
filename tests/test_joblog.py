"""cellseg.joblog.job_log: what a failed workflow job leaves in its log (the workflow-level test
is tests/workflow/test_job_logs.py)."""

from __future__ import annotations

import errno
import sys

import pytest

from cellseg.errors import CellsegError
from cellseg.joblog import job_log


def test_bad_input_ends_the_log_with_one_line_and_exits_1(tmp_path):
    log = tmp_path / "job.log"
    stderr = sys.stderr
    with pytest.raises(SystemExit) as exited, job_log(log):
        print("progress", file=sys.stderr)
        raise CellsegError("x.yaml: models.a_2d: fix it")
    assert exited.value.code == 1 and sys.stderr is stderr
    assert log.read_text().splitlines() == [
        "progress",
        "cellseg: error: x.yaml: models.a_2d: fix it",
    ]


def test_a_full_disk_is_one_line_too(tmp_path):
    log = tmp_path / "job.log"
    with pytest.raises(SystemExit), job_log(log):
        raise OSError(errno.ENOSPC, "No space left on device", "results/summary.csv")
    assert log.read_text().splitlines() == [
        "cellseg: error: results/summary.csv: no space left on the device (or quota exceeded) "
        "while writing it; free some space there (or write elsewhere) and run the same command "
        "again: what was already written is kept"
    ]


def test_an_unexpected_error_leaves_its_traceback_then_a_last_line(tmp_path):
    log = tmp_path / "job.log"
    stderr = sys.stderr
    with pytest.raises(KeyError), job_log(log):
        {}["mean_dice"]
    lines = log.read_text().splitlines()
    assert lines[0] == "Traceback (most recent call last):" and sys.stderr is stderr
    assert lines[-1].startswith("cellseg: error: KeyError: 'mean_dice' (unexpected")
