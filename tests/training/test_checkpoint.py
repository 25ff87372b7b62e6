"""Checkpoints: a failed write is one line and loses nothing already saved."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from cellseg.errors import CellsegError
from cellseg.training.checkpoint import load_checkpoint, save_checkpoint

REPO = Path(__file__).resolve().parents[2]

# Run in a child process: RLIMIT_FSIZE caps the size of any file it writes, so torch.save's
# write fails for real (EFBIG, SIGXFSZ ignored) the way it does on a full disk, without
# filling one. The small checkpoint is saved before the limit is set.
FAILING_SAVE = textwrap.dedent(
    """
    import resource, signal, sys
    import torch
    from cellseg.errors import CellsegError
    from cellseg.training.checkpoint import save_checkpoint

    path = sys.argv[1]
    save_checkpoint({"step": 1, "weights": torch.arange(10.0)}, path)
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    hard = resource.getrlimit(resource.RLIMIT_FSIZE)[1]
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, hard))
    try:
        save_checkpoint({"step": 2, "weights": torch.zeros(1 << 20)}, path)  # 4 MiB > 1 MiB
    except CellsegError as error:
        print(error)
        sys.exit(3)
    """
)


def test_failed_write_is_one_line_and_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "checkpoints" / "last.ckpt"
    environment = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    result = subprocess.run(
        [sys.executable, "-c", FAILING_SAVE, str(path)],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr
    message = result.stdout.strip()
    assert "\n" not in message
    assert message.startswith(f"{path}: could not write the checkpoint")
    assert "previous checkpoint is intact" in message and "free space" in message
    state = load_checkpoint(path)
    assert state["step"] == 1
    torch.testing.assert_close(state["weights"], torch.arange(10.0))
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]  # no temporary left


def test_unwritable_directory_is_one_line(tmp_path):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    with pytest.raises(CellsegError) as error:
        save_checkpoint({"step": 1}, blocker / "last.ckpt")
    message = str(error.value)
    assert "\n" not in message and "could not write the checkpoint" in message
    assert "no earlier checkpoint was there" in message


def test_save_then_load_round_trips(tmp_path):
    path = tmp_path / "last.ckpt"
    save_checkpoint({"step": 7, "weights": torch.ones(3)}, path)
    save_checkpoint({"step": 8, "weights": torch.full((3,), 2.0)}, path)  # replaces atomically
    state = load_checkpoint(path)
    assert state["step"] == 8
    torch.testing.assert_close(state["weights"], torch.full((3,), 2.0))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]
