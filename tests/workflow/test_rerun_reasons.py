"""A re-run's reason is one short line (issue 22, section 5): rules take digests of the config,
not the config itself, as ``params`` (Snakemake prints a changed param before and after), and
editing one model's entry still reruns that model only. Through ``snakemake`` in a clone's root
with Snakemake's default rerun triggers."""

from __future__ import annotations

import re

from workflow_runner import TEST_CONFIG, planned_jobs
from workflow_runner import run_in_clone as run

TARGETS = (
    "results/models/unet_2d/best.pt",
    "results/models/unet_3d/best.pt",
    "results/config.resolved.yaml",
)


def test_editing_one_model_reruns_it_alone_with_a_short_reason(clone):
    config = ("--configfile", str(TEST_CONFIG))
    run(clone, "--cores", "2", *TARGETS, *config)
    edited = "models={'unet_2d': {'lr': 0.5}, 'unet_3d': {}}"
    dry = run(clone, "-n", *TARGETS, *config, "--config", edited).stdout
    assert sorted(planned_jobs(dry, "train")) == ["run=unet_2d"], dry[-3000:]
    assert "resolved_config" in dry
    reasons = re.findall(r"^\s*reason: (.*)$", dry, re.MULTILINE)
    changed = [reason for reason in reasons if "Params have changed" in reason]
    assert len(changed) == 2, reasons  # unet_2d's train job and the config record
    # digests before and after: no settings or config printed (it was ~1-10 KB a job)
    assert all(len(reason) < 300 for reason in changed), changed
    assert not any("lr" in reason or "patch_shape" in reason for reason in changed), changed
