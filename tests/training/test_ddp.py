"""DDP that survives faults: 2 ranks with gloo on CPU, under the real ``torchrun``."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from cellseg.training import EXIT_TIME_BUDGET

pytestmark = pytest.mark.minutes(2)  # order: tests/conftest.py

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]


def torchrun(config: dict, tiny_data, run_dir: Path, fault: str) -> subprocess.CompletedProcess:
    run_dir.mkdir(parents=True, exist_ok=True)
    config_path = run_dir.parent / f"{run_dir.name}.yaml"
    config_path.write_text(yaml.safe_dump(config))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(HERE / "ddp_faults.py"),
        str(config_path),
        str(run_dir),
        str(tiny_data["datasplit"]),
        str(tiny_data["class_frequencies"]),
        fault,
    ]
    environment = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=600)


def rank_weights(run_dir: Path) -> list[dict[str, torch.Tensor]]:
    return [torch.load(run_dir / f"rank{r}.pt") for r in (0, 1)]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_nonfinite_last_micro_batch_skips_the_update_on_every_rank(
    tiny_config, tiny_data, tmp_path
):
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"].update(grad_accum=2, max_epochs=1)
    result = torchrun(config, tiny_data, tmp_path / "run", "nan")
    assert result.returncode == 0, result.stderr[-3000:]
    first, second = rank_weights(tmp_path / "run")
    assert same(first, second), "the ranks diverged after a skipped synchronising backward"
    history = pd.read_csv(tmp_path / "run" / "history.csv")
    assert list(history["nonfinite_steps"]) == [1]  # rank 1's NaN, counted once


def test_a_stopped_run_resumes_from_the_checkpoint_written_at_the_stop(
    tiny_config, tiny_data, tmp_path
):
    config = copy.deepcopy(tiny_config)
    # no periodic last.pt before the stop: the only one is written while rank 1 waits for it
    config["training"]["defaults"].update(checkpoint_every_steps=100)
    straight = torchrun(config, tiny_data, tmp_path / "straight", "none")
    assert straight.returncode == 0, straight.stderr[-3000:]
    stopped = torchrun(config, tiny_data, tmp_path / "run", "stop")
    # a rank exits with the stop status (torchrun then ends the others and reports 1); the
    # others may be ended after the barrier, when the checkpoint is complete
    assert stopped.returncode != 0
    assert re.search(rf"exitcode\s*:\s*{EXIT_TIME_BUDGET}\b", stopped.stderr), stopped.stderr[
        -3000:
    ]
    resumed = torchrun(config, tiny_data, tmp_path / "run", "none")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    log = (tmp_path / "run" / "train.log").read_text()
    assert "SIGTERM received at epoch 0, step 2" in log
    assert "at epoch 0, step 2" in log.split("resumed from", 1)[1].splitlines()[0]
    # each rank resumed its own RNG (dropout differs between ranks): the same weights as
    # an uninterrupted run, on both ranks
    reference = rank_weights(tmp_path / "straight")[0]
    for weights in rank_weights(tmp_path / "run"):
        assert same(weights, reference)


def test_a_checkpoint_rank_0_cannot_write_stops_every_rank(tiny_config, tiny_data, tmp_path):
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"].update(checkpoint_every_steps=1)
    # without the shared outcome rank 1 would wait at the next collective for gloo's 30-minute
    # timeout, and torchrun would outlive this subprocess's 600 s limit
    failed = torchrun(config, tiny_data, tmp_path / "run", "diskfull")
    assert failed.returncode != 0
    assert "No space left on device" in failed.stderr
    # (rank 1's own line may be cut short: torchrun ends it as soon as rank 0 has failed)
    # the checkpoint of step 1 is intact and resumes
    resumed = torchrun(config, tiny_data, tmp_path / "run", "none")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in (tmp_path / "run" / "train.log").read_text()
