"""``config/experiments/real_em.yaml`` through the ``snakemake`` command in a clone's root, as
users run it (issue 33): the workflow imports the public real EM of ``../shared/real_em`` (rule
``import_em``), splits, trains, evaluates and summarises it; the tests' preset makes the models
tiny."""

from __future__ import annotations

import csv
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml
from workflow_runner import REPO, make_clone, planned_jobs
from workflow_runner import run_in_clone as run

SHARED_REAL_EM = REPO.parent / "shared" / "real_em"
pytestmark = [
    pytest.mark.minutes(3),  # the serial-section run (tiny 3D UNet, one epoch) adds ~0.5
    pytest.mark.skipif(
        not SHARED_REAL_EM.is_dir(),
        reason=f"{SHARED_REAL_EM} absent (the shared real EM sits beside the clone, as in CI)",
    ),
]
PRESET = ("--configfile", "config/experiments/real_em.yaml")
SSTEM_PRESET = ("--configfile", "config/experiments/real_em_sstem.yaml")


def with_shared(clone: Path) -> Path:
    """``clone`` with ``../shared`` beside it, as a user's clone has it."""
    (clone.parent / "shared").symlink_to(REPO.parent / "shared")
    return clone


@pytest.fixture(scope="module")
def real_em_clone(clone: Path) -> Path:
    """The module's clone, with ``../shared`` beside it."""
    return with_shared(clone)


@pytest.fixture
def sstem_clone(tmp_path_factory) -> Path:
    """A clone of its own: the benchmark's run before trained the same tiny ``unet_3d`` with
    other settings, which a run in the same clone refuses to resume."""
    return with_shared(make_clone(tmp_path_factory.mktemp("sstem") / "cellseg"))


def run_to_the_end(clone: Path, *configfiles: str) -> None:
    """The workflow run to its end in ``clone`` on 2 local cores with ``configfiles``
    (``--configfile`` and files)."""
    result = run(clone, "--profile", "config/profiles/local", *configfiles, "--cores", "2")
    assert result.returncode == 0


def datasplit_rows(clone: Path) -> list[list[str]]:
    """The rows of the run's ``results/datasplit.csv``."""
    with (clone / "results/datasplit.csv").open(newline="") as handle:
        return list(csv.reader(handle))


def test_the_benchmark_plans_imports_and_ten_models(real_em_clone: Path) -> None:
    dry = run(real_em_clone, "-n", "--cores", "2", *PRESET).stdout
    assert set(planned_jobs(dry, "import_em")) == {
        "mapping=flyem_medulla_fibsem",
        "mapping=gala_fibsem_mini",
    }
    trained = {wildcards.removeprefix("run=") for wildcards in planned_jobs(dry, "train")}
    assert trained == {
        "unet_2d", "resnet_2d", "swin_2d", "vit_2d", "unet_3d", "resnet_3d", "swin_3d", "vit_3d",
        "resenc_3d", "mednext_3d",
    }  # fmt: skip
    assert "demo_data" not in dry


def test_imported_real_em_runs_to_a_summary(real_em_clone: Path) -> None:
    run_to_the_end(real_em_clone, *PRESET, ".test/config/config.yaml")
    for name in ("flyem_medulla_fibsem", "gala_fibsem_mini"):
        assert (real_em_clone / "results/imported" / name).is_dir()
    rows = datasplit_rows(real_em_clone)
    assert len(rows) == 31  # 27 flyem crops and 4 gala crops, nothing left out
    test_rows = [row for row in rows if row[0] == "test"]
    assert len(test_rows) == 8
    assert all(row[4].endswith("/[pm]") for row in rows)  # the only class the imports map
    summary = pd.read_csv(real_em_clone / "results/summary.csv")
    models = summary[summary["model"].isin(["unet_2d", "unet_3d"])]
    assert len(models) == 2
    assert models["dice_pm"].between(0, 1).all()
    # no instance class is annotated: the challenge score cannot be computed, not 0.000
    assert models["challenge_score"].isna().all()
    assert "cannot be computed" in (real_em_clone / "results/summary.md").read_text()


def test_the_serial_section_set_trains_and_scores_mito_at_50x8x8_nm(sstem_clone: Path) -> None:
    """config/experiments/real_em_sstem.yaml: the anisotropic serial sections (50 x 4 x 4 nm)
    import, split into the benchmark's 25 crops, train at ``[50, 8, 8]`` nm (few steps: the
    tests' layers: the tiny 3D UNet) and are evaluated with a score of the group ``mito``."""
    run_to_the_end(
        sstem_clone,
        *SSTEM_PRESET,
        ".test/config/config.yaml",
        ".test/config/real_em_cardona.yaml",
    )
    store = sstem_clone / "results/imported/cardona2010_sstem_benchmark/cardona2010_sstem"
    assert (store / "cardona2010_sstem.zarr/recon-1/labels/groundtruth/crop25/mito").is_dir()
    # nothing left out for want of a level near the models' voxels (it was, at 10 nm)
    assert "no scale level near" not in (sstem_clone / "logs/datasplit.log").read_text()
    rows = datasplit_rows(sstem_clone)
    assert len(rows) == 25 and sum(row[0] == "test" for row in rows) == 6
    assert all("cardona2010_sstem" in row[1] for row in rows)
    resolved = yaml.safe_load((sstem_clone / "results/config.resolved.yaml").read_text())
    assert resolved["config"]["data"]["resolution_nm"] == [50, 8, 8]
    assert resolved["models"]["unet_3d"]["resolution_nm"] == [50.0, 8.0, 8.0]
    checkpoint = torch.load(
        sstem_clone / "results/models/unet_3d/best.pt", map_location="cpu", weights_only=False
    )
    assert tuple(checkpoint["settings"]["resolution_nm"]) == (50.0, 8.0, 8.0)
    summary = pd.read_csv(sstem_clone / "results/summary.csv")
    (model,) = summary[summary["model"] == "unet_3d"].itertuples()
    assert 0 <= model.dice_pm <= 1 and 0 <= model.dice_mito <= 1
    assert "## Whole organelles (group labels)" in (sstem_clone / "results/summary.md").read_text()
