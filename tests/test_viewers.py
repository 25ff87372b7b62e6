"""Prediction stores open right in the viewers' own readers (ome-zarr, ome-zarr-models,
neuroglancer's state classes), masks agree with the stored probabilities at every level, and
``cellseg view`` serves a store on localhost."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cellseg.classes import CLASSES
from cellseg.data.store import EM_GROUP
from cellseg.prediction import PredictionSettings, predict_volume
from checkpoint_builders import demo_unet_checkpoint
from store_builders import write_multiscale

EM_SHAPE = (12, 40, 48)
TRANSLATION = (4.0, 4.0, 4.0)  # centre of EM voxel 0, nm (8 nm voxels)
# one y-x tile (no window computed twice), 16 windows a forward pass: seconds on 2 cores
SETTINGS = PredictionSettings(chunk_voxels=8, block_voxels=(8, 40, 48), sw_batch_size=16)


def predict(checkpoint: Path, em_path: Path, out: Path, settings: PredictionSettings):
    """``predict_volume`` on one torch thread (a tiny model gains nothing from more on a
    loaded machine), the test process's thread count restored after."""
    threads = torch.get_num_threads()
    try:
        return predict_volume(checkpoint, em_path, out, settings, log=io.StringIO(), threads=1)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path]:
    """EM at 8 nm (two levels) and the best.pt of an untrained demo 2D UNet, whose
    probabilities sit near 0.5: many 2×2×2 means land exactly on a rounding boundary."""
    folder = tmp_path_factory.mktemp("viewers")
    store = folder / "vol" / "vol.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    em = np.random.default_rng(0).integers(0, 256, EM_SHAPE, dtype=np.uint8)
    write_multiscale(
        root, EM_GROUP, [em, em[::2, ::2, ::2]], [(8.0,) * 3, (16.0,) * 3],
        [TRANSLATION, tuple(t + 4 for t in TRANSLATION)],
    )  # fmt: skip
    checkpoint = folder / "best.pt"
    torch.manual_seed(0)
    torch.save(demo_unet_checkpoint(), checkpoint)
    return store / EM_GROUP, checkpoint


@pytest.fixture(scope="module")
def prediction(inputs, tmp_path_factory) -> Path:
    em_path, checkpoint = inputs
    out = tmp_path_factory.mktemp("prediction") / "pred.zarr"
    run = predict(checkpoint, em_path, out, SETTINGS)
    assert run.state == "complete" and run.levels == 4  # 48 -> 24 -> 12 -> 6 fits a chunk
    return out


def test_store_opens_as_labels_and_images_in_ome_zarr(prediction):
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Label, Multiscales, Reader

    nodes = list(Reader(parse_url(str(prediction)))())  # the store's root, as napari opens it
    labels = [n for n in nodes if n.first(Label) is not None]
    images = [n for n in nodes if n.first(Multiscales) is not None and n.first(Label) is None]
    assert sorted(n.metadata["name"] for n in labels) == sorted(f"masks/{c}" for c in CLASSES)
    # each mask brings its probabilities (its image-label source) as an image
    assert sorted(n.metadata["name"] for n in images) == sorted(
        f"probabilities/{c}" for c in CLASSES
    )
    for node in labels + images:
        assert len(node.data) == 4 and node.data[0].shape == EM_SHAPE
        assert [a["name"] for a in node.metadata["axes"]] == ["z", "y", "x"]
    assert {n.data[0].dtype for n in labels} == {np.dtype("uint8")}


def test_store_validates_with_ome_zarr_models(prediction):
    from ome_zarr_models.v04.image import Image
    from ome_zarr_models.v04.image_label import ImageLabel
    from ome_zarr_models.v04.labels import Labels

    root = zarr.open_group(str(prediction), mode="r", zarr_format=2)
    assert Labels.from_zarr(root["masks"]).attributes.labels == list(CLASSES)
    assert Labels.from_zarr(root).attributes.labels == [f"masks/{c}" for c in CLASSES]
    names = []
    for name in CLASSES:
        label = ImageLabel.from_zarr(root[f"masks/{name}"])
        assert label.attributes.image_label.source.image == f"../../probabilities/{name}"
        image = Image.from_zarr(root[f"probabilities/{name}"])
        names += [m.name for m in (*label.attributes.multiscales, *image.attributes.multiscales)]
        assert len(image.attributes.multiscales[0].datasets) == 4
    assert len(set(names)) == 2 * len(CLASSES)  # every layer its own name


def test_masks_are_stored_probabilities_above_threshold_at_every_level(
    inputs, prediction, tmp_path
):
    """A threshold whose x 255 has a fraction of 0.7 catches s0 voxels whose probability is
    below it but rounds to a value above; the untrained model's near-0.5 probabilities give
    2×2×2 means of exactly 0.5, which round to 128 (above 0.5)."""
    root = zarr.open_group(str(prediction), mode="r", zarr_format=2)
    s0 = root["probabilities/pm/s0"][...]
    common = int(np.bincount(s0.ravel()).argmax())
    thresholds = {"pm": (common - 0.3) / 255, "ecs": 0.5}
    em_path, checkpoint = inputs
    out = tmp_path / "thresholds.zarr"
    settings = PredictionSettings(**{**SETTINGS.__dict__, "threshold": thresholds})
    predict(checkpoint, em_path, out, settings)
    root = zarr.open_group(str(out), mode="r", zarr_format=2)
    disagreements_of_the_exact_mean = 0
    for name in CLASSES:
        threshold = thresholds.get(name, 0.5)
        for level in range(4):
            stored = root[f"probabilities/{name}/s{level}"][...]
            mask = root[f"masks/{name}/s{level}"][...]
            np.testing.assert_array_equal(
                mask, (stored.astype(np.float64) / 255 > threshold).astype(np.uint8),
                err_msg=f"{name} s{level}",
            )  # fmt: skip
            if level:
                # the former rule: the exact mean of the level below, thresholded
                below = root[f"probabilities/{name}/s{level - 1}"][...].astype(np.float64) / 255
                padded = np.pad(below, [(0, n % 2) for n in below.shape], mode="edge")
                d, h, w = (n // 2 for n in padded.shape)
                mean = padded.reshape(d, 2, h, 2, w, 2).mean(axis=(1, 3, 5))
                disagreements_of_the_exact_mean += int(((mean > threshold) != mask).sum())
    assert disagreements_of_the_exact_mean > 0  # the case the rule is for does occur here


def test_neuroglancer_state_parses_and_the_server_serves_the_stores(prediction):
    import neuroglancer

    from cellseg.viewer import state_path, view

    server, state, link = view(prediction)
    try:
        host, port = server.server_address[:2]
        base = f"http://{host}:{port}"
        parsed = neuroglancer.ViewerState(state)
        assert parsed.dimensions.names == ("z", "y", "x")
        assert list(parsed.dimensions.scales) == [1e-9] * 3
        assert parsed.layers["EM"].type == "image"
        assert parsed.layers["EM"].source[0].url == f"zarr://{base}/em/{EM_GROUP}"
        for name in CLASSES:
            mask = parsed.layers[f"masks/{name}"]
            assert mask.type == "segmentation" and list(mask.segments) == [1]
            assert mask.source[0].url == f"zarr://{base}/prediction/masks/{name}"
            probability = parsed.layers[f"probabilities/{name}"]
            assert probability.type == "image"
            assert probability.source[0].url == f"zarr://{base}/prediction/probabilities/{name}"
        assert len(parsed.layers) == 1 + 2 * len(CLASSES)
        # the view opens at the predicted region's centre (nm)
        centre = [t + (n - 1) * 8.0 / 2 for t, n in zip(TRANSLATION, EM_SHAPE, strict=True)]
        assert list(parsed.position) == pytest.approx(centre)
        # written beside the store; the link carries the same state
        assert json.loads(state_path(prediction).read_text()) == state
        assert state_path(prediction).parent == prediction.parent
        fragment = urllib.parse.unquote(link.split("#!", 1)[1])
        assert json.loads(fragment) == state
        # the layers' files through the server, with CORS headers, aligned in nm
        with urllib.request.urlopen(f"{base}/prediction/masks/ecs/.zattrs") as response:
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            mask_attrs = json.load(response)
        with urllib.request.urlopen(f"{base}/em/{EM_GROUP}/.zattrs") as response:
            em_attrs = json.load(response)
        first = mask_attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
        em_first = em_attrs["multiscales"][0]["datasets"][0]["coordinateTransformations"]
        assert first == em_first  # same voxel size and first-voxel centre (nm)
        assert "image-label" in mask_attrs
        for outside in ("/prediction/../pred.zarr/.zattrs", "/elsewhere/.zattrs", "/prediction/"):
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(base + outside)
            assert refused.value.code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_view_command_is_registered_and_bad_input_is_one_line(tmp_path, capsys):
    from cellseg.cli import build_parser, main

    args = build_parser("view").parse_args(["view", "--prediction", "pred.zarr", "--port", "8123"])
    assert args.prediction == Path("pred.zarr") and args.port == 8123
    assert main(["view", "--prediction", str(tmp_path / "missing.zarr")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
