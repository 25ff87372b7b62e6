"""What a re-run may reuse, through the ``snakemake`` command in a clone's root with Snakemake's
default rerun triggers (README command 1 uses no profile): a changed setting must not cost a
finished model, and changed data must never be trained on top of."""

from __future__ import annotations

import torch
from workflow_runner import TEST_CONFIG
from workflow_runner import run_in_clone as run

BEST = "results/models/unet_2d/best.pt"


def test_a_refused_setting_change_keeps_the_finished_run_restorable(clone):
    config = ("--configfile", str(TEST_CONFIG))
    run(clone, "--cores", "2", BEST, *config)
    original = torch.load(clone / BEST, weights_only=False)
    # Snakemake's default triggers see loss.tau change, delete the outputs and rerun the job;
    # the trainer refuses the other settings and says how to get the finished run back
    changed = run(
        clone, "--cores", "2", BEST, *config, "--config", "loss={'tau': 0.5}", check=False
    )
    assert changed.returncode != 0 and not (clone / BEST).exists()
    log = (clone / "logs/train/unet_2d.log").read_text()
    assert "changed: loss.tau); to keep that run, set them back and run again" in log
    # set back: the run resumes from its kept checkpoints and writes the same outputs again
    restored = run(clone, "--cores", "2", BEST, *config)
    assert "resumed from" in (clone / "logs/train/unet_2d.log").read_text(), restored.stderr
    again = torch.load(clone / BEST, weights_only=False)
    assert again["summary"]["epochs_run"] == original["summary"]["epochs_run"]
    assert all(torch.equal(original["model"][k], v) for k, v in again["model"].items())


def test_another_split_trains_anew_and_never_resumes(clone):
    config = ("--configfile", str(TEST_CONFIG))
    run(clone, "--cores", "2", BEST, *config)
    split = (clone / "results/datasplit.csv").read_text()
    run(clone, "--cores", "2", BEST, *config, "--config", "data={'split_seed': 7}")
    assert (clone / "results/datasplit.csv").read_text() != split, "the seed must move crops"
    log = (clone / "logs/train/unet_2d.log").read_text()
    assert "was trained on other data" in log and "training anew" in log
    assert "resumed from" not in log
    assert torch.load(clone / BEST, weights_only=False)["summary"]["epochs_run"] == 2
