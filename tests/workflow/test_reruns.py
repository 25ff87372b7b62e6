"""What a re-run may reuse, through the ``snakemake`` command in a clone's root with Snakemake's
default rerun triggers (README command 1 uses no profile): a changed setting must not cost a
finished model, changed data must never be trained on top of, and a re-run's reason is one
short line (issue 22, section 5: rules take digests of the config as ``params``, not the config
itself, and editing one model's entry still reruns that model only).

The tests share one clone, a copy of the session's finished run (the tiny config run to the end),
and run in order: each later test starts from what the earlier ones trained, which is what keeps
this file's cost to the trainings its changes cause."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from workflow_runner import TEST_CONFIG, planned_jobs
from workflow_runner import run_in_clone as run

pytestmark = pytest.mark.minutes(4)  # order: tests/conftest.py

BEST = "results/models/unet_2d/best.pt"


@pytest.fixture(scope="module")
def clone(finished_clone: Path) -> Path:
    return finished_clone


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


REASON_TARGETS = (
    "results/models/unet_2d/best.pt",
    "results/models/unet_3d/best.pt",
    "results/config.resolved.yaml",
)


def test_editing_one_model_reruns_it_alone_with_a_short_reason(clone):
    # both models are trained (the finished run; unet_2d restored by the test above)
    config = ("--configfile", str(TEST_CONFIG))
    run(clone, "--cores", "2", *REASON_TARGETS, *config)
    edited = "models={'unet_2d': {'lr': 0.5}, 'unet_3d': {}}"
    dry = run(clone, "-n", *REASON_TARGETS, *config, "--config", edited).stdout
    assert sorted(planned_jobs(dry, "train")) == ["run=unet_2d"], dry[-3000:]
    assert "resolved_config" in dry
    reasons = re.findall(r"^\s*reason: (.*)$", dry, re.MULTILINE)
    changed = [reason for reason in reasons if "Params have changed" in reason]
    assert len(changed) == 2, reasons  # unet_2d's train job and the config record
    # digests before and after: no settings or config printed (it was ~1-10 KB a job)
    assert all(len(reason) < 300 for reason in changed), changed
    assert not any("lr" in reason or "patch_shape" in reason for reason in changed), changed


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
