"""Config mistakes caught when Snakemake plans the DAG (``snakemake -n`` from a clone's root, as
the README runs it), in one line naming the layer file that holds the bad key (issue 22,
section 5): a model no registry has, a model key given twice in a YAML file, a 2D patch shape
with three values, and a bad key in one of several presets."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from workflow_runner import run_in_clone as run

from cellseg.config.layers import MODEL_NAMES


def config_error(clone: Path, *layers: tuple[str, str]) -> str:
    """Write each ``(name, text)`` as config/experiments/NAME, plan with all of them as
    ``--configfile`` in order, and return the one ``cellseg: config error`` line."""
    arguments = ["--configfile"]  # one option, several files (a repeated option keeps the last)
    for name, text in layers:
        (clone / "config" / "experiments" / name).write_text(text)
        arguments.append(f"config/experiments/{name}")
    result = run(clone, "-n", *arguments, check=False)
    assert result.returncode != 0, result.stdout[-2000:]
    lines = [line for line in result.stderr.splitlines() if "config error" in line]
    assert len(lines) == 1 and lines[0].startswith("cellseg: config error: "), result.stderr
    # layer files are named by their absolute paths (as Snakemake hands them over)
    return lines[0].removeprefix("cellseg: config error: ").replace(f"{clone}/", "")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "models:\n  segformer_2d: {}\n",
            "models.segformer_2d: no model named 'segformer' is registered",
        ),
        (
            "models:\n  unet_2d: {lr: 0.1}\n  vit_2d: {}\n  unet_2d: {max_epochs: 2}\n",
            ":4: key unet_2d appears twice in the same mapping",
        ),
        (
            "models:\n  unet_2d: {patch_shape: [8, 32, 32]}\n",
            "models.unet_2d.patch_shape = [8, 32, 32] has 3 values, but unet_2d is a 2d model",
        ),
        (
            "training:\n  2d: {patch_shape: [16, 32, 32]}\nmodels:\n  resnet_2d: {}\n",
            "training.2d.patch_shape = [16, 32, 32] has 3 values, but resnet_2d is a 2d model",
        ),
    ],
    ids=["unregistered", "duplicate", "patch-3-values", "patch-from-training-2d"],
)
def test_planning_refuses_naming_the_file_and_the_key(clone, text, expected):
    line = config_error(clone, ("mistake.yaml", text))
    assert line.startswith("config/experiments/mistake.yaml") and expected in line, line


def test_a_config_error_names_the_layer_that_holds_the_bad_key(clone):
    first = ("first.yaml", "training:\n  defaults: {lr: fast}\n")
    second = ("second.yaml", "evaluation:\n  overlap: 0.5\n")
    line = config_error(clone, first, second)
    assert line.startswith("config/experiments/first.yaml: training.defaults.lr: "), line
    assert "second.yaml" not in line and "config.yaml," not in line
    # an unknown key in the second layer names the second file only
    line = config_error(clone, ("first.yaml", "replicates: 1\n"), ("second.yaml", "modles: {}\n"))
    assert line.startswith("config/experiments/second.yaml: unknown key modles"), line
    # a later layer's models list replaces the earlier one: its entry is the one that counts
    line = config_error(
        clone,
        ("first.yaml", "models:\n  unet_2d: {patch_shape: [8, 32, 32]}\n"),
        ("second.yaml", "models:\n  unet_2d: {batch_per_gpu: -1}\n"),
    )
    assert line.startswith("config/experiments/second.yaml: models.unet_2d.batch_per_gpu"), line


def test_the_planning_time_model_names_are_the_registry_s():
    from cellseg.models import list_models

    assert set(MODEL_NAMES) == {name for name, _ in list_models()}


def test_layer_holding_names_the_file_or_the_command_line(tmp_path):
    from cellseg.config.layers import layer_holding

    base, preset = tmp_path / "config.yaml", tmp_path / "preset.yaml"
    base.write_text("training:\n  defaults: {lr: 0.1}\nmodels:\n  unet_2d: {lr: 0.2}\n")
    preset.write_text("training:\n  defaults: {max_epochs: 3}\nmodels:\n  vit_2d: {}\n")
    layers = [base, preset]
    assert layer_holding(["training", "defaults", "lr"], layers) == str(base)
    assert layer_holding(["training", "defaults", "max_epochs"], layers) == str(preset)
    # the preset's models replaced the base's: unet_2d's entry is nobody's file any more
    assert layer_holding(["models", "unet_2d", "lr"], layers) == "--config"
    assert layer_holding(["evaluation", "overlap"], layers) == "--config"
    assert layer_holding([], layers) == f"{base}, {preset}"


def test_a_base_config_indented_with_a_tab_is_one_line_naming_the_line(clone):
    """Snakemake's loader says only "Config file is not valid JSON or YAML"; the workflow reads
    config/config.yaml the way cellseg reads every layer first, and names the file and line."""
    base = clone / "config" / "config.yaml"
    text = base.read_text()
    lines = text.splitlines(keepends=True)
    number = next(i for i, line in enumerate(lines, start=1) if line.startswith("  "))
    lines[number - 1] = "\t" + lines[number - 1][2:]
    base.write_text("".join(lines))
    try:
        result = run(clone, "-n", check=False)
    finally:
        base.write_text(text)
    assert result.returncode != 0
    assert [line for line in result.stderr.splitlines() if "config error" in line] == [
        f"cellseg: config error: {base}:{number}: this line is indented with a tab, but YAML "
        "indents with spaces only: replace the tab with spaces (as many as the line's level "
        "needs)"
    ], result.stderr


def test_a_configfile_indented_with_a_tab_is_one_line_naming_the_file_and_line(clone):
    """Snakemake reads a --configfile before any workflow code runs and says only "Config file
    is not valid JSON or YAML" (no file, no line); scripts/env.sh, which the README runs every
    command through, reads each --configfile first the way cellseg reads every layer."""
    preset = clone / "config" / "experiments" / "tabbed.yaml"
    text = "training:\n  defaults:\n\tmax_epochs: 3\n"
    preset.write_text(text)
    arguments = ["-n", "--configfile", "config/experiments/tabbed.yaml"]
    # the README's command: bash scripts/env.sh snakemake …, in the environment of these tests
    environment = os.environ | {"CELLSEG_VENV": sys.prefix}
    result = subprocess.run(
        ["bash", "scripts/env.sh", "snakemake", *arguments],
        cwd=clone, env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "cellseg: config error: config/experiments/tabbed.yaml:3: this line is indented with a "
        "tab, but YAML indents with spaces only: replace the tab with spaces (as many as the "
        "line's level needs)"
    ], result.stderr
    assert preset.read_text() == text and not (clone / ".snakemake").exists()
    # snakemake on its own says its own line, before any code of the workflow runs
    direct = run(clone, *arguments, check=False)
    assert direct.returncode == 1
    said = direct.stdout + direct.stderr  # Snakemake prints its errors to stdout
    assert "Config file is not valid JSON or YAML. In case of YAML, make sure" in said, said
    # the same preset with spaces plans as before
    preset.write_text(text.replace("\t", "    "))
    result = subprocess.run(
        ["bash", "scripts/env.sh", "snakemake", *arguments],
        cwd=clone, env=environment, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "config error" not in result.stderr


def test_env_sh_finds_every_configfile_of_a_snakemake_command_line(tmp_path, capsys):
    from cellseg.cli import check_snakemake_configfiles

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("training:\n  defaults: {max_epochs: 3}\n")
    bad.write_text("models:\n\tunet_2d: {}\n")
    assert check_snakemake_configfiles(["-n", "--configfile", str(good), "--cores", "2"]) == 0
    for argv in (
        ["--configfile", str(good), str(bad), "-n"],
        ["--configfile", str(good), "--cores", "1", "--configfiles", str(bad)],
        [f"--configfile={bad}"],
    ):
        assert check_snakemake_configfiles(argv) == 1, argv
        assert capsys.readouterr().err.splitlines() == [
            f"cellseg: config error: {bad}:2: this line is indented with a tab, but YAML indents "
            "with spaces only: replace the tab with spaces (as many as the line's level needs)"
        ]
    # a missing file is Snakemake's to report ("not found"); --config is another option
    assert check_snakemake_configfiles(["--configfile", "nowhere.yaml", "--config", "a=1"]) == 0
