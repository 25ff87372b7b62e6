"""A preflight's go is tied to the training job's whole settings (issue 35): with the profiles'
``rerun-triggers: mtime`` (the local one's, as the Longleaf one's), an edit of the config that
Snakemake's own triggers do not see measures the preflight again before the run trains, from
runs of the real workflow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from workflow_runner import LOCAL_PROFILE, TEST_CONFIG, snakemake

pytestmark = [pytest.mark.slow, pytest.mark.minutes(1.7)]

TRAINED = "results/models/unet_2d/best.pt"


def write_config(path: Path, **unet_2d) -> Path:
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["models"] = {"unet_2d": unet_2d}
    # a CPU run measured in seconds: one step of each kind; no supply margin (two busy cores
    # cannot feed a step) and no spare job (the local profile has no retries)
    config["preflight"] = {
        "enabled": True,
        "warmup_steps": 1,
        "timed_steps": 1,
        "loader_batches": 1,
        "real_steps": 1,
        "allreduce_mb": 1,
        "min_supply_ratio": 0,
        "spare_jobs": 0,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def run(workdir: Path, config: Path, target: str, *extra: str) -> str:
    # (--configfile takes every word after it: the target comes first)
    result = snakemake(
        workdir, target, *extra, "--profile", str(LOCAL_PROFILE), "--configfile", str(config)
    )
    return result.stdout + result.stderr


def results(workdir: Path) -> dict[str, dict]:
    """Every preflight result by its key."""
    return {
        path.stem: json.loads(path.read_text())
        for path in (workdir / "results" / "preflight" / "unet_2d").glob("*.json")
    }


def test_an_edited_config_measures_the_preflight_again_under_mtime_triggers(tmp_path):
    profile = yaml.safe_load((LOCAL_PROFILE / "config.v8+.yaml").read_text())
    assert profile["rerun-triggers"] == "mtime"
    workdir = tmp_path / "work"
    workdir.mkdir()
    config = write_config(tmp_path / "config.yaml")
    run(workdir, config, "preflight")
    (first,) = results(workdir).values()
    assert first["verdict"] == "go", first["reasons"]
    assert first["settings"]["batch_per_gpu"] == 2
    assert (workdir / "results" / "preflight.md").is_file()

    # the case: a go measured at batch 2 must not pass a run at batch 6 (nor one of
    # another validation batch, a setting the old verdict did not judge at all)
    write_config(config, batch_per_gpu=6, validation_batch_size=8)
    log = run(workdir, config, TRAINED)
    measured = results(workdir)
    assert len(measured) == 2, log[-3000:]
    (second,) = (doc for key, doc in measured.items() if key != first["key"])
    assert second["settings"]["batch_per_gpu"] == 6
    assert second["settings"]["validation_batch_size"] == 8
    verdict = f"preflight results/preflight/unet_2d/{second['key']}.json: go"
    assert verdict in (workdir / "logs" / "train" / "unet_2d.log").read_text()
    # nothing lost: the first measurement stays beside the second
    assert first == measured[first["key"]]

    # a finished model is neither measured nor trained again by an edit (mtime)
    write_config(config, batch_per_gpu=4, validation_batch_size=8)
    assert "Nothing to be done" in run(workdir, config, TRAINED, "-n")
    # `snakemake preflight` measures the edited settings all the same
    dry = run(workdir, config, "preflight", "-n")
    assert "rule preflight_run:" in dry, dry[-3000:]
