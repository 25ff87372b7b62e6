"""Software deployment: the `--sdm conda` environment and what the workflow needs to run.

CI reaches no conda channel, so `snakemake --sdm conda` itself is not run here. What such a
run relies on is: the environment file lists the package's dependencies, Snakemake plans the
DAG without the ML libraries (it runs outside the jobs' environment), and jobs run the
package next to the Snakefile when it is not installed (the environment has only its
dependencies). Each is checked for real below.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from workflow_runner import REPO, TEST_CONFIG

pytestmark = pytest.mark.minutes(1)  # order: tests/conftest.py

CONDA_ENV = REPO / "workflow" / "envs" / "cellseg.yaml"
ML_LIBRARIES = (
    "torch",
    "torchvision",
    "monai",
    "timm",
    "zarr",
    "matplotlib",
    "scipy",
    "tensorboard",
)


def conda_env() -> tuple[str, list[str]]:
    """(the python spec, the pip requirement lines) of workflow/envs/cellseg.yaml."""
    dependencies = yaml.safe_load(CONDA_ENV.read_text())["dependencies"]
    python = next(d for d in dependencies if isinstance(d, str) and d.startswith("python"))
    pip = next(d["pip"] for d in dependencies if isinstance(d, dict))
    return python, pip


def test_conda_env_installs_exactly_the_package_dependencies():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    _, pip = conda_env()
    assert sorted(map(str, map(Requirement, pip))) == sorted(
        map(str, map(Requirement, project["dependencies"]))
    )


def test_conda_env_python_is_one_the_package_supports():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    python, _ = conda_env()
    version = python.split("=")[-1].strip()
    assert SpecifierSet(project["requires-python"]).contains(version), python


def run_python(python: Path | str, *arguments: str, cwd: Path, env: dict[str, str]):
    return subprocess.run(
        [str(python), *arguments], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_dag_is_planned_without_the_ml_libraries(tmp_path):
    # `--sdm conda` runs Snakemake itself in the user's own environment: importing torch, MONAI,
    # timm, zarr or matplotlib while planning would fail there. Each is made unimportable.
    blocked = tmp_path / "blocked"
    blocked.mkdir()
    for name in ML_LIBRARIES:
        (blocked / f"{name}.py").write_text(f"raise ImportError('{name} is blocked by the test')\n")
    workdir = tmp_path / "work"
    workdir.mkdir()
    environment = os.environ | {"PYTHONPATH": f"{blocked}{os.pathsep}{REPO / 'src'}"}
    probe = run_python(sys.executable, "-c", "import torch", cwd=workdir, env=environment)
    assert "blocked by the test" in probe.stderr
    result = run_python(
        sys.executable,
        *("-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)),
        *("-n", "--configfile", str(TEST_CONFIG)),
        cwd=workdir,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train" in result.stdout and "summary" in result.stdout


def test_jobs_run_the_package_next_to_the_snakefile_when_it_is_not_installed(tmp_path):
    # an environment with the dependencies but not cellseg, as a `--sdm conda` job has: the
    # base interpreter with this venv's site-packages on PYTHONPATH (no .pth file is read
    # from a PYTHONPATH entry, so the venv's editable install of cellseg stays invisible)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = bin_dir / "python"
    python.symlink_to(sys._base_executable)
    environment = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    environment["PATH"] = f"{bin_dir}{os.pathsep}/usr/bin{os.pathsep}/bin"
    environment["PYTHONPATH"] = sysconfig.get_paths()["purelib"]
    workdir = tmp_path / "work"
    workdir.mkdir()
    probe = run_python(
        python, "-c", "import torch, snakemake, cellseg", cwd=workdir, env=environment
    )
    assert "No module named 'cellseg'" in probe.stderr, probe.stderr[-2000:]

    # a shell rule (the data stage) and a script rule (training), then the model's outputs
    target = "results/models/unet_2d/train_summary.json"
    result = run_python(
        python,
        *("-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir)),
        *("--configfile", str(TEST_CONFIG), "--cores", "1", target),
        cwd=workdir,
        env=environment,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (workdir / target).is_file()
    assert (workdir / "results/class_frequencies.json").is_file()
