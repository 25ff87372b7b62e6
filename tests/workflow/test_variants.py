"""Studies as DAG axes, through the ``snakemake`` command in a clone's root: the presets' job
counts and resources in dry runs, and that adding replicates or variants never retrains a
finished run."""

from __future__ import annotations

import pytest
import yaml
from workflow_runner import REPO, TEST_CONFIG, planned_jobs
from workflow_runner import run_in_clone as run

pytestmark = pytest.mark.minutes(1.5)  # order: tests/conftest.py

LONGLEAF = "config/profiles/longleaf"
CLASS_WEIGHTING = REPO / "config" / "experiments" / "class_weighting.yaml"
SEED_PRESET = REPO / "config" / "experiments" / "l40s_comparison.yaml"


def expected_runs(preset: dict) -> set[str]:
    return {
        f"run={model}~{variant}" + (f"~r{k}" if k else "")
        for model in preset["select_models"]
        for variant in preset["variants"]
        for k in range(preset["replicates"])
    }


def test_class_weighting_on_the_demo_plans_every_model_variant_and_seed(clone):
    preset = yaml.safe_load(CLASS_WEIGHTING.read_text())
    dry = run(clone, "-n", "--configfile", "config/experiments/class_weighting.yaml").stdout
    runs = expected_runs(preset)
    assert len(runs) == 2 * 7 * 2
    assert set(planned_jobs(dry, "train")) == runs
    assert set(planned_jobs(dry, "evaluate")) == runs
    # figures of replicate 0 of each model and variant; one study and one summary
    assert set(planned_jobs(dry, "visualize")) == {r for r in runs if "~r" not in r}
    assert list(planned_jobs(dry, "study")) == [""] and list(planned_jobs(dry, "summary")) == [""]


def test_class_weighting_on_longleaf_asks_for_the_seed_resources(clone):
    preset = yaml.safe_load(CLASS_WEIGHTING.read_text())
    seed = yaml.safe_load(SEED_PRESET.read_text())
    data = f"data={{'roots': ['{clone / 'cellmap'}']}}"
    dry = run(
        clone, "-n", "--profile", LONGLEAF, "--configfile", str(SEED_PRESET),
        "config/experiments/class_weighting.yaml", "--config", data,
    ).stdout  # fmt: skip
    jobs = planned_jobs(dry, "train")
    assert set(jobs) == expected_runs(preset)
    for wildcards, resources in jobs.items():
        model = wildcards.removeprefix("run=").split("~")[0]
        entry = seed["models"][model]
        assert int(resources["mem_mb"]) == entry["mem_mb"], wildcards
        assert int(resources["gpu"]) == entry["gpus"]
        assert int(resources["runtime"]) == seed["training"]["defaults"]["runtime_min"]
        assert int(resources["cpus_per_task"]) == seed["training"]["defaults"]["cpus_per_task"]
        assert resources["slurm_partition"] == "l40-gpu"


def test_adding_replicates_or_variants_never_retrains_a_finished_run(clone):
    config = ("--configfile", str(TEST_CONFIG))
    study = clone / "config" / "experiments" / "tiny_study.yaml"
    study.write_text(
        yaml.safe_dump({"select_models": ["unet_2d"], "variants": {"v1": {"loss": {"tau": 0.5}}}})
    )
    layered = (*config, str(study))
    # the default run and one variant's run, trained to the end
    run(clone, "--cores", "2", "results/models/unet_2d/best.pt", *config)
    run(clone, "--cores", "2", "results/models/unet_2d~v1/best.pt", *layered)
    finished = {
        path: path.stat().st_mtime_ns
        for name in ("unet_2d", "unet_2d~v1")
        for path in (clone / "results" / "models" / name).glob("*.*")
    }
    # 1 -> 2 replicates of the default config: only replicate 1 trains
    dry = run(clone, "-n", "--cores", "2", *config, "--config", "replicates=2").stdout
    assert set(planned_jobs(dry, "train")) == {"run=unet_2d~r1", "run=unet_3d", "run=unet_3d~r1"}
    # another variant and another replicate: v1 is not retrained
    study.write_text(
        yaml.safe_dump(
            {"select_models": ["unet_2d"], "replicates": 2,
             "variants": {"v1": {"loss": {"tau": 0.5}}, "v2": {"training": {"lr": 0.02}}}}
        )
    )  # fmt: skip
    dry = run(clone, "-n", "--cores", "2", *layered).stdout
    assert set(planned_jobs(dry, "train")) == {
        "run=unet_2d~v1~r1",
        "run=unet_2d~v2",
        "run=unet_2d~v2~r1",
    }
    # the variant's run trained with its loss and the seed; the files were not touched
    saved = yaml.safe_load((clone / "results/models/unet_2d~v1/workflow_config.yaml").read_text())
    assert saved["loss"]["tau"] == 0.5 and "variants" not in saved
    assert {p: p.stat().st_mtime_ns for p in finished} == finished
