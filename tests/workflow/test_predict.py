"""The prediction rules as a clone's root plans them: block jobs per run and dataset with the
config's requests, a study's variant and replicate runs (and ``best`` naming one), and the config
errors of ``predict.models``.

Expected requests are read by hand from config/config.yaml (not through cellseg.config.resources): a
block job asks for ``predict.resources`` (no GPU for the demo's 0-GPU models, so the CPU
partition), the pyramid job for ``predict.pyramid_resources`` on the CPU partition; init and the
target rule run locally.
"""

from __future__ import annotations

import yaml
from workflow_runner import REPO, planned_jobs
from workflow_runner import run_in_clone as run

BASE = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def test_predict_all_plans_block_jobs_with_config_resources(clone):
    predict = BASE["predict"]
    override = (
        "predict={'models': ['unet_3d', 'resnet_2d'], 'datasets': ['jrc_demo-1', 'jrc_demo-2'],"
        " 'jobs': 3, 'resources': {'gpus': 1, 'cpus_per_task': 2, 'mem_mb': 5000,"
        " 'runtime_min': 45}}"
    )
    dry = run(clone, "-n", "predict_all", "--config", override).stdout
    blocks = planned_jobs(dry, "predict_blocks")
    expected = {
        f"run={key}, dataset={dataset}, part={part}"
        for key in ("unet_3d", "resnet_2d")
        for dataset in ("jrc_demo-1", "jrc_demo-2")
        for part in range(3)
    }
    assert set(blocks) == expected
    for job in blocks.values():
        # the demo's models train on 0 GPUs: no GPU, CPU partition, whatever resources.gpus says
        assert int(job.get("gpu", 0)) == 0
        assert (job["slurm_partition"], job["qos"]) == (
            BASE["resources"]["cpu_partition"],
            BASE["resources"]["cpu_qos"],
        )
        assert (int(job["cpus_per_task"]), int(job["mem_mb"]), int(job["runtime"])) == (
            2,
            5000,
            45,
        )
    pyramids = planned_jobs(dry, "predict_pyramid")
    assert len(pyramids) == 4
    request = predict["pyramid_resources"]
    for job in pyramids.values():
        assert int(job["mem_mb"]) == request["mem_mb"]
        assert int(job["runtime"]) == request["runtime_min"]
        assert job["slurm_partition"] == BASE["resources"]["cpu_partition"]
    assert len(planned_jobs(dry, "predict_init")) == 4
    assert "results/predictions/unet_3d/jrc_demo-2.zarr" in dry
    # the default config: its one model on its one dataset, `jobs` block jobs
    dry = run(clone, "-n", "predict_all").stdout
    assert set(planned_jobs(dry, "predict_blocks")) == {
        f"run={predict['models'][0]}, dataset={predict['datasets'][0]}, part={part}"
        for part in range(predict["jobs"])
    }
    # prediction is not part of the default target
    assert "predict_blocks" not in run(clone, "-n").stdout


def test_predict_models_errors_name_the_key(clone):
    missing = run(clone, "-n", "predict_all", "--config", "predict={'models': 'best'}", check=False)
    assert missing.returncode != 0
    assert "predict.models: best needs results/summary.csv" in missing.stdout + missing.stderr
    summary = clone / "results" / "summary.csv"
    summary.parent.mkdir(exist_ok=True)
    summary.write_text("model,rank\nbaseline,\nunet_3d,2\nunet_2d,1\n")
    try:
        dry = run(clone, "-n", "predict_all", "--config", "predict={'models': 'best'}").stdout
    finally:
        summary.unlink()
    assert set(planned_jobs(dry, "predict_pyramid")) == {"run=unet_2d, dataset=jrc_demo-1"}
    # a name that is neither a run nor a model: one line naming the key, the name, the valid ones
    # (checked when predict_all is planned: another target does not care)
    override = "predict={'models': ['nope_2d']}"
    assert run(clone, "-n", "--config", override).returncode == 0
    unknown = run(clone, "-n", "predict_all", "--config", override, check=False)
    assert unknown.returncode != 0
    lines = [line for line in unknown.stderr.splitlines() if "predict.models" in line]
    assert len(lines) == 1, unknown.stderr
    assert lines[0].startswith("cellseg: config error: ")
    assert "predict.models: 'nope_2d' is not a run or model of this config" in lines[0]
    assert "valid: unet_2d, resnet_2d, swin_2d" in lines[0]


TVERSKY = "config/experiments/tversky.yaml"


def test_predict_all_takes_a_study_s_variant_and_replicate_runs(clone):
    study = yaml.safe_load((REPO / TVERSKY).read_text())
    variant = list(study["variants"])[-1]  # a0.4-b0.6
    chosen = [f"resnet_2d~{variant}~r1", f"unet_2d~{variant}", "resnet_2d"]
    override = f"predict={{'models': {chosen}, 'datasets': ['jrc_demo-1'], 'jobs': 1}}"
    dry = run(clone, "-n", "predict_all", "--configfile", TVERSKY, "--config", override).stdout
    assert set(planned_jobs(dry, "predict_pyramid")) == {
        f"run={name}, dataset=jrc_demo-1" for name in chosen
    }
    for name in chosen:
        assert f"results/predictions/{name}/jrc_demo-1.zarr" in dry
    # each from its own run's best.pt: the study's runs, and the model key's variant-free run
    # (which the study does not train itself)
    assert set(planned_jobs(dry, "train")) == {f"run={name}" for name in chosen}
    # best: the summary's rank-1 row, which in a study is a run name
    summary = clone / "results" / "summary.csv"
    summary.parent.mkdir(exist_ok=True)
    summary.write_text(f"model,rank\nbaseline,\nunet_2d~{variant},2\nresnet_2d~{variant}~r1,1\n")
    try:
        best = run(
            clone, "-n", "predict_all", "--configfile", TVERSKY,
            "--config", "predict={'models': 'best', 'datasets': ['jrc_demo-1'], 'jobs': 1}",
        ).stdout  # fmt: skip
    finally:
        summary.unlink()
    assert set(planned_jobs(best, "predict_pyramid")) == {
        f"run=resnet_2d~{variant}~r1, dataset=jrc_demo-1"
    }
    # a variant the study does not configure is refused, naming the study's runs
    wrong = run(
        clone, "-n", "predict_all", "--configfile", TVERSKY,
        "--config", "predict={'models': ['resnet_2d~a9-b9']}", check=False,
    )  # fmt: skip
    assert wrong.returncode != 0
    assert "predict.models: 'resnet_2d~a9-b9' is not a run or model" in wrong.stderr
    assert f"resnet_2d~{variant}~r1" in wrong.stderr
