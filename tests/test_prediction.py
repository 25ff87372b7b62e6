"""Whole-dataset prediction: blockwise equals whole-volume, OME-NGFF metadata, resumability."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch import nn

from cellseg.classes import CLASSES, NUM_CLASSES
from cellseg.data.multiscale import open_group, read_multiscale
from cellseg.data.store import EM_GROUP
from cellseg.errors import CellsegError
from cellseg.inference import Predictor
from cellseg.prediction import KILL_AFTER_ENV, predict_volume
from cellseg.prediction_geometry import PredictionSettings, block_logits, plan_prediction
from cellseg.prediction_plan import parse_roi, split_store_path
from checkpoint_builders import demo_unet_checkpoint
from predict_cli import predict_cli as cli
from predict_cli import predict_in_process
from store_builders import write_multiscale
from tiny_nets import SeededConvNet, tiny_predictor

pytestmark = pytest.mark.minutes(3.5)  # order: tests/conftest.py

REPO = Path(__file__).resolve().parents[1]
EM_SHAPE = (20, 44, 52)
TRANSLATION = (100.0, 36.0, 4.0)  # centre of EM voxel 0, nm (8 nm voxels)


def predictor(dim: str) -> Predictor:
    return tiny_predictor(
        SeededConvNet(3 if dim == "3d" else 2, width=6, seed=0, scale=4).eval(),
        dim,
        (8, 16, 16) if dim == "3d" else (16, 16),
        logit_shift=torch.linspace(-1, 1, NUM_CLASSES),
    )


@pytest.fixture(scope="module")
def em_path(tmp_path_factory) -> Path:
    """EM at 8 nm with a second level at 16 nm; voxel 0 centred at TRANSLATION."""
    store = tmp_path_factory.mktemp("em") / "vol" / "vol.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    rng = np.random.default_rng(0)
    em = rng.integers(0, 256, EM_SHAPE, dtype=np.uint8)
    coarse = em[::2, ::2, ::2]
    write_multiscale(
        root,
        EM_GROUP,
        [em, coarse],
        [(8.0,) * 3, (16.0,) * 3],
        [TRANSLATION, tuple(t + 4 for t in TRANSLATION)],
        chunks=(8, 16, 16),
    )
    return store / EM_GROUP


def multiscale(em_path: Path):
    store, group = split_store_path(em_path)
    return read_multiscale(open_group(store), store, group)


def logits_of(model: Predictor, em_path: Path, settings: PredictionSettings, roi=None):
    """Every block's logits pasted into one ``(14, D, H, W)`` array."""
    em = multiscale(em_path)
    plan = plan_prediction(em, model, settings, roi)
    out = torch.full((NUM_CLASSES, *plan.shape), float("nan"))
    reader = plan.reader(em, model.em_range)
    for index, logits in block_logits(model, plan, reader, range(plan.n_blocks), settings):
        out[(slice(None), *plan.block_box(index))] = logits
    return plan, out


def monai_logits(network: nn.Module, image: torch.Tensor, roi: tuple[int, ...], **options):
    """The independent reference: MONAI's ``sliding_window_inference`` on an image in memory
    (``(B, 1, *S)`` -> ``(B, 14, *S)``), with cellseg's defaults (overlap 0.25, Gaussian)."""
    from monai.inferers import sliding_window_inference

    options = {"overlap": 0.25, "mode": "gaussian", "sw_batch_size": 4} | options
    with torch.no_grad():
        return sliding_window_inference(image, roi, predictor=network, progress=False, **options)


@pytest.mark.parametrize(("dim", "block"), [("3d", (4, 16, 8)), ("2d", (8, 24, 16))])
def test_blockwise_equals_whole_volume_and_monai(em_path, dim, block):
    model = predictor(dim)
    whole = PredictionSettings(chunk_voxels=4, block_voxels=(32, 64, 64), sw_batch_size=3)
    plan, reference = logits_of(model, em_path, whole)
    assert plan.n_blocks == 1 and plan.shape == EM_SHAPE
    # the independent reference: MONAI's sliding_window_inference on the image held in memory
    em = multiscale(em_path)
    box = [(0, n + 2 * m) for n, m in zip(plan.shape, plan.margin, strict=True)]
    image = torch.from_numpy(plan.reader(em, model.em_range).read(box))
    if dim == "3d":
        monai = monai_logits(model.network, image[None, None], model.patch_shape)[0]
    else:
        monai = monai_logits(model.network, image[:, None], model.patch_shape).transpose(0, 1)
    inner = tuple(slice(m, m + n) for n, m in zip(plan.shape, plan.margin, strict=True))
    torch.testing.assert_close(reference, monai[(slice(None), *inner)], rtol=1e-5, atol=1e-5)
    # blocks smaller than the windows: windows span every kind of border
    blocked = PredictionSettings(chunk_voxels=4, block_voxels=block, sw_batch_size=2)
    plan, blockwise = logits_of(model, em_path, blocked)
    assert plan.n_blocks == math.prod(-(-n // b) for n, b in zip(EM_SHAPE, block, strict=True))
    torch.testing.assert_close(blockwise, reference, rtol=1e-5, atol=1e-5)


def test_roi_in_world_coordinates(em_path):
    model = predictor("3d")
    settings = PredictionSettings(chunk_voxels=4, block_voxels=(8, 8, 8))
    # EM voxel k spans TRANSLATION - 4 + 8k ... + 8 nm; this ROI covers z voxels 2..5 (partly
    # 2 and 5), y voxels 1..2, x voxels 3..9
    roi = parse_roi("116:140,40:56,28:76")
    plan, _ = logits_of(model, em_path, settings, roi)
    assert plan.roi_start == (2, 1, 3) and plan.shape == (4, 2, 7)
    assert plan.translation_nm == (116.0, 44.0, 28.0)
    with pytest.raises(CellsegError, match="does not overlap"):
        plan_prediction(multiscale(em_path), model, settings, parse_roi("0:10,0:10,0:10"))
    with pytest.raises(CellsegError, match="z0:z1"):
        parse_roi("1:2,3:4")


def run_dir(out: Path) -> dict[str, np.ndarray]:
    root = zarr.open_group(str(out), mode="r", zarr_format=2)
    return {
        f"{kind}/{c}/{level}": np.asarray(root[f"{kind}/{c}/{level}"])
        for kind in ("probabilities", "masks")
        for c in CLASSES
        for level in ("s0", "s1")
    }


def test_ome_ngff_store_metadata_pyramid_and_values(em_path, tmp_path):
    model = predictor("3d")
    settings = PredictionSettings(
        chunk_voxels=16, block_voxels=(16, 32, 32), dtype="float32", threshold={"mito_mem": 0.9}
    )
    out = tmp_path / "pred.zarr"
    run = predict_volume(None, em_path, out, settings, predictor=model)
    assert run.state == "complete" and run.levels == 3  # 20x44x52 -> 10x22x26 -> 5x11x13
    root = zarr.open_group(str(out), mode="r", zarr_format=2)
    assert root.attrs["cellseg"]["complete"]
    # of the working state only the manifest of the chunks written stays (tests/test_lost_chunks.py)
    assert [p.name for p in (out / ".cellseg").iterdir()] == ["chunks.json"]
    group = root["probabilities/mito_mem"]
    multiscales = group.attrs["multiscales"][0]
    assert multiscales["version"] == "0.4"
    assert [a["name"] for a in multiscales["axes"]] == ["z", "y", "x"]
    for k, dataset in enumerate(multiscales["datasets"]):
        scale, translation = (t[t["type"]] for t in dataset["coordinateTransformations"])
        assert scale == [8.0 * 2**k] * 3
        # voxel centres of level k: the EM's voxel 0 centre plus half the voxel growth
        assert translation == pytest.approx([t + (8.0 * 2**k - 8.0) / 2 for t in TRANSLATION])
        assert group[dataset["path"]].shape == tuple(-(-n // 2**k) for n in EM_SHAPE)
    # read back by cellseg's own reader: it lands exactly on the EM's s0 grid
    parsed = read_multiscale(root, out, "masks/mito_mem")
    assert parsed.finest.translation_nm == TRANSLATION and parsed.finest.shape == EM_SHAPE
    # values: adjusted probabilities of the blended logits; masks from per-class thresholds
    _, logits = logits_of(model, em_path, settings)
    probabilities = torch.sigmoid(logits + model.logit_shift[:, None, None, None]).numpy()
    mito = CLASSES.index("mito_mem")
    np.testing.assert_allclose(group["s0"][:], probabilities[mito], atol=1e-6)
    np.testing.assert_array_equal(root["masks/mito_mem/s0"][:], probabilities[mito] > 0.9)
    np.testing.assert_array_equal(root["masks/ecs/s0"][:], probabilities[0] > 0.5)
    s1 = probabilities[mito][:20, :44, :52].reshape(10, 2, 22, 2, 26, 2).mean(axis=(1, 3, 5))
    np.testing.assert_allclose(group["s1"][:], s1, atol=1e-6)
    # a rerun finds the store complete; other settings are refused without --overwrite
    assert predict_volume(None, em_path, out, settings, predictor=model).state == "complete"
    with pytest.raises(CellsegError, match="other settings"):
        predict_volume(None, em_path, out, PredictionSettings(chunk_voxels=16), predictor=model)
    with pytest.raises(CellsegError, match="inside or over the EM store"):
        predict_volume(None, em_path, em_path.parent / "p", settings, predictor=model)


def test_uint8_output_and_2d_model_slice_by_slice(em_path, tmp_path):
    model = predictor("2d")
    settings = PredictionSettings(chunk_voxels=8, block_voxels=(16, 32, 32), pyramid_levels=2)
    out = tmp_path / "pred2d.zarr"
    predict_volume(None, em_path, out, settings, predictor=model)
    root = zarr.open_group(str(out), mode="r", zarr_format=2)
    assert root["probabilities/ecs/s0"].dtype == np.uint8
    assert len(root["probabilities/ecs"].attrs["multiscales"][0]["datasets"]) == 2
    # slice by slice: z slice 7 is MONAI's 2D sliding window over that slice alone
    em = multiscale(em_path)
    plan = plan_prediction(em, model, settings)
    assert plan.window == (1, 16, 16) and plan.margin[0] == 0
    image = plan.reader(em, model.em_range).read(
        [(7, 8), (0, EM_SHAPE[1] + 2 * plan.margin[1]), (0, EM_SHAPE[2] + 2 * plan.margin[2])]
    )
    logits = monai_logits(model.network, torch.from_numpy(image)[:, None], (16, 16))[0]
    inner = logits[:, plan.margin[1] : -plan.margin[1], plan.margin[2] : -plan.margin[2]]
    expected = torch.sigmoid(inner + model.logit_shift[:, None, None])
    got = root["probabilities/ecs/s0"][7].astype(np.float32) / 255
    np.testing.assert_allclose(got, expected[0].numpy(), atol=0.5 / 255 + 1e-6)


def save_checkpoint(path: Path) -> None:
    """A ``best.pt`` as the trainer writes it, of a demo 2D UNet (seeded weights)."""
    torch.manual_seed(0)
    torch.save(demo_unet_checkpoint(), path)


def test_killed_run_resumes_skipping_finished_blocks(em_path, tmp_path, capsys):
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint)
    common = ["--checkpoint", str(checkpoint), "--em", str(em_path), "--device", "cpu"]
    common += ["--chunk-voxels", "8", "--block-voxels", "8", "32", "32", "--threads", "1"]
    common += ["--dtype", "float32", "--pyramid-levels", "2"]
    # 3 x 2 x 2 = 12 blocks; the first run is killed (SIGKILL) after writing 5 of them
    out = tmp_path / "killed.zarr"
    killed = cli(*common, "--out", str(out), env={KILL_AFTER_ENV: "5"})
    assert killed.returncode == -9, killed.stderr
    markers = sorted(int(p.stem) for p in (out / ".cellseg" / "blocks").glob("*.json"))
    assert markers == [0, 1, 2, 3, 4]
    # the user's second command (no process of its own needed: only the killed one is)
    resumed = predict_in_process(*common, "--out", str(out))
    assert resumed.returncode == 0, resumed.stderr
    assert "7 blocks predicted, 5 already done" in resumed.stderr
    # the same store as an uninterrupted run, and as two parallel parts then a pyramid
    settings = PredictionSettings(
        chunk_voxels=8, block_voxels=(8, 32, 32), dtype="float32", pyramid_levels=2, device="cpu"
    )
    model = Predictor.from_checkpoint(checkpoint)
    whole, parted = tmp_path / "whole.zarr", tmp_path / "parted.zarr"
    predict_volume(checkpoint, em_path, whole, settings, predictor=model)
    predict_volume(checkpoint, em_path, parted, settings, stage="init", predictor=model)
    for part in (1, 0):
        run = predict_volume(
            checkpoint, em_path, parted, settings, stage="blocks", part=part, parts=2,
            predictor=model,
        )  # fmt: skip
        assert run.blocks_done == 6
    predict_volume(checkpoint, em_path, parted, settings, stage="pyramid", predictor=model)
    # equal to float rounding: a resumed column sums its first windows in other batches
    expected = run_dir(whole)
    for store in (out, parted):
        got = run_dir(store)
        for c in CLASSES:
            for level in ("s0", "s1"):
                p, mask = (f"{kind}/{c}/{level}" for kind in ("probabilities", "masks"))
                np.testing.assert_allclose(got[p], expected[p], atol=1e-5, err_msg=store.name)
                clear = np.abs(expected[p] - 0.5) > 1e-4
                np.testing.assert_array_equal(got[mask][clear], expected[mask][clear])
    # bad input: one line, no traceback
    from cellseg.cli import main

    capsys.readouterr()
    assert main(["predict", *common, "--out", str(tmp_path / "x.zarr"), "--roi", "1:2"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("mode", ["train", "none"])
def test_in_place_probabilities_are_adjusted_probabilities(mode):
    from cellseg.losses import adjusted_probabilities

    logits = torch.randn(NUM_CLASSES, 3, 4, 5)
    shift = torch.linspace(-2, 2, NUM_CLASSES)
    expected = adjusted_probabilities(logits[None].clone(), shift, mode)[0]
    # the block's own tensor is returned (no copy), holding the same values
    in_place = adjusted_probabilities(logits[None], shift, mode, in_place=True)[0]
    assert in_place.data_ptr() == logits.data_ptr()
    torch.testing.assert_close(in_place, expected)


def test_em_that_is_not_uint8_is_refused_in_one_line(tmp_path):
    """A fibsem-uint16 volume would saturate at the top of em_range: predict refuses it as the
    datasplit step does, before a model is loaded or anything is written."""
    store = tmp_path / "vol16" / "vol16.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    em = np.random.default_rng(1).integers(0, 65536, (8, 16, 16), dtype=np.uint16)
    write_multiscale(root, EM_GROUP, [em], [(8.0,) * 3], [TRANSLATION], chunks=(8, 16, 16))
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint)
    out = tmp_path / "out.zarr"
    result = cli("--checkpoint", str(checkpoint), "--em", str(store / EM_GROUP), "--out", str(out))
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "EM dtype is uint16, but cellseg reads uint8" in lines[0], lines
    assert not out.exists()


@pytest.mark.parametrize("dim", ["3d", "2d"])
def test_roi_prediction_equals_the_whole_volume_on_its_voxels(em_path, dim):
    """The windows are anchored to the volume, not the ROI: a ROI, cut into other blocks, gets
    bit for bit the values of the same voxels of the whole-volume prediction (one window per
    forward pass, so no window's logits depend on the others of its batch)."""
    model = predictor(dim)
    settings = PredictionSettings(chunk_voxels=4, block_voxels=(8, 16, 16), sw_batch_size=1)
    whole_plan, whole = logits_of(model, em_path, settings)
    # interior on every axis, and one touching the volume's far corner
    for roi in ("132:180,60:140,44:172", "164:260,100:400,100:500"):
        plan, part = logits_of(model, em_path, settings, parse_roi(roi))
        assert plan.shape != whole_plan.shape and plan.starts == whole_plan.starts
        box = tuple(slice(a, a + n) for a, n in zip(plan.roi_start, plan.shape, strict=True))
        assert torch.equal(part, whole[(slice(None), *box)]), roi


@pytest.mark.parametrize("dim", ["3d", "2d"])
def test_window_counts_are_the_windows_computed(em_path, dim):
    """What a run costs in windows (the benchmark's recomputation figure) is what the blender
    runs; 2D models carry windows along x, so only y borders recompute."""
    from cellseg.inference import Blender

    model = predictor(dim)
    settings = PredictionSettings(chunk_voxels=4, block_voxels=(4, 16, 16))
    em = multiscale(em_path)
    plan = plan_prediction(em, model, settings)
    assert plan.carry_axis == (0 if dim == "3d" else 2)
    blender = Blender(model, plan.windows, "gaussian", 4)
    boxes = ((index, plan.image_box(index)) for index in range(plan.n_blocks))
    for _ in blender.logits(plan.reader(em, model.em_range).read, boxes, plan.carry_axis):
        pass
    computed, distinct = plan.window_counts(range(plan.n_blocks))
    assert computed == blender.windows_run
    assert distinct == plan.windows.n_windows  # every window of the grid, at least once
    if dim == "2d":
        # x carried: recomputed only where a y border cuts a window
        y_only = replace(plan, block=(4, 16, 64))  # one block across x
        assert computed == y_only.window_counts(range(y_only.n_blocks))[0]


def test_parts_started_at_once_need_an_init_first(em_path, tmp_path):
    checkpoint = tmp_path / "best.pt"
    save_checkpoint(checkpoint)
    out = tmp_path / "parts.zarr"
    common = ["--checkpoint", str(checkpoint), "--em", str(em_path), "--out", str(out)]
    common += ["--device", "cpu", "--threads", "1", "--chunk-voxels", "8"]
    common += ["--block-voxels", "8", "32", "32", "--dtype", "float32"]

    def at_once(*extra: str) -> list[subprocess.CompletedProcess]:
        environment = os.environ | {"PYTHONPATH": str(REPO / "src")}
        jobs = [
            subprocess.Popen(
                [sys.executable, "-m", "cellseg", "predict", *common, *extra, *part],
                env=environment,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for part in (["--part", "0", "--parts", "2"], ["--part", "1", "--parts", "2"])
        ]
        return [subprocess.CompletedProcess(j.args, j.wait(300), *j.communicate()) for j in jobs]

    for job in at_once():
        lines = job.stderr.strip().splitlines()
        assert job.returncode != 0 and len(lines) == 1, job.stderr
        assert "--stage init" in lines[0] and "--overwrite" not in lines[0]
    assert not out.exists()  # neither created (nor deleted) anything
    # the stages before and after the parts need no process of their own
    assert predict_in_process(*common, "--stage", "init").returncode == 0
    for job in at_once("--stage", "blocks"):
        assert job.returncode == 0, job.stderr
    assert predict_in_process(*common, "--stage", "pyramid").returncode == 0
    assert zarr.open_group(str(out), mode="r", zarr_format=2).attrs["cellseg"]["complete"]
    # a store whose settings are not recorded yet (being created) is never offered --overwrite
    half = tmp_path / "half.zarr"
    (half / ".cellseg" / "blocks").mkdir(parents=True)
    model = predictor("3d")
    with pytest.raises(CellsegError, match="not recorded yet") as error:
        predict_volume(None, em_path, half, PredictionSettings(), predictor=model)
    assert "--overwrite" not in str(error.value)


def test_a_crash_between_chunks_and_marker_redoes_the_block(em_path, tmp_path, monkeypatch):
    """The marker is written only after the block's chunks are synced; a crash in between
    leaves no marker, and the rerun recomputes the block into the same store as an
    uninterrupted run."""
    from cellseg import prediction, prediction_store

    model = predictor("3d")
    # 8 blocks (2 x 2 x 2, the last of each axis partial) of 2 x 3 x 4 chunks per array
    settings = PredictionSettings(
        chunk_voxels=8, block_voxels=(16, 24, 32), dtype="float32", pyramid_levels=2
    )
    synced: list[Path] = []
    original_fsync, original_marker = prediction_store._fsync, prediction.write_marker

    def fsync(path: Path) -> None:
        synced.append(path)
        original_fsync(path)

    def marker(out: Path, index: int, box, seconds: float, stored) -> None:
        # every chunk file of the block is synced before its marker
        written = {p for p in out.glob("*/*/s0/*.*.*") if p.stat().st_mtime_ns >= started[0]}
        assert written <= set(synced)
        if index == 2:
            raise RuntimeError("node crash")
        original_marker(out, index, box, seconds, stored)

    started = [0]
    monkeypatch.setattr(prediction_store, "_fsync", fsync)
    monkeypatch.setattr(prediction, "write_marker", marker)
    out = tmp_path / "crashed.zarr"
    started[0] = time.time_ns()
    with pytest.raises(RuntimeError, match="node crash"):
        predict_volume(None, em_path, out, settings, predictor=model)
    markers = sorted(int(p.stem) for p in (out / ".cellseg" / "blocks").glob("*.json"))
    assert 2 not in markers and len(markers) >= 2
    monkeypatch.setattr(prediction, "write_marker", original_marker)
    run = predict_volume(None, em_path, out, settings, predictor=model)
    assert run.blocks_skipped == len(markers) and run.state == "complete"
    whole = tmp_path / "whole.zarr"
    predict_volume(None, em_path, whole, settings, predictor=model)
    expected, got = run_dir(whole), run_dir(out)
    for key, values in expected.items():
        np.testing.assert_array_equal(got[key], values, err_msg=key)


def test_a_model_with_an_untrained_class_writes_no_array_of_it(em_path, tmp_path, capsys):
    """``cellseg predict`` of a run that never saw a ``nuc`` label (issue 33): no probabilities
    and no mask of nuc at any level, the settings say so, the viewer shows no nuc layer; every
    other class's arrays are those of the same weights trained on all 14."""
    from cellseg.cli import main
    from cellseg.viewer import neuroglancer_state, read_sources

    torch.manual_seed(0)
    state = demo_unet_checkpoint()
    common = ["--em", str(em_path), "--device", "cpu", "--threads", "1", "--chunk-voxels", "8"]
    common += ["--block-voxels", "8", "32", "32", "--pyramid-levels", "2"]
    stores = {}
    for run, trained in (("all", list(CLASSES)), ("no_nuc", [c for c in CLASSES if c != "nuc"])):
        checkpoint, stores[run] = tmp_path / f"{run}.pt", tmp_path / f"{run}.zarr"
        torch.save({**state, "trained_classes": trained}, checkpoint)
        command = ["predict", "--checkpoint", str(checkpoint), "--out", str(stores[run])]
        assert main([*command, *common]) == 0
    assert "untrained classes: nuc:" in capsys.readouterr().err
    root = zarr.open_group(str(stores["no_nuc"]), mode="r", zarr_format=2)
    for kind in ("probabilities", "masks"):
        assert set(root[kind].group_keys()) == set(CLASSES) - {"nuc"}
    spec = root.attrs["cellseg"]["prediction"]
    assert spec["untrained_classes"] == ["nuc"] and root.attrs["cellseg"]["complete"]
    assert "masks/nuc" not in root.attrs["labels"]
    full = zarr.open_group(str(stores["all"]), mode="r", zarr_format=2)
    assert "untrained_classes" not in full.attrs["cellseg"]["prediction"]
    for name in ("ecs", "pm"):
        for level in ("s0", "s1"):
            np.testing.assert_array_equal(
                root[f"masks/{name}/{level}"], full[f"masks/{name}/{level}"]
            )
    sources = read_sources(stores["no_nuc"])
    names = {layer["name"] for layer in neuroglancer_state(sources, "http://h")["layers"]}
    assert "masks/ecs" in names and not {"masks/nuc", "probabilities/nuc"} & names
