"""The strong-baselines presets (issue 26): the seed experiment with ``resenc_3d`` and
``mednext_3d`` through the real Longleaf profile, and the demo preset, from a clone's root
through the ``snakemake`` command line as users run them (dry runs)."""

from __future__ import annotations

import yaml
from workflow_runner import REPO, planned_jobs
from workflow_runner import run_in_clone as run

LONGLEAF = "config/profiles/longleaf"
EXPERIMENTS = REPO / "config" / "experiments"
BASE = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
SEED = yaml.safe_load((EXPERIMENTS / "l40s_comparison.yaml").read_text())
STRONG = yaml.safe_load((EXPERIMENTS / "strong_baselines.yaml").read_text())
STRONG_DEMO = yaml.safe_load((EXPERIMENTS / "strong_baselines_demo.yaml").read_text())
NEW = ("resenc_3d", "mednext_3d")


def test_presets_add_the_two_to_the_unchanged_eight():
    # `models` replaces the whole list, so the presets repeat the eight: they must not drift
    assert list(STRONG["models"]) == [*SEED["models"], *NEW]
    assert {k: STRONG["models"][k] for k in SEED["models"]} == SEED["models"]
    assert list(STRONG_DEMO["models"]) == [*BASE["models"], *NEW]
    assert {k: STRONG_DEMO["models"][k] for k in BASE["models"]} == BASE["models"]


def test_strong_baselines_on_longleaf_ask_for_their_resources(clone):
    data = f"data={{'roots': ['{clone / 'cellmap'}']}}"
    dry = run(
        clone, "-n", "--profile", LONGLEAF, "--configfile",
        "config/experiments/l40s_comparison.yaml", "config/experiments/strong_baselines.yaml",
        "--config", data,
    ).stdout  # fmt: skip
    train = planned_jobs(dry, "train")
    assert set(train) == {f"run={key}" for key in STRONG["models"]}
    assert len(train) == 10
    defaults = {**BASE["training"]["defaults"], **SEED["training"]["defaults"]}
    for key, entry in STRONG["models"].items():
        job = train[f"run={key}"]
        assert job["slurm_partition"] == "l40-gpu" and job["qos"] == "gpu_access", key
        assert int(job["gpu"]) == entry["gpus"], key
        assert int(job["mem_mb"]) == entry["mem_mb"], key
        assert int(job["cpus_per_task"]) == defaults["cpus_per_task"], key
        assert int(job["runtime"]) == defaults["runtime_min"], key
    # each new model is evaluated and figured like the eight, and preflighted first
    for rule in ("evaluate", "visualize", "preflight_run"):
        # (a preflight is also named by the key of its settings: run=…, key=…)
        planned = {wildcards.split(", key=")[0] for wildcards in planned_jobs(dry, rule)}
        assert {f"run={key}" for key in NEW} <= planned, rule


def test_default_demo_is_unchanged_and_the_demo_preset_adds_them(clone):
    default = planned_jobs(run(clone, "-n", "--cores", "2").stdout, "train")
    assert set(default) == {f"run={key}" for key in BASE["models"]}
    dry = run(
        clone, "-n", "--cores", "2", "--configfile", "config/experiments/strong_baselines_demo.yaml"
    ).stdout
    assert set(planned_jobs(dry, "train")) == {f"run={key}" for key in STRONG_DEMO["models"]}
    assert {f"run={key}" for key in NEW} <= set(planned_jobs(dry, "evaluate"))
