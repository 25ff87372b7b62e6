"""The preflight end to end: the Longleaf profile on the real single-node SLURM.

``snakemake --profile config/profiles/longleaf preflight`` submits one preflight job per run
with that run's training request and writes ``results/preflight.md``, and nothing else; then the
training target lets the go run train and stops the no-go run at its local gate with its one
line, before its train job is queued (also on the profile's retry), while the other run finishes. Only what a 2-CPU node without a GPU forces is overridden: the
"GPUs" run as gloo CPU ranks (``run_on_cpu``), a short preflight, and no supply margin (two
cores cannot feed a step on the CPU; the supply check is tested by hand-computed cases in
tests/training/test_preflight.py). The no-go is injected: 10^5 epochs of unet_3d cannot fit
one 10-minute job.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cluster import option, sbatch_calls
from workflow_runs import overlay, run_workflow

pytestmark = [pytest.mark.slow, pytest.mark.slurm, pytest.mark.minutes(2.5)]

MODELS = {
    # two "GPUs": torchrun starts two gloo ranks inside the one job
    "unet_2d": {"gpus": 2, "mem_mb": 4000, "run_on_cpu": True},
    # the fault: far more epochs than runtime_min 10 (8 after the margin) x (retries 1 + 1 -
    # spare_jobs 1) hold
    "unet_3d": {"gpus": 1, "mem_mb": 3000, "run_on_cpu": True, "max_epochs": 100000},
}


def config_file(tmp_path: Path) -> Path:
    preflight = {
        "enabled": True,
        "warmup_steps": 1,
        "timed_steps": 2,
        "loader_batches": 2,
        "real_steps": 2,
        "allreduce_mb": 1,
        "min_supply_ratio": 0,
    }
    return overlay(tmp_path, "preflight", models=MODELS, preflight=preflight)


def submitted(calls: dict[str, list[str]], rule: str, key: str) -> list[str]:
    """The sbatch argv of ``rule``'s job of run ``key`` (a preflight's name also holds the key
    of its settings: ``preflight_run_wildcards_{run}_{key}``)."""
    (argv,) = [argv for name, argv in calls.items() if name.startswith(f"{rule}_wildcards_{key}")]
    return argv


def measured(results: Path, key: str) -> tuple[Path, dict]:
    """The run's one preflight result, results/preflight/{run}/{settings key}.json."""
    (path,) = (results / "preflight" / key).glob("*.json")
    return path, json.loads(path.read_text())


def test_preflight_decides_which_runs_train(slurm_cluster, tmp_path):
    config = config_file(tmp_path)
    # retries 1: the profile's retries reach the preflight jobs (their own Snakemake has 0)
    result = run_workflow(slurm_cluster, tmp_path, config, "preflight", retries=1)
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-6000:] + slurm_cluster.log_tail()
    calls = sbatch_calls(log)
    # only the preflights (and the class count they read) were submitted; the table is local
    assert {name.split("_wildcards_")[0] for name in calls} == {
        "preflight_run", "class_frequencies",
    }, sorted(calls)  # fmt: skip
    for key, settings in MODELS.items():
        argv = submitted(calls, "preflight_run", key)
        # the train job's node: its partition, GPUs and memory; the preflight's minutes
        assert (option(argv, "-p"), option(argv, "--qos")) == ("l40-gpu", "gpu_access")
        assert option(argv, "--gpus") == str(settings["gpus"])
        assert option(argv, "--mem") == str(settings["mem_mb"])
        assert option(argv, "-t") == "30"
    results = tmp_path / "results"
    go_path, go = measured(results, "unet_2d")
    _, nogo = measured(results, "unet_3d")
    assert go_path.stem == go["key"]
    assert go["verdict"] == "go", go["reasons"]
    assert [r["rank"] for r in go["ranks"]] == [0, 1] and go["summary"]["allreduce_gbps"] > 0
    assert go["slurm_job_id"] and go["retries"] == 1
    assert nogo["verdict"] == "no-go"
    (reason,) = nogo["reasons"]
    assert "max_epochs 100000" in reason and "models.unet_3d.runtime_min" in reason
    assert (
        "more than the 1 that retries 1 allow with preflight.spare_jobs 1 kept for a node failure"
        in reason
    )
    table = (results / "preflight.md").read_text()
    assert "| unet_2d | 2 x cpu | n/a (host RSS" in table
    assert "| no-go | projected" in table
    assert not (results / "models").exists(), "`preflight` trains nothing"

    targets = [f"results/models/{key}/best.pt" for key in MODELS]
    result = run_workflow(slurm_cluster, tmp_path, config, *targets, "--keep-going", retries=1)
    log = result.stdout + result.stderr
    assert result.returncode != 0, "the no-go run's gate fails"
    calls = sbatch_calls(log)
    # the preflights are not run again, the gates run locally, and the no-go run's train job is
    # never queued, not even for the profile's retry: one train job is submitted, the go run's
    assert set(calls) == {"train_wildcards_unet_2d"}, sorted(calls)
    assert (results / "models/unet_2d/best.pt").is_file(), log[-6000:]
    line = f"preflight results/preflight/unet_2d/{go['key']}.json: go"
    assert go_path.with_suffix(".verdict").read_text() == line + "\n"
    train_log = (tmp_path / "logs/train/unet_2d.log").read_text()
    assert line in train_log
    # the 2-GPU job is one task: its script started one torchrun, with two ranks (the plugin
    # >= 2.8 submits gpu: 2 without --ntasks-per-gpu; issue 459 ran the script once per GPU)
    train_call = calls["train_wildcards_unet_2d"]
    assert option(train_call, "--gpus") == "2"
    assert not any(token.startswith(("--ntasks", "--ntasks-per-gpu")) for token in train_call)
    assert train_log.count("torch.distributed.run --standalone --nproc_per_node=2") == 1
    run_log = (results / "models/unet_2d/train.log").read_text()
    assert run_log.count("settings (config hash") == 1
    assert "attempt 1: settings" in run_log and "2 process(es) on cpu" in run_log
    assert not (results / "models/unet_3d/best.pt").exists()
    assert not list((results / "preflight/unet_3d").glob("*.verdict"))
    assert not (tmp_path / "logs/train/unet_3d.log").exists()
    (verdict_log,) = (tmp_path / "logs/preflight_verdict/unet_3d").glob("*.log")
    last = verdict_log.read_text().strip().splitlines()[-1]
    assert last.startswith("cellseg: error: preflight no-go for unet_3d")
    assert "preflight.enforce: false" in last
    # the profile's retry ran the gate again where Snakemake runs, in seconds
    assert log.count("Error in rule preflight_verdict") == 2, log[-6000:]
