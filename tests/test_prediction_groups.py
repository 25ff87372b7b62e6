"""Group maps in ``cellseg predict`` (issue 33): through the command line, each group's
probability is a naive union of its members' stored probabilities, its mask the union of their
masks at every level, evaluation scores a group label with exactly the stored mask, a killed run
resumes them, ``--groups auto`` writes the groups the run trained on (none: the store of
before), and ``cellseg view`` shows them. The killed run is a process of its own; the other
commands run through the command's entry point in the test's process (a fresh process would
spend most of its CPU importing torch and MONAI)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cellseg.classes import CLASSES, GROUP_NAMES, GROUPS
from cellseg.data.store import EM_GROUP, LABELS_ROOT, Crop
from cellseg.evaluation import EvaluationSettings, evaluate_crops
from cellseg.inference import Predictor
from cellseg.palette import COLOURS
from cellseg.prediction import KILL_AFTER_ENV
from predict_cli import demo_options, predict_cli
from predict_cli import predict_in_process as predict
from predict_cli import stored as read
from store_builders import annotation, write_multiscale

pytestmark = pytest.mark.minutes(0.7)  # order: tests/conftest.py

EM_SHAPE = (8, 32, 40)  # 8 nm voxels, voxel 0's centre at 4 nm
CROP_START, CROP_SHAPE = (2, 4, 8), (4, 24, 24)  # EM voxels


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path, list[str], Crop]:
    """Random EM, a crop on its voxels with a fine ``pm`` and a ``mito`` group label (some
    voxels unknown), the best.pt of an untrained demo 2D UNet (probabilities near 0.5: many
    voxels where the union of three members passes 0.5 and no member does), and the command's
    options: float32, 8 blocks of (4, 16, 24), two pyramid levels, every group."""
    folder = tmp_path_factory.mktemp("groups")
    store = folder / "vol" / "vol.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    rng = np.random.default_rng(3)
    em = rng.integers(0, 256, EM_SHAPE, dtype=np.uint8)
    write_multiscale(root, EM_GROUP, [em], [(8.0,) * 3], [(4.0,) * 3])
    corner = tuple(4.0 + 8.0 * s for s in CROP_START)
    for name in ("pm", "mito"):
        label = rng.integers(0, 2, CROP_SHAPE).astype(np.uint8)
        label[rng.random(CROP_SHAPE) < 0.1] = 255
        write_multiscale(
            root, f"{LABELS_ROOT}/crop1/{name}", [label], [(8.0,) * 3], [corner], annotation(name)
        )
    crop = Crop(store, EM_GROUP, store, f"{LABELS_ROOT}/crop1", ("pm", "mito"), "test")
    options = [*demo_options(folder, store / EM_GROUP, 4, (4, 16, 24)), "--groups", "all"]
    return folder, folder / "best.pt", options, crop


@pytest.fixture(scope="module")
def store(setup) -> Path:
    """A run killed after 3 of its 8 blocks, then resumed by the same command."""
    folder, _, options, _ = setup
    out = folder / "pred.zarr"
    killed = predict_cli(*options, "--out", str(out), env={KILL_AFTER_ENV: "3"})
    assert killed.returncode == -9, killed.stderr
    marker = json.loads((out / ".cellseg" / "blocks" / "0.json").read_text())
    # a finished block's marker records the group arrays' chunks too (the lost-chunk check)
    assert {f"{kind}/{g}/s0" for g in GROUP_NAMES for kind in ("probabilities", "masks")} <= set(
        marker["chunks"]
    )
    resumed = predict(*options, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "5 blocks predicted, 3 already done" in resumed.stderr
    return out


def naive_union(probabilities: list[np.ndarray]) -> np.ndarray:
    """``1 - prod_m (1 - p_m)``, voxel by voxel in float64."""
    flat = [p.astype(np.float64).ravel() for p in probabilities]
    union = np.empty(flat[0].size)
    for i in range(union.size):
        none = 1.0
        for p in flat:
            none *= 1.0 - p[i]
        union[i] = 1.0 - none
    return union.reshape(probabilities[0].shape)


def mean_2x2x2(values: np.ndarray) -> np.ndarray:
    d, h, w = (n // 2 for n in values.shape)  # the fixture's shapes are even
    return values.astype(np.float64).reshape(d, 2, h, 2, w, 2).mean(axis=(1, 3, 5))


def test_group_maps_are_the_union_of_their_members(store):
    unions_without_a_member = 0
    for group, members in GROUPS.items():
        probability = read(store, f"probabilities/{group}/s0")
        member_p = [read(store, f"probabilities/{m}/s0") for m in members]
        assert probability.shape == EM_SHAPE and probability.dtype == np.float32
        np.testing.assert_allclose(probability, naive_union(member_p), atol=1e-6, err_msg=group)
        # the mask: some member's stored probability above 0.5 (as evaluation scores a group)
        mask = read(store, f"masks/{group}/s0")
        expected = np.any([p > 0.5 for p in member_p], axis=0).astype(np.uint8)
        np.testing.assert_array_equal(mask, expected, err_msg=group)
        unions_without_a_member += int(((probability > 0.5) & (mask == 0)).sum())
        # s1: the mean of s0 (as a class's), the mask its members' s1 masks' union
        np.testing.assert_allclose(
            read(store, f"probabilities/{group}/s1"), mean_2x2x2(probability), atol=1e-6
        )
        union_s1 = np.any([read(store, f"masks/{m}/s1") for m in members], axis=0)
        np.testing.assert_array_equal(read(store, f"masks/{group}/s1"), union_s1.astype(np.uint8))
    # the case the mask rule decides does occur: union probability > 0.5, no member's mask
    assert unions_without_a_member > 0


def test_the_store_records_and_describes_its_groups(store):
    attrs = json.loads((store / ".zattrs").read_text())
    assert attrs["cellseg"]["complete"] is True
    assert attrs["cellseg"]["prediction"]["groups"] == list(GROUP_NAMES)
    assert attrs["labels"] == [f"masks/{name}" for name in (*CLASSES, *GROUP_NAMES)]
    mito = json.loads((store / "probabilities" / "mito" / ".zattrs").read_text())
    assert mito["multiscales"][0]["name"] == "probabilities/mito"
    assert len(mito["multiscales"][0]["datasets"]) == 2
    assert mito["cellseg"] == {"kind": "probabilities", "members": list(GROUPS["mito"])}
    mask = json.loads((store / "masks" / "mito" / ".zattrs").read_text())
    assert mask["image-label"]["source"]["image"] == "../../probabilities/mito"


def test_evaluation_scores_a_group_label_with_the_stored_mask(setup, store):
    """The crop's ``mito`` counts from evaluation equal the stored mask's against the label."""
    _, checkpoint, _, crop = setup
    table = evaluate_crops(Predictor.from_checkpoint(checkpoint), [crop], EvaluationSettings())
    row = table[table["class"] == "mito"].iloc[0]
    label = zarr.open_array(str(crop.label_store / crop.crop_group / "mito" / "s0"))[...]
    box = tuple(slice(s, s + n) for s, n in zip(CROP_START, CROP_SHAPE, strict=True))
    predicted = read(store, "masks/mito/s0")[box] == 1
    known = label != 255
    truth = label == 1
    expected = [
        np.sum(predicted & truth & known),
        np.sum(predicted & ~truth & known),
        np.sum(~predicted & truth & known),
        np.sum(~predicted & ~truth & known),
    ]
    assert [row.tp, row.fp, row.fn, row.tn] == expected
    assert row.tp > 0 and row.fp > 0


def test_auto_writes_the_groups_the_run_trained_on(setup, store):
    """``best.pt``'s ``trained_groups`` (``mito``): only that group; none recorded (the demo
    checkpoint, any run without group labels): the store of before."""
    from cellseg.viewer import neuroglancer_state, read_sources

    folder, checkpoint, options, _ = setup
    coarse = folder / "coarse.pt"
    state = torch.load(checkpoint, weights_only=False)
    torch.save({**state, "trained_groups": ["mito"]}, coarse)
    auto = [*options, "--groups", "auto"]
    mito = folder / "mito.zarr"
    result = predict(*auto, "--checkpoint", str(coarse), "--out", str(mito))
    assert result.returncode == 0, result.stderr
    assert json.loads((mito / ".zattrs").read_text())["cellseg"]["prediction"]["groups"] == ["mito"]
    assert set(GROUP_NAMES) & {p.name for p in (mito / "masks").iterdir()} == {"mito"}
    np.testing.assert_array_equal(read(mito, "masks/mito/s1"), read(store, "masks/mito/s1"))
    out = folder / "classes.zarr"
    result = predict(*auto, "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "masks").iterdir() if p.is_dir()) == sorted(CLASSES)
    spec = json.loads((out / ".zattrs").read_text())["cellseg"]["prediction"]
    assert "groups" not in spec
    for name in CLASSES:  # the classes do not depend on the groups beside them
        array = f"probabilities/{name}/s0"
        np.testing.assert_array_equal(read(out, array), read(store, array), err_msg=name)
    names = {layer["name"] for layer in neuroglancer_state(read_sources(out), "http://h")["layers"]}
    assert not {f"masks/{g}" for g in GROUP_NAMES} & names
    # the view of a store with groups: each group's mask and probabilities in its colour
    layers = {
        layer["name"]: layer
        for layer in neuroglancer_state(read_sources(store), "http://h")["layers"]
    }
    for group in GROUP_NAMES:
        assert layers[f"masks/{group}"]["segmentColors"] == {"1": COLOURS[group]}
        assert f'default="{COLOURS[group]}"' in layers[f"probabilities/{group}"]["shader"]
    # a store with groups is not resumed without them: other settings
    refused = predict(*options, "--out", str(store), "--groups", "none")
    assert refused.returncode == 2 and "groups differs" in refused.stderr.splitlines()[-1]


def test_a_group_of_untrained_members_is_left_out_and_the_others_are_trained_unions(setup, store):
    """A run that trained neither ER class nor ``mito_ribo`` (cellseg.trained_classes): no ``er``
    group, and ``mito`` the union of the two trained members (``mito_ribo`` has no arrays and
    probability 0), at s0 and s1."""
    folder, checkpoint, options, _ = setup
    untrained = {"er_mem", "er_lum", "mito_ribo"}
    partial = folder / "partial.pt"
    state = torch.load(checkpoint, weights_only=False)
    torch.save({**state, "trained_classes": [c for c in CLASSES if c not in untrained]}, partial)
    out = folder / "partial.zarr"
    result = predict(*options, "--checkpoint", str(partial), "--out", str(out))
    assert result.returncode == 0, result.stderr
    spec = json.loads((out / ".zattrs").read_text())["cellseg"]["prediction"]
    assert spec["groups"] == [g for g in GROUP_NAMES if g != "er"]
    assert not (out / "masks" / "er").exists() and not (out / "probabilities" / "er").exists()
    trained = ["mito_mem", "mito_lum"]
    for level in ("s0", "s1"):
        union = np.any([read(out, f"masks/{m}/{level}") for m in trained], axis=0)
        np.testing.assert_array_equal(read(out, f"masks/mito/{level}"), union.astype(np.uint8))
    expected = naive_union([read(out, f"probabilities/{m}/s0") for m in trained])
    np.testing.assert_allclose(read(out, "probabilities/mito/s0"), expected, atol=1e-6)
    # the same weights: the trained members' maps are those of the run of all 14
    np.testing.assert_array_equal(read(out, "masks/mito_mem/s0"), read(store, "masks/mito_mem/s0"))
