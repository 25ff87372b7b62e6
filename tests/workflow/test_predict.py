"""The prediction rules as a clone's root plans them: block jobs per dataset with the config's
requests, and the config errors of ``predict.models``.

Expected requests are read by hand from config/config.yaml (not through cellseg.resources): a
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
        f"model={key.rsplit('_', 1)[0]}, dim={key[-2:]}, dataset={dataset}, part={part}"
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
        f"model={predict['models'][0].rsplit('_', 1)[0]}, dim={predict['models'][0][-2:]}, "
        f"dataset={predict['datasets'][0]}, part={part}"
        for part in range(predict["jobs"])
    }
    # prediction is not part of the default target
    assert "predict_blocks" not in run(clone, "-n").stdout


def test_predict_models_errors_name_the_key(clone):
    missing = run(clone, "-n", "predict_all", "--config", "predict={'models': 'best'}", check=False)
    assert missing.returncode != 0
    assert "best needs results/summary.csv" in missing.stdout + missing.stderr
    summary = clone / "results" / "summary.csv"
    summary.parent.mkdir(exist_ok=True)
    summary.write_text("model,rank\nbaseline,\nunet_3d,2\nunet_2d,1\n")
    try:
        dry = run(clone, "-n", "predict_all", "--config", "predict={'models': 'best'}").stdout
    finally:
        summary.unlink()
    assert {w.split(",")[0] for w in planned_jobs(dry, "predict_pyramid")} == {"model=unet"}
    assert "dim=2d" in next(iter(planned_jobs(dry, "predict_pyramid")))
    unknown = run(clone, "-n", "predict_all", "--config", "predict={'models': ['nope_2d']}",
                  check=False)  # fmt: skip
    assert unknown.returncode != 0
    assert "nope_2d is not among the configured models" in unknown.stdout + unknown.stderr
