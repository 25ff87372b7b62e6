"""config/experiments/pretrained.yaml through the Longleaf profile (dry runs from a clone's
root): scratch x pretrained x seeds per model with the seed's resources, the weights file as an
input of the pretrained runs, and one line when it is missing."""

from __future__ import annotations

import re
import shutil

import yaml
from workflow_runner import REPO, planned_jobs
from workflow_runner import run_in_clone as run

LONGLEAF = "config/profiles/longleaf"
PRETRAINED = REPO / "config" / "experiments" / "pretrained.yaml"
SEED_PRESET = REPO / "config" / "experiments" / "l40s_comparison.yaml"


def plan(clone, *extra: str, check: bool = True):
    data = f"data={{'roots': ['{clone / 'cellmap'}']}}"
    return run(
        clone, "-n", "--profile", LONGLEAF, "--configfile", str(SEED_PRESET),
        "config/experiments/pretrained.yaml", "--config", data, *extra, check=check,
    )  # fmt: skip


def test_the_2d_entries_are_the_seed_presets():
    preset = yaml.safe_load(PRETRAINED.read_text())
    seed = yaml.safe_load(SEED_PRESET.read_text())
    for key, entry in preset["models"].items():
        if key in seed["models"]:
            assert {k: v for k, v in entry.items() if k != "init"} == seed["models"][key], key


def test_the_preset_says_which_models_really_start_pretrained():
    # the shares its comment states are the ones init: imagenet loads into the seed presets
    # (names and shapes of timm's encoders; nothing is downloaded)
    from cellseg.models import build_model
    from cellseg.training.init import MIN_PRETRAINED_FRACTION, imagenet_share

    text = PRETRAINED.read_text()
    stated = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\w+_2d) (\d+\.\d+) %", text)}
    assert set(stated) == {"resnet_2d", "swin_2d", "vit_2d"}, stated
    for key, percent in stated.items():
        name, dim = key.split("_")
        share = imagenet_share(build_model(name, dim, preset="seed"))
        assert round(100 * share, 2 if percent < 1 else 1) == percent, (key, share)
    assert f"below the {100 * MIN_PRETRAINED_FRACTION:.0f} % pretrained share" in text
    assert "resnet_2d 0.04 %" in text


def test_pretrained_preset_plans_scratch_and_pretrained_with_seed_resources(clone):
    preset = yaml.safe_load(PRETRAINED.read_text())
    weights = clone / preset["models"]["cosem_3d"]["init"]["checkpoint"]
    # a missing weights file: one line naming the run, the key and the fix
    shutil.rmtree(clone / "weights", ignore_errors=True)
    result = plan(clone, check=False)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if "init.checkpoint" in line]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "cosem_3d~pretrained" in lines[0] and "init: scratch" in lines[0]
    assert "does not exist" in lines[0]
    weights.parent.mkdir(parents=True)
    weights.write_bytes(b"downloaded weights stand-in")
    dry = plan(clone).stdout
    jobs = planned_jobs(dry, "train")
    assert set(jobs) == {
        f"run=cosem_3d~{variant}" + (f"~r{k}" if k else "")
        for variant in ("scratch", "pretrained")
        for k in range(3)
    }
    seed = yaml.safe_load(SEED_PRESET.read_text())
    entry = preset["models"]["cosem_3d"]
    for resources in jobs.values():
        assert int(resources["gpu"]) == entry["gpus"]
        assert int(resources["mem_mb"]) == entry["mem_mb"]
        assert int(resources["runtime"]) == seed["training"]["defaults"]["runtime_min"]
        assert resources["slurm_partition"] == "l40-gpu"
    # the weights file is an input of the pretrained runs only: a newer one retrains them
    inputs = {
        re.search(r"wildcards: (.*)", block).group(1): re.search(r"input: (.*)", block).group(1)
        for block in re.split(r"\n(?=\[|rule |localrule )", dry)
        if block.lstrip("\n").startswith("rule train:")
    }
    checkpoint = preset["models"]["cosem_3d"]["init"]["checkpoint"]
    assert all((checkpoint in inputs[run]) == ("~pretrained" in run) for run in inputs), inputs
    assert list(planned_jobs(dry, "study")) == [""]
    # the ImageNet runs, opted in
    opted = plan(clone, "select_models=[cosem_3d,resnet_2d,swin_2d,vit_2d]").stdout
    runs = set(planned_jobs(opted, "train"))
    assert len(runs) == 4 * 2 * 3 and "run=vit_2d~pretrained~r2" in runs
