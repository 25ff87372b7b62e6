"""The preflight: verdict and projections against hand-computed cases, the CLI on CPU ranks."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from cellseg.cli import main
from cellseg.config.settings import TrainSettings
from cellseg.errors import CellsegError
from cellseg.training.preflight_table import format_table
from cellseg.training.preflight_verdict import (
    FORMAT,
    PreflightConfig,
    RankFigures,
    Summary,
    check_preflight,
    decide,
    out_of_memory_document,
    project,
    result_document,
    write_verdict,
)

REPO = Path(__file__).resolve().parents[2]

# a seed-like run: 1000 micro-batches of 26 per epoch, accumulation 4, 2 GPUs, 11-day jobs
SEED = TrainSettings(
    model="unet",
    dim="2d",
    batch_per_gpu=26,
    gpus=2,
    grad_accum=4,
    max_epochs=200,
    iterations_per_epoch=1000,
    num_workers=15,
    cpus_per_task=32,
    cache_mb=512,
    runtime_min=15840,
    time_budget_margin_min=30,
    mem_mb=45000,
)


def rank(**figures) -> RankFigures:
    values = dict(
        rank=0,
        device="NVIDIA L40S",
        device_memory_mb=46068.0,
        peak_memory_mb=30000.0,
        peak_reserved_mb=32000.0,
        peak_rss_mb=10000.0,
        step_s=1.0,
        demand=104.0,
        supply=200.0,
        data_wait_fraction=0.01,
        real_step_s=1.0,
        context_mb=600.0,
    )
    return RankFigures(**(values | figures))


def test_projection_is_steps_times_step_time():
    # ceil(1000 / 4) = 250 steps of 1.2 s = 300 s per epoch; x 200 = 60000 s = 0.694 days;
    # one job holds 15840 - 30 = 15810 min = 948600 s: 1 job, no resubmission; 2 GPUs
    projection = project(1.2, SEED)
    assert projection.steps_per_epoch == 250
    assert projection.epoch_s == pytest.approx(300.0)
    assert projection.total_s == pytest.approx(60000.0)
    assert projection.days == pytest.approx(60000 / 86400)
    assert projection.attempt_s == pytest.approx(948600.0)
    assert (projection.attempts, projection.resubmissions) == (1, 0)
    assert projection.gpu_hours == pytest.approx(60000 / 3600 * 2)
    # 1001 micro-batches: the last, short window is a step too
    assert project(1.0, replace(SEED, iterations_per_epoch=1001)).steps_per_epoch == 251


def test_projection_counts_the_jobs_the_runtime_limit_implies():
    # 20 s per step: 250 x 20 x 200 = 1e6 s; 1e6 / 948600 = 1.05 -> 2 jobs, 1 resubmission
    projection = project(20.0, SEED)
    assert projection.total_s == pytest.approx(1e6)
    assert (projection.attempts, projection.resubmissions) == (2, 1)
    # the margin counts: 60-minute jobs with a 30-minute margin train 30 minutes each
    short = replace(SEED, runtime_min=60, max_epochs=1, iterations_per_epoch=4, grad_accum=1)
    assert project(900.0, short).attempts == 2  # 4 x 900 s = 60 min = two 30-minute jobs
    assert project(899.0, short).attempts == 2
    assert project(450.0, short).attempts == 1


def test_go_when_every_figure_is_within_its_limit():
    summary = Summary.of([rank(), rank(rank=1)], allreduce_gbps=20.0)
    verdict = decide(summary, project(1.0, SEED), SEED, PreflightConfig(), retries=2)
    assert verdict.go and verdict.reasons == () and verdict.text == "go"


def test_summary_takes_the_worst_rank_and_sums_host_memory():
    second = dict(peak_memory_mb=40000.0, peak_reserved_mb=41000.0, context_mb=700.0)
    ranks = [rank(), rank(rank=1, supply=90.0, step_s=1.5, demand=69.3, **second)]
    summary = Summary.of(ranks, None)
    assert summary.device == "2 x NVIDIA L40S"
    assert summary.peak_memory_mb == 40000.0
    # judged on what the device holds: the reserved peak plus the context
    assert summary.held_memory_mb == 41700.0
    assert summary.memory_fraction == pytest.approx(41700 / 46068)
    assert (summary.supply, summary.step_s, summary.demand) == (90.0, 1.5, 69.3)
    assert summary.host_peak_rss_mb == 20000.0
    assert summary.supply_ratio == pytest.approx(90 / 69.3)


def held(allocated: float, reserved: float, context_mb: float = 0.0) -> RankFigures:
    """A rank whose peaks are these fractions of the L40S's 46068 MB."""
    return rank(
        peak_memory_mb=allocated * 46068, peak_reserved_mb=reserved * 46068, context_mb=context_mb
    )


def test_memory_over_the_fraction_is_a_no_go_naming_the_batch_and_plan_batch():
    # the case: 0.88 allocated looked fine, but the allocator held 0.985 of the device
    summary = Summary.of([held(0.88, 0.985)], None)
    verdict = decide(summary, project(1.0, SEED), SEED, PreflightConfig(), retries=2)
    assert not verdict.go and len(verdict.reasons) == 1
    reason = verdict.reasons[0]
    assert reason.startswith("GPU memory held 44.3 of 45.0 GB (0.98 > preflight.max_memory_frac")
    assert "reserved peak 44.3 GB + CUDA context 0.0 GB, allocated peak 39.6 GB" in reason
    assert "models.unet_2d.batch_per_gpu (now 26" in reason
    assert "cellseg plan-batch --model unet --dim 2d --probe" in reason
    # the CUDA context counts: 0.87 reserved + 0.6 GB of context (0.013) is over 0.88
    context = Summary.of([held(0.8, 0.87, context_mb=600.0)], None)
    assert not decide(
        context, project(1.0, SEED), SEED, PreflightConfig(max_memory_fraction=0.88), 2
    ).go
    assert decide(context, project(1.0, SEED), SEED, PreflightConfig(), 2).go
    # just under the limit (10 % headroom) is a go; a higher limit lets it pass
    under = Summary.of([held(0.8, 0.899)], None)
    assert decide(under, project(1.0, SEED), SEED, PreflightConfig(), 2).go
    looser = PreflightConfig(max_memory_fraction=0.99)
    assert decide(summary, project(1.0, SEED), SEED, looser, 2).go


def test_cpu_ranks_have_no_device_memory_to_check():
    summary = Summary.of([rank(device="cpu", device_memory_mb=None, peak_memory_mb=None)], None)
    assert summary.memory_fraction is None
    assert decide(summary, project(1.0, SEED), SEED, PreflightConfig(), 2).go


def test_supply_under_the_margin_is_a_no_go_naming_workers_and_cpus():
    # demand 104 samples/s; 1.2 x 104 = 124.8 patches/s needed
    starved = Summary.of([rank(supply=124.0)], None)
    verdict = decide(starved, project(1.0, SEED), SEED, PreflightConfig(), retries=2)
    assert not verdict.go
    (reason,) = verdict.reasons
    assert "loader supply 124.0 patches/s per rank < preflight.min_supply_ratio 1.2" in reason
    assert "demand 104.0 samples/s per GPU" in reason
    assert "models.unet_2d.num_workers (now 15)" in reason and "cpus_per_task (now 32" in reason
    fed = Summary.of([rank(supply=125.0)], None)
    assert decide(fed, project(1.0, SEED), SEED, PreflightConfig(), retries=2).go


def test_more_jobs_than_retries_allow_is_a_no_go_naming_runtime_and_retries():
    # 20 s per step: 2 jobs; retries 2 allow 3 jobs, one kept spare for a node failure
    projection = project(20.0, SEED)
    assert projection.attempts == 2
    assert decide(Summary.of([rank()], None), projection, SEED, PreflightConfig(), 2).go
    # retries 1 allow exactly the 2 jobs it needs: nothing left for a node failure
    verdict = decide(Summary.of([rank()], None), projection, SEED, PreflightConfig(), 1)
    (reason,) = verdict.reasons
    assert "projected 11.6 days to max_epochs 200" in reason
    assert "need 2 jobs of runtime_min 15840 - time_budget_margin_min 30 min" in reason
    assert (
        "more than the 1 that retries 1 allow with preflight.spare_jobs 1 kept for a node failure"
        in reason
    )
    assert "models.unet_2d.runtime_min" in reason
    # without retries there is nothing to spare: the one job must fit
    (reason,) = decide(Summary.of([rank()], None), projection, SEED, PreflightConfig(), 0).reasons
    assert "more than the 1 that retries 0 allow: raise" in reason
    assert decide(Summary.of([rank()], None), project(1.0, SEED), SEED, PreflightConfig(), 0).go
    # spare_jobs 0 takes the margin away
    assert decide(Summary.of([rank()], None), projection, SEED, PreflightConfig(spare_jobs=0), 1).go


def test_every_failed_check_is_a_reason():
    summary = Summary.of([rank(peak_reserved_mb=46000.0, supply=1.0)], None)
    verdict = decide(summary, project(20.0, SEED), SEED, PreflightConfig(), 0)
    assert len(verdict.reasons) == 3
    assert verdict.text.startswith("no-go: GPU memory held")


def document(tmp_path: Path, **figures) -> Path:
    doc = result_document("unet_2d", SEED, PreflightConfig(), 2, [rank(**figures)], None)
    path = tmp_path / "unet_2d.json"
    path.write_text(json.dumps(doc))
    return path


def test_result_document_projects_from_the_slower_step(tmp_path):
    doc = json.loads(document(tmp_path, step_s=1.0, real_step_s=1.5).read_text())
    assert doc["format"] == FORMAT and doc["verdict"] == "go"
    assert doc["projection"]["step_s"] == 1.5
    assert doc["projection"]["total_s"] == pytest.approx(250 * 1.5 * 200)


def test_a_train_job_refuses_a_no_go_unless_not_enforced(tmp_path):
    assert check_preflight(document(tmp_path), enforce=True).endswith(": go")
    nogo = document(tmp_path, supply=1.0)
    with pytest.raises(CellsegError) as error:
        check_preflight(nogo, enforce=True)
    message = str(error.value)
    assert "\n" not in message and "preflight no-go for unet_2d" in message
    assert "num_workers" in message and "preflight.enforce: false" in message
    line = check_preflight(nogo, enforce=False)
    assert line.startswith("warning: preflight no-go") and "training anyway" in line
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(CellsegError, match=r"bad\.json: not a cellseg-preflight-1 document"):
        check_preflight(tmp_path / "bad.json", enforce=True)


def test_the_gate_writes_the_line_the_train_job_logs_and_nothing_for_a_no_go(tmp_path):
    verdict = tmp_path / "unet_2d.verdict"
    line = write_verdict(document(tmp_path), verdict, enforce=True)
    assert line.endswith(": go") and verdict.read_text() == line + "\n"
    nogo = document(tmp_path, supply=1.0)
    verdict.unlink()
    with pytest.raises(CellsegError, match="preflight no-go for unet_2d"):
        write_verdict(nogo, verdict, enforce=True)
    assert list(tmp_path.iterdir()) == [nogo], "no verdict (nor a temporary) for a no-go"
    write_verdict(nogo, verdict, enforce=False)
    assert verdict.read_text().startswith("warning: preflight no-go for unet_2d")


def test_a_preflight_of_other_settings_is_refused_naming_the_changes(tmp_path):
    go = document(tmp_path)
    pre = PreflightConfig()
    assert check_preflight(go, True, SEED, 2, pre).endswith(": go")
    # any setting counts: the architecture, the preset, init and validation_batch_size too
    other = replace(
        SEED, batch_per_gpu=6, architecture={"depth": 3}, validation_batch_size=8, init="imagenet"
    )
    with pytest.raises(CellsegError) as error:
        check_preflight(go, True, other, 2, pre)
    message = str(error.value)
    assert "\n" not in message
    assert message.startswith(
        f"preflight {go} of unet_2d was measured with other settings (changed: "
        "architecture.depth, batch_per_gpu, init, validation_batch_size); delete it and run the "
        "preflight again"
    )
    # so do the retries the job count was judged against and the thresholds
    with pytest.raises(CellsegError, match=r"changed: retries 2 -> 1\)"):
        check_preflight(go, True, SEED, 1, pre)
    with pytest.raises(CellsegError, match="changed: preflight thresholds"):
        check_preflight(go, True, SEED, 2, PreflightConfig(spare_jobs=0))
    line = check_preflight(go, False, other, 2, pre)
    assert line.startswith("warning: preflight") and "training anyway" in line


def test_table_has_a_row_per_run_with_its_verdict(tmp_path):
    go = json.loads(document(tmp_path).read_text())
    cpu = result_document(
        "unet_3d",
        replace(SEED, dim="3d"),
        PreflightConfig(),
        2,
        [rank(device="cpu", device_memory_mb=None, peak_memory_mb=None, supply=1.0)],
        None,
    )
    table = format_table([go, cpu])
    lines = table.splitlines()
    assert lines[0] == "# Preflight" and "no-go: unet_3d." in table
    row = next(line for line in lines if line.startswith("| unet_2d"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1] == "1 x NVIDIA L40S"
    assert cells[2] == "0.71 (31.8 of 45.0 GB; allocated 29.3)"
    assert cells[4] == "104"
    assert cells[5] == "1.92 (200 / 104)"
    assert cells[6] == "1%"
    assert cells[8:] == ["go", "-"]
    row = next(line for line in lines if line.startswith("| unet_3d"))
    assert "n/a (host RSS 9.8 of 43.9 GB)" in row and "| no-go |" in row


def test_out_of_memory_is_a_no_go_naming_the_batch(tmp_path):
    doc = out_of_memory_document(
        "vit_3d", replace(SEED, model="vit", dim="3d"), PreflightConfig(), 2,
        "CUDA out of memory. Tried to allocate 2.00 GiB",
    )  # fmt: skip
    path = tmp_path / "vit_3d.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(CellsegError) as error:
        check_preflight(path, enforce=True)
    assert "out of GPU memory in the preflight's steps at batch_per_gpu 26" in str(error.value)
    assert "cellseg plan-batch --model vit --dim 3d --probe" in str(error.value)
    row = format_table([doc]).splitlines()[-1]
    assert row.startswith("| vit_3d |") and "| no-go | out of GPU memory" in row


def test_unknown_preflight_key_is_one_line():
    with pytest.raises(CellsegError, match="preflight: unknown key"):
        PreflightConfig.from_config({"preflight": {"warmup": 1}})


# --- the command on CPU ranks -----------------------------------------------------------------


def preflight_config(tiny_config: dict, **models) -> dict:
    config = tiny_config
    config["preflight"] = {
        "warmup_steps": 1,
        "timed_steps": 2,
        "loader_batches": 2,
        "real_steps": 2,
        "allreduce_mb": 1,
    }
    config["models"] = models
    return config


def test_cli_measures_one_cpu_rank(tiny_config, tiny_data, tmp_path, capsys):
    config = preflight_config(tiny_config, unet_2d={"num_workers": 1})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "preflight" / "unet_2d.json"
    status = main(
        ["preflight", "--config", str(path), "--run", "unet_2d", "--out", str(out),
         "--datasplit", str(tiny_data["datasplit"]),
         "--class-frequencies", str(tiny_data["class_frequencies"]), "--ranks", "here"]
    )  # fmt: skip
    assert status == 0
    doc = json.loads(out.read_text())
    (only,) = doc["ranks"]
    assert only["device"] == "cpu" and only["device_memory_mb"] is None
    assert only["peak_rss_mb"] > 100  # torch alone is more
    assert only["step_s"] > 0 and only["supply"] > 0 and 0 <= only["data_wait_fraction"] < 1
    assert only["demand"] == pytest.approx(2 * 1 / only["step_s"])  # batch 2, accumulation 1
    assert doc["summary"]["allreduce_gbps"] is None
    # 2 epochs of 4 micro-batches: 8 steps of the slower step
    step = max(only["step_s"], only["real_step_s"])
    assert doc["projection"]["total_s"] == pytest.approx(8 * step)
    assert doc["verdict"] in ("go", "no-go")
    assert "| unet_2d | 1 x cpu | n/a (host RSS" in capsys.readouterr().out
    # the scratch directory (the trainer's run directory) is gone; only the result stays
    assert sorted(p.name for p in out.parent.iterdir()) == ["unet_2d.json"]


def test_cli_launches_two_gloo_ranks_through_torchrun(tiny_config, tiny_data, tmp_path):
    # two "GPUs" run as CPU processes only because the config says so (run_on_cpu)
    config = preflight_config(tiny_config, unet_2d={"gpus": 2, "grad_accum": 2, "run_on_cpu": True})
    config["preflight"]["min_supply_ratio"] = 1.0e9  # no loader can: a no-go, exit 0
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    out = tmp_path / "unet_2d.json"
    environment = os.environ | {"PYTHONPATH": str(REPO / "src"), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "cellseg", "preflight", "--config", str(path), "--run", "unet_2d",
         "--out", str(out), "--datasplit", str(tiny_data["datasplit"]),
         "--class-frequencies", str(tiny_data["class_frequencies"]), "--retries", "2"],
        capture_output=True, text=True, env=environment, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "--nproc_per_node=2" in result.stderr
    doc = json.loads(out.read_text())
    assert [r["rank"] for r in doc["ranks"]] == [0, 1]
    assert all(r["device"] == "cpu" for r in doc["ranks"])
    assert doc["summary"]["ranks"] == 2 and doc["summary"]["device"] == "2 x cpu"
    assert doc["summary"]["allreduce_gbps"] > 0
    # batch 2 x accumulation 2 per step
    assert doc["summary"]["demand"] == pytest.approx(4 / doc["summary"]["step_s"])
    assert doc["retries"] == 2
    assert doc["verdict"] == "no-go"
    assert any("preflight.min_supply_ratio 1e+09" in r for r in doc["reasons"])
    assert math.isclose(doc["projection"]["gpu_hours"], doc["projection"]["total_s"] / 3600 * 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="tests the machine without CUDA")
def test_cli_on_the_config_layers_stops_a_gpu_run_without_cuda_in_one_line(tmp_path, capsys):
    # the seed preset over the base, as the workflow layers them; vit_3d asks for 2 GPUs
    layers = [REPO / "config/config.yaml", REPO / "config/experiments/l40s_comparison.yaml"]
    out = tmp_path / "vit_3d.json"
    status = main(
        ["preflight", "--config", *map(str, layers), "--run", "vit_3d", "--ranks", "here",
         "--out", str(out)]
    )  # fmt: skip
    error = capsys.readouterr().err
    assert status == 2 and not out.exists()
    assert error.startswith("cellseg preflight: error: vit_3d: gpus: 2") and error.count("\n") == 1
    assert "run_on_cpu" in error
    assert list(tmp_path.iterdir()) == []  # the scratch directory is gone
