"""Ctrl-C of a training is the user's stop, not a bug to report: one line saying it was
interrupted and how to resume, the checkpoints kept, and the same command resumes (issue 35)."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml
from cli_training import train_command

from cellseg.errors import INTERRUPTED_STATUS

REPO = Path(__file__).resolve().parents[2]
LINE = (
    "cellseg train: interrupted (Ctrl-C); the checkpoints it saved are kept: run the same "
    "command again to resume from the last one (checkpoints/last.pt in the run directory; the "
    "steps after it are trained again)"
)


def start_training(config_path: Path, tiny_data: dict, run_dir: Path) -> subprocess.Popen:
    """``python -m cellseg train`` of unet_2d, as a user starts it in a terminal."""
    command = train_command(config_path, tiny_data, run_dir)
    env = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    # a terminal's Ctrl-C reaches a process whose SIGINT is the default: a pytest-xdist worker
    # ignores SIGINT, and a child would inherit that (Python then installs no KeyboardInterrupt)
    return subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip


def interrupt_when(process: subprocess.Popen, ready, timeout: float = 240) -> str:
    """Send SIGINT (what Ctrl-C sends) once ``ready()`` holds; return stderr after the exit."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert process.poll() is None, process.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the training never got there"
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    return stderr


def test_ctrl_c_of_a_training_says_interrupted_and_the_same_command_resumes(
    tiny_config, tiny_data, tmp_path
):
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"].update(max_epochs=10_000, checkpoint_every_steps=1)
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.pt"
    stderr = interrupt_when(start_training(config_path, tiny_data, run_dir), last.is_file)
    lines = stderr.strip().splitlines()
    assert lines[-1] == LINE, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr
    assert "please report" not in stderr
    assert last.is_file()  # nothing lost: the checkpoint to resume from is there
    # the same command resumes from it (and is stopped the same way)
    process = start_training(config_path, tiny_data, run_dir)
    seen: list[str] = []

    def resumed() -> bool:
        # the trainer logs "resumed from …/last.pt at epoch E, step S" once it has loaded it
        log = run_dir / "train.log"
        seen[:] = log.read_text().splitlines() if log.is_file() else []
        return any("resumed from" in line for line in seen)

    stderr = interrupt_when(process, resumed)
    assert [line for line in seen if "resumed from" in line][-1].count(str(last)) == 1
    assert stderr.strip().splitlines()[-1] == LINE
    assert process.returncode == INTERRUPTED_STATUS
