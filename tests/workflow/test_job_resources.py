"""Every job's request as the Longleaf profile plans it, from a clone's root through ``snakemake``.

Expected requests are computed by hand from the YAML files (not through cellseg.config.resources): a
training job asks for its model's settings, an evaluate job for ``resources.evaluate`` with
runtime ``startup_min + minutes_per_crop × test crops``, a figure job for
``resources.visualize`` without a GPU; a job with a GPU is queued on the GPU partition and every other one on
the CPU partition; bookkeeping runs locally.
"""

from __future__ import annotations

import yaml
from test_layering import expected_settings
from workflow_runner import REPO, planned_jobs
from workflow_runner import run_in_clone as run

LONGLEAF = "config/profiles/longleaf"
BASE = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SEED = yaml.safe_load((REPO / "config" / "experiments" / "l40s_comparison.yaml").read_text())
LOCAL_RULES = ("demo_data", "datasplit", "summary", "resolved_config", "all")
SUBMITTED = ("train", "evaluate", "visualize", "class_frequencies")
TEST_CROPS = 9


def merged(section: str, name: str, *layers: dict) -> dict:
    request: dict = {}
    for layer in layers:
        request.update(layer.get(section, {}).get(name, {}))
    return request


def placement(gpus: int, *layers: dict) -> tuple[str, str]:
    kind = "gpu" if gpus else "cpu"
    section = merged("resources", "_", *layers) or {}
    for layer in layers:
        section.update(
            {k: v for k, v in layer.get("resources", {}).items() if not isinstance(v, dict)}
        )
    return section[f"{kind}_partition"], section[f"{kind}_qos"]


def check(job: dict[str, str], partition: tuple[str, str], gpus: int, cpus, mem_mb, runtime):
    assert (job["slurm_partition"], job["qos"]) == partition
    assert int(job.get("gpu", 0)) == gpus
    assert int(job["cpus_per_task"]) == cpus
    assert int(job["mem_mb"]) == mem_mb
    assert int(job["runtime"]) == runtime


def planned_rules(output: str) -> set[str]:
    return {line.split()[1].rstrip(":") for line in output.splitlines() if line.startswith("rule ")}


def test_seed_experiment_jobs_ask_for_what_their_work_needs(clone):
    # a datasplit with 9 test crops already made: evaluation runtimes are known in the dry run
    datasplit = clone / "results" / "datasplit.csv"
    datasplit.parent.mkdir(exist_ok=True)
    splits = ["train"] * 20 + ["validate"] * 4 + ["test"] * TEST_CROPS
    datasplit.write_text(
        "".join(
            f"{s},x.zarr,recon-1/em/fibsem-uint8,x.zarr,crop{i}/[mito]\n"
            for i, s in enumerate(splits)
        )
    )
    data = f"data={{'roots': ['{clone / 'cellmap'}']}}"
    try:
        dry = run(clone, "--profile", LONGLEAF, "-n", "--config", data).stdout
    finally:
        datasplit.unlink()
    layers = (BASE, SEED)
    # the bookkeeping rules are localrules (the SLURM tests check that they are not submitted);
    # the seed preset runs each training run's preflight first
    # (and locally its table, results/preflight.md, and the go / no-go gate before each train job)
    local = {*LOCAL_RULES, "preflight_table", "preflight_verdict"}
    assert planned_rules(dry) - local == {*SUBMITTED, "preflight_run"}
    assert "preflight_verdict" in planned_rules(dry)
    assert "preflight_table" in planned_rules(dry)
    evaluate = merged("resources", "evaluate", *layers)
    visualize = merged("resources", "visualize", *layers)
    assert evaluate["gpus"] == 1 and "gpus" not in visualize
    jobs = {
        rule: planned_jobs(dry, rule)
        for rule in ("train", "evaluate", "visualize", "preflight_run")
    }
    # a preflight is named by its run and the key of its settings (results/preflight/{run}/{key})
    jobs["preflight_run"] = {
        wildcards.split(", key=")[0]: resources
        for wildcards, resources in jobs["preflight_run"].items()
    }
    preflight_min = {**BASE["preflight"], **SEED["preflight"]}["runtime_min"]
    for key in SEED["models"]:
        wildcards = f"run={key}"
        settings = expected_settings(*layers, model=key)
        gpu = placement(1, *layers)
        assert gpu == ("l40-gpu", "gpu_access")
        check(
            jobs["train"][wildcards], gpu, settings["gpus"], settings["cpus_per_task"],
            settings["mem_mb"], settings["runtime_min"],
        )  # fmt: skip
        # the preflight: the train job's node, for minutes
        check(
            jobs["preflight_run"][wildcards], gpu, settings["gpus"], settings["cpus_per_task"],
            settings["mem_mb"], preflight_min,
        )  # fmt: skip
        check(
            jobs["evaluate"][wildcards], gpu, 1, evaluate["cpus_per_task"], evaluate["mem_mb"],
            round(evaluate["startup_min"] + evaluate["minutes_per_crop"] * TEST_CROPS),
        )  # fmt: skip
        # the figures draw the slices evaluation kept: the CPU partition, whatever the model's GPUs
        check(
            jobs["visualize"][wildcards], placement(0, *layers), 0, visualize["cpus_per_task"],
            visualize["mem_mb"], visualize["runtime_min"],
        )  # fmt: skip
        # nothing but training asks for days
        assert int(jobs["evaluate"][wildcards]["runtime"]) < 24 * 60
        assert int(jobs["visualize"][wildcards]["runtime"]) < 24 * 60
    (frequencies,) = planned_jobs(dry, "class_frequencies").values()
    counts = merged("resources", "class_frequencies", *layers)
    check(
        frequencies, placement(0, *layers), 0, counts["cpus_per_task"], counts["mem_mb"],
        counts["runtime_min"],
    )  # fmt: skip
    assert placement(0, *layers) == ("general", "normal")


def test_demo_through_the_longleaf_profile_never_takes_a_gpu_node(clone):
    # the natural first try on a cluster: the demo config through the real profile
    dry = run(clone, "--profile", LONGLEAF, "-n", "--configfile", "config/config.yaml").stdout
    assert planned_rules(dry) - set(LOCAL_RULES) == set(SUBMITTED)
    cpu = placement(0, BASE)
    for rule in SUBMITTED:
        for wildcards, job in planned_jobs(dry, rule).items():
            assert (job["slurm_partition"], job["qos"]) == cpu, (rule, wildcards)
            assert int(job.get("gpu", 0)) == 0, (rule, wildcards)
            if rule != "evaluate":  # its runtime waits for the datasplit (<TBD> in a dry run)
                assert int(job["runtime"]) <= 60, (rule, wildcards)
            assert int(job["cpus_per_task"]) == 1, (rule, wildcards)
