"""Run the real workflow (real Snakemake, real jobs) in scratch directories."""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TEST_CONFIG = REPO / ".test" / "config" / "config.yaml"
LOCAL_PROFILE = REPO / "config" / "profiles" / "local"


def snakemake(
    workdir: Path,
    *arguments: str,
    snakefile: Path = REPO / "Snakefile",
    check: bool = True,
    timeout: int = 900,
) -> subprocess.CompletedProcess:
    """``snakemake -s SNAKEFILE -d WORKDIR ARGUMENTS…`` with this clone's package importable."""
    environment = os.environ | {"PYTHONPATH": str(REPO / "src")}
    environment["PATH"] = f"{Path(sys.executable).parent}:{environment['PATH']}"
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "-s", str(snakefile), "-d", str(workdir), *arguments],
        cwd=workdir,
        env=environment,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(arguments)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


def copy_workflow(destination: Path) -> Path:
    """A copy of the workflow definition (not the package), to edit scripts in a test."""
    destination.mkdir(parents=True, exist_ok=True)
    for name in ("Snakefile", "workflow", "config"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, destination / name)
        else:
            shutil.copy2(source, destination / name)
    return destination / "Snakefile"


SNAKEMAKE = Path(sys.executable).parent / "snakemake"


def make_clone(root: Path) -> Path:
    """This repository's working tree (tracked and untracked, not ignored files) copied to
    ``root``, as a fresh clone holds it: no results/, no .snakemake/."""
    listing = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for name in filter(None, listing.split("\0")):
        source = REPO / name
        if source.is_file():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, root / name)
    return root


def run_in_clone(clone: Path, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    """``snakemake ARGUMENTS…`` in the clone's root, the way the README runs it."""
    environment = os.environ | {"PYTHONPATH": str(clone / "src")}
    environment["PATH"] = f"{SNAKEMAKE.parent}:{environment['PATH']}"
    result = subprocess.run(
        [str(SNAKEMAKE), *arguments],
        cwd=clone,
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(arguments)} failed:\n{result.stderr[-4000:]}")
    return result


def planned_jobs(output: str, rule: str) -> dict[str, dict[str, str]]:
    """``{wildcards: resources}`` of every planned job of ``rule`` in a dry run's output
    (wildcards ``""`` for a rule without any)."""
    jobs = {}
    for block in re.split(r"\n(?=\[|rule |localrule )", output):
        if not re.match(rf"(local)?rule {rule}:", block.lstrip("\n")):
            continue
        wildcards = re.search(r"wildcards: (.*)", block)
        wildcards = wildcards.group(1) if wildcards else ""
        resources = re.search(r"resources: (.*)", block).group(1)
        jobs[wildcards] = dict(item.split("=", 1) for item in resources.split(", "))
    return jobs


def build_once(directory: Path, build: Callable[[Path], None]) -> Path:
    """``build(directory)`` once for every process that asks (the pytest-xdist workers of one
    session): the first caller builds while the others wait on ``{directory}.lock``, then all
    get ``directory``. A failed build is recorded in ``{directory}.failed`` and reported to the
    later callers instead of being tried again."""
    done = directory.with_name(directory.name + ".done")
    failed = directory.with_name(directory.name + ".failed")
    with directory.with_name(directory.name + ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if failed.exists():
            raise AssertionError(
                f"building {directory} failed in another worker:\n{failed.read_text()}"
            )
        if not done.exists():
            shutil.rmtree(directory, ignore_errors=True)
            try:
                build(directory)
            except BaseException as error:
                failed.write_text(f"{type(error).__name__}: {error}")
                raise
            done.touch()
    return directory
