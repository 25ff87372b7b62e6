"""Config layering as users meet it: from a clone's root, through the ``snakemake`` command, with
the real profiles and presets (``configfile: "config/config.yaml"`` is found there, so the base
and the presets really are layered by Snakemake and then by ``common.smk``)."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from workflow_runner import REPO, planned_jobs
from workflow_runner import run_in_clone as run

LONGLEAF = "config/profiles/longleaf"
SEED_PRESET = REPO / "config" / "experiments" / "l40s_comparison.yaml"


def resolved(clone: Path, *arguments: str) -> dict:
    """The models' settings as the workflow resolves them (``results/config.resolved.yaml``)."""
    target = clone / "results" / "config.resolved.yaml"
    target.unlink(missing_ok=True)
    run(clone, "--cores", "1", "results/config.resolved.yaml", *arguments)
    return yaml.safe_load(target.read_text())


def expected_settings(*layers: dict, model: str) -> dict:
    """A model's settings computed by hand from config files: the last layer naming ``models``
    decides the list; training.defaults, then training.{dim}, then the model's entry."""
    dim = model.rsplit("_", 1)[1]
    settings: dict = {}
    for section in ("defaults", dim):
        for layer in layers:
            settings.update(copy.deepcopy(layer.get("training", {}).get(section, {})))
    entries = [layer["models"] for layer in layers if "models" in layer][-1]
    settings.update(entries[model] or {})
    return settings


def test_longleaf_profile_runs_the_seed_preset_exactly(clone):
    data = f"data={{'roots': ['{clone / 'cellmap'}']}}"
    dry = run(clone, "--profile", LONGLEAF, "-n", "--config", data)
    base = yaml.safe_load((clone / "config" / "config.yaml").read_text())
    preset = yaml.safe_load(SEED_PRESET.read_text())
    jobs = planned_jobs(dry.stdout, "train")
    assert sorted(jobs) == sorted(f"run={k}" for k in preset["models"])
    # the profile has no executor to run this one local rule on here: only where jobs run changes
    settings = resolved(clone, "--profile", LONGLEAF, "--executor", "local", "--config", data)
    assert settings["config_files"] == [
        str(clone / "config" / "config.yaml"),
        str(clone / "config" / "experiments" / "l40s_comparison.yaml"),
    ]
    assert sorted(settings["models"]) == sorted(preset["models"])
    for key, actual in settings["models"].items():
        expected = expected_settings(base, preset, model=key)
        assert {k: actual[k] for k in expected} == expected, key
        resources = jobs[f"run={key}"]
        assert int(resources["mem_mb"]) == expected["mem_mb"]
        assert int(resources["runtime"]) == expected["runtime_min"]
        assert int(resources["cpus_per_task"]) == expected["cpus_per_task"]
        assert int(resources["gpu"]) == expected["gpus"]
    # what the demo's base entry had for swin_3d (32x32x64, batch 1, lr 2e-3) does not survive
    swin = settings["models"]["swin_3d"]
    assert swin["patch_shape"] == [32, 256, 256] and swin["batch_per_gpu"] == 2
    assert swin["lr"] == 5.0e-5 and swin["gpus"] == 4 and swin["preset"] == "seed"


def test_a_preset_naming_two_models_trains_exactly_those(clone):
    preset = {
        "training": {"defaults": {"max_epochs": 3}, "2d": {"lr": 0.5}},
        "models": {"resnet_2d": {"lr": 0.02}, "vit_3d": {"batch_per_gpu": 3}},
    }
    path = clone / "config" / "experiments" / "two_models.yaml"
    path.write_text(yaml.safe_dump(preset))
    dry = run(clone, "-n", "--configfile", "config/experiments/two_models.yaml")
    assert sorted(planned_jobs(dry.stdout, "train")) == [
        "run=resnet_2d",
        "run=vit_3d",
    ]
    settings = resolved(clone, "--configfile", "config/experiments/two_models.yaml")
    base = yaml.safe_load((clone / "config" / "config.yaml").read_text())
    for key in ("resnet_2d", "vit_3d"):
        expected = expected_settings(base, preset, model=key)
        assert {k: settings["models"][key][k] for k in expected} == expected
    assert settings["models"]["resnet_2d"]["lr"] == 0.02  # its entry beats training.2d
    assert settings["models"]["vit_3d"]["max_epochs"] == 3


def test_later_configfiles_and_config_overrides_win(clone):
    first = {"models": {"unet_2d": {"lr": 0.1}, "unet_3d": {}}}
    second = {"training": {"defaults": {"max_epochs": 9}}, "models": {"unet_3d": {"lr": 0.3}}}
    for name, layer in (("first", first), ("second", second)):
        (clone / f"{name}.yaml").write_text(yaml.safe_dump(layer))
    settings = resolved(
        clone,
        "--configfile",
        "first.yaml",
        "second.yaml",
        "--config",
        "training={'3d': {'batch_per_gpu': 7}}",
    )
    # the second file's models replace the first's list; --config merges on top of both
    assert list(settings["models"]) == ["unet_3d"]
    unet = settings["models"]["unet_3d"]
    assert unet["lr"] == 0.3 and unet["max_epochs"] == 9 and unet["batch_per_gpu"] == 7
    dry = run(clone, "-n", "--configfile", "first.yaml", "second.yaml")
    assert list(planned_jobs(dry.stdout, "train")) == ["run=unet_3d"]
