"""Ctrl-C of ``snakemake`` during a training (issue 35): the training job's log ends with one
line saying it was interrupted and how to resume, not a traceback "to report"; its checkpoint is
kept (the CLI case: tests/training/test_interrupt.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from workflow_runner import LOCAL_PROFILE, SNAKEMAKE, TEST_CONFIG

from cellseg.errors import interrupted_line


def test_ctrl_c_of_snakemake_during_a_training_says_interrupted_in_the_job_log(clone):
    longer = clone / "config" / "experiments" / "long_training.yaml"
    longer.write_text("training:\n  defaults: {max_epochs: 10000}\nmodels:\n  unet_2d: {}\n")
    environment = os.environ | {"PYTHONPATH": str(clone / "src")}
    environment["PATH"] = f"{SNAKEMAKE.parent}:{environment['PATH']}"
    # a terminal's Ctrl-C sends SIGINT to the whole foreground process group: snakemake and
    # its jobs; here snakemake leads a group of its own, which receives the same signal
    process = subprocess.Popen(
        [str(SNAKEMAKE), "--profile", str(LOCAL_PROFILE), "--cores", "1",
         "--configfile", str(TEST_CONFIG), str(longer)],
        cwd=clone, env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
        # a terminal's process group has SIGINT's default; a pytest-xdist worker ignores it,
        # which its children would inherit
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    last = clone / "results" / "models" / "unet_2d" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 500
    while not last.is_file():
        assert process.poll() is None, process.communicate()[0][-4000:]
        assert time.monotonic() < deadline, "the training never wrote a checkpoint"
        time.sleep(0.5)
    time.sleep(1.0)
    os.killpg(process.pid, signal.SIGINT)
    output, _ = process.communicate(timeout=120)
    assert process.returncode != 0, output[-4000:]
    log = (clone / "logs" / "train" / "unet_2d.log").read_text()
    assert log.strip().splitlines()[-1] == f"cellseg: {interrupted_line('snakemake')}", log[-4000:]
    assert "please report" not in log and "Traceback" not in log, log[-4000:]
    assert last.is_file()  # what the next run resumes from
