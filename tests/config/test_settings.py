"""Runs of a study (cellseg.config.settings.Run, runs, run_config, resolve_settings): names,
seeds and overrides, and that the variant-free run keeps today's settings and hash."""

from __future__ import annotations

from pathlib import Path

import pytest

from cellseg.config.layers import read_layer
from cellseg.config.settings import (
    Run,
    check_variant_name,
    resolve_settings,
    run_config,
    runs,
)
from cellseg.errors import CellsegError

REPO = Path(__file__).resolve().parents[2]
BASE = read_layer(REPO / "config" / "config.yaml")


def study(**keys) -> dict:
    return {**BASE, **keys}


def test_run_names_round_trip_and_the_default_keeps_the_model_key():
    for run in (
        Run("unet_2d"),
        Run("unet_2d", "tau0.5-seed"),
        Run("vit_3d", "a", 3),
        Run("unet_2d", "", 1),
    ):
        assert Run.parse(run.name) == run
    assert Run("unet_2d").name == "unet_2d"
    assert Run("unet_2d", "", 2).name == "unet_2d~r2"
    assert Run("unet_2d", "tau2", 1).group == "unet_2d~tau2"


def test_runs_cross_selected_models_variants_and_replicates():
    config = study(select_models=["resnet_2d"], replicates=2, variants={"a": {}, "b": None})
    assert [r.name for r in runs(config)] == [
        "resnet_2d~a",
        "resnet_2d~a~r1",
        "resnet_2d~b",
        "resnet_2d~b~r1",
    ]
    assert [r.name for r in runs(BASE)] == list(BASE["models"])
    with pytest.raises(CellsegError, match="select_models names unet_4d"):
        runs(study(select_models=["unet_4d"]))


def test_the_variant_free_run_is_todays_whatever_the_study_adds():
    today = resolve_settings(BASE, "unet_2d")
    config = study(replicates=3, variants={"a": {"loss": {"tau": 0.0}}})
    assert resolve_settings(config, "unet_2d").config_hash() == today.config_hash()
    assert run_config(config, "unet_2d") == config


def test_replicates_shift_the_seed_and_variants_override_last():
    config = study(
        variants={
            "t": {"loss": {"tau": 2.0}, "training": {"lr": 0.5, "mem_mb": 1234}},
            "s": {"training": {"seed": 7}},
        }
    )
    base = resolve_settings(BASE, "unet_2d")
    run = resolve_settings(config, "unet_2d~t~r2")
    assert run.seed == base.seed + 2
    # training after the model's entry (which sets lr 3e-3), loss merged into loss
    assert run.lr == 0.5 and run.mem_mb == 1234 and run.max_epochs == base.max_epochs
    assert run.loss["tau"] == 2.0 and run.loss["alpha"] == base.loss["alpha"]
    assert resolve_settings(config, "unet_2d~s~r1").seed == 8
    assert resolve_settings(config, "unet_2d~r1").seed == base.seed + 1
    # the job reads the derived config under the plain model key: the same settings
    derived = run_config(config, "unet_2d~t~r2")
    assert "variants" not in derived
    assert resolve_settings(derived, "unet_2d") == run
    assert len({resolve_settings(config, f"unet_2d~t~r{k}").config_hash() for k in (1, 2)}) == 2


def test_bad_variants_are_one_line_errors():
    with pytest.raises(CellsegError, match=r"variants\.nope is not configured"):
        resolve_settings(study(variants={"a": {}}), "unet_2d~nope")
    for name in ("r1", "a_b", "1a", "a~b"):
        with pytest.raises(CellsegError, match=f"variants.{name}: a variant name"):
            check_variant_name(name)
    check_variant_name("tau0.5-seed")


def test_a_zero_bce_weight_keeps_the_hash_and_a_positive_one_changes_it():
    plain = resolve_settings(BASE, "unet_2d").config_hash()
    zero = study(loss={**BASE["loss"], "bce_weight": 0.0})
    assert resolve_settings(zero, "unet_2d").config_hash() == plain
    bce = study(loss={**BASE["loss"], "bce_weight": 1.0})
    assert resolve_settings(bce, "unet_2d").config_hash() != plain


def test_the_default_runs_keep_their_hash():
    """Pinned: a feature that needs no config key (group labels, issue 33 item 2) must leave
    the default runs' hashes, and so their checkpoints and results, as they were. Update the
    values only with a deliberate change of config/config.yaml's training defaults."""
    assert resolve_settings(BASE, "unet_2d").config_hash() == "84784dcaac569edc"
    assert resolve_settings(BASE, "unet_3d").config_hash() == "2979b46d86dc1b11"
