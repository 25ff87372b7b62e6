"""Running the cellseg workflow on the test's private SLURM: the config overlays and the
``snakemake --profile`` call the SLURM workflow tests share (one file per long scenario, so that
pytest-xdist's ``--dist loadfile`` runs them on different workers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml
from cluster import SlurmCluster

REPO = Path(__file__).resolve().parents[2]
TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"


def overlay(tmp_path: Path, name: str, *, models: dict[str, dict], **sections: Any) -> Path:
    """The test config with these model entries (GPU counts, faults, budgets) and top-level
    sections replaced, written to ``tmp_path / f"{name}.yaml"``."""
    config = yaml.safe_load(TEST_CONFIG.read_text())
    config["models"] = models
    config.update(sections)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run_workflow(
    cluster: SlurmCluster,
    workdir: Path,
    config: Path,
    *targets: str,
    retries: int = 0,
    timeout: int = 1200,
) -> subprocess.CompletedProcess:
    """``snakemake --profile`` (the Longleaf profile plus the test overrides) from ``workdir``;
    every job is an sbatch submission to ``cluster``."""
    profile = cluster.make_test_profile(
        workdir / "profile", {"configfile": str(config), "retries": retries}
    )
    environment = cluster.env | {"PYTHONPATH": str(REPO / "src")}
    environment["PATH"] = f"{Path(sys.executable).parent}:{environment['PATH']}"
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "-d", str(workdir),
         "--profile", str(profile), *targets],
        cwd=workdir, env=environment, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
