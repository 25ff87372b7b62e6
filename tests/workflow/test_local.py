from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml
from workflow_runner import LOCAL_PROFILE, REPO, TEST_CONFIG, copy_workflow, snakemake

# order: tests/conftest.py; 4 before the failed-model rerun stopped after training (CPU halved)
pytestmark = pytest.mark.minutes(2.5)


def job_counts(dry_run_output: str) -> dict[str, int]:
    table = dry_run_output.split("Job stats:")[1].split("total")[0]
    return {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.MULTILINE)
    }


def test_data_rules_from_clean_results_then_nothing_to_do(tmp_path):
    target = "results/class_frequencies.json"
    snakemake(tmp_path, target, "--cores", "2", "--configfile", str(TEST_CONFIG))
    assert (tmp_path / target).is_file() and (tmp_path / "results/datasplit.csv").is_file()
    again = snakemake(tmp_path, target, "--cores", "2", "--configfile", str(TEST_CONFIG), "-n")
    assert "Nothing to be done" in again.stdout + again.stderr


def test_experiment_dry_run_lists_every_job(tmp_path):
    data_root = tmp_path / "cellmap"
    data_root.mkdir()
    result = snakemake(
        tmp_path,
        "-n",
        "--configfile",
        str(REPO / "config/experiments/l40s_comparison.yaml"),
        "--config",
        f"data={{'roots': ['{data_root}']}}",
    )
    counts = job_counts(result.stdout)
    assert counts["train"] == 8
    for rule in ("evaluate", "visualize"):
        assert counts.get(rule, 8) == 8
    assert counts.get("summary", 1) == 1


def test_unknown_key_and_missing_path_fail_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  defaults:\n    learning_rate: 0.1\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(bad), check=False)
    assert result.returncode != 0
    line = result.stderr.strip().splitlines()[-1]
    assert (
        line.startswith("cellseg: config error:")
        and str(bad) in line
        and "training.defaults.learning_rate" in line
    )
    missing = tmp_path / "missing.yaml"
    missing.write_text("data:\n  demo: {enabled: false}\n  roots: [/no/such/root]\n")
    result = snakemake(tmp_path, "-n", "--configfile", str(missing), check=False)
    assert (
        result.returncode != 0 and "data.roots entry /no/such/root does not exist" in result.stderr
    )


def test_rerun_only_the_failed_model_which_resumes(tmp_path):
    """A run in which one model's training fails, then the user's rerun: only that model
    trains again, resuming. Both runs stop after the training stage (``--until train``): the
    evaluation and figures of the models (about half the CPU of two runs) assert nothing here."""
    faulty = tmp_path / "faulty.yaml"
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["models"]["unet_3d"] = {"fail_after_steps": 2}
    faulty.write_text(yaml.safe_dump(config))
    first = snakemake(
        tmp_path,
        "--profile",
        str(LOCAL_PROFILE),
        "--configfile",
        str(faulty),
        "--keep-going",
        "--until",
        "train",
        check=False,
    )
    assert first.returncode != 0
    models = tmp_path / "results/models"
    assert (models / "unet_2d/best.pt").is_file()
    assert not (models / "unet_3d/best.pt").exists(), "a failed job leaves no declared output"
    assert (models / "unet_3d/checkpoints/last.pt").is_file(), "but its resumable state survives"
    finished = {p: p.stat().st_mtime_ns for p in (models / "unet_2d").glob("*.*")}

    second = snakemake(
        tmp_path, "--profile", str(LOCAL_PROFILE), "--configfile", str(TEST_CONFIG),
        "--until", "train",
    )  # fmt: skip
    log = second.stdout + second.stderr
    trained = set(re.findall(r"wildcards: run=(\S+)", log))
    assert "unet_3d" in trained and "unet_2d" not in trained
    assert "resumed from" in (tmp_path / "logs/train/unet_3d.log").read_text()
    assert {p: p.stat().st_mtime_ns for p in (models / "unet_2d").glob("*.*")} == finished
    history = pd.read_csv(models / "unet_3d/history.csv")
    assert list(history["epoch"]) == [0, 1]


def test_editing_a_script_does_not_retrain_with_the_profiles(finished_run, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(finished_run, workdir, symlinks=True)
    snakefile = copy_workflow(tmp_path / "workflow_copy")
    scripts = snakefile.parent / "workflow" / "scripts"
    for script in scripts.glob("*.py"):
        script.write_text(script.read_text() + "\n# edited\n")
    with_profile = snakemake(
        workdir,
        "-n",
        "--profile",
        str(LOCAL_PROFILE),
        "--configfile",
        str(TEST_CONFIG),
        snakefile=snakefile,
    )
    assert "Nothing to be done" in with_profile.stdout + with_profile.stderr
    # without the profile's rerun-triggers, Snakemake's default would retrain: the setting matters
    default = snakemake(workdir, "-n", "--configfile", str(TEST_CONFIG), snakefile=snakefile)
    assert job_counts(default.stdout).get("train", 0) == 2
    assert Path(workdir / "results/models/unet_2d/best.pt").is_file()
