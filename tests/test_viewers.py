"""Prediction stores open right in the viewers' own readers (ome-zarr, ome-zarr-models,
neuroglancer's state classes), masks agree with the stored probabilities at every level, and
``cellseg view`` serves a store on localhost."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import threading
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cellseg.classes import CLASSES, GROUP_NAMES, GROUPS
from cellseg.data.store import EM_GROUP
from cellseg.palette import COLOURS
from cellseg.prediction import predict_volume
from cellseg.prediction_geometry import PredictionSettings
from checkpoint_builders import demo_unet_checkpoint
from store_builders import write_multiscale

EM_SHAPE = (12, 40, 48)
TRANSLATION = (4.0, 4.0, 4.0)  # centre of EM voxel 0, nm (8 nm voxels)
# one y-x tile (no window computed twice), 16 windows a forward pass: seconds on 2 cores
SETTINGS = PredictionSettings(
    chunk_voxels=8, block_voxels=(8, 40, 48), sw_batch_size=16, groups="all"
)
LAYERS = (*CLASSES, *GROUP_NAMES)
"""A store's layers: the 14 classes, then the groups (``predict.groups: all``)."""


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
    assert sorted(n.metadata["name"] for n in labels) == sorted(f"masks/{c}" for c in LAYERS)
    # each mask brings its probabilities (its image-label source) as an image
    assert sorted(n.metadata["name"] for n in images) == sorted(
        f"probabilities/{c}" for c in LAYERS
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
    assert Labels.from_zarr(root["masks"]).attributes.labels == list(LAYERS)
    assert Labels.from_zarr(root).attributes.labels == [f"masks/{c}" for c in LAYERS]
    names = []
    for name in LAYERS:
        label = ImageLabel.from_zarr(root[f"masks/{name}"])
        assert label.attributes.image_label.source.image == f"../../probabilities/{name}"
        image = Image.from_zarr(root[f"probabilities/{name}"])
        names += [m.name for m in (*label.attributes.multiscales, *image.attributes.multiscales)]
        assert len(image.attributes.multiscales[0].datasets) == 4
    assert len(set(names)) == 2 * len(LAYERS)  # every layer its own name


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
    # a group's mask is its members' masks' union at every level, whatever its own probability
    for group, members in GROUPS.items():
        for level in range(4):
            union = np.bitwise_or.reduce([root[f"masks/{m}/s{level}"][...] for m in members])
            np.testing.assert_array_equal(
                root[f"masks/{group}/s{level}"][...], union, err_msg=f"{group} s{level}"
            )


def test_neuroglancer_state_parses_and_the_server_serves_the_stores(prediction):
    import neuroglancer

    from cellseg.viewer import state_path, view

    server, state, link = view(prediction)
    try:
        host, port = server.server_address[:2]
        base = f"http://{host}:{port}"
        parsed = neuroglancer.ViewerState(state)
        # x, y first: the main panel shows the y-x imaging plane
        assert parsed.dimensions.names == ("x", "y", "z")
        assert list(parsed.dimensions.scales) == [1e-9] * 3
        assert parsed.layers["EM"].type == "image"
        assert parsed.layers["EM"].source[0].url == f"zarr://{base}/em/{EM_GROUP}"
        for name in LAYERS:  # the groups in the palette's group colours
            mask = parsed.layers[f"masks/{name}"]
            assert mask.type == "segmentation" and list(mask.segments) == [1]
            assert mask.segment_colors[1] == COLOURS[name]  # the figures' colour
            assert mask.source[0].url == f"zarr://{base}/prediction/masks/{name}"
            probability = parsed.layers[f"probabilities/{name}"]
            assert probability.type == "image"
            assert f'default="{COLOURS[name]}"' in probability.shader
            assert probability.source[0].url == f"zarr://{base}/prediction/probabilities/{name}"
        assert len(parsed.layers) == 1 + 2 * len(LAYERS)
        # the view opens at the predicted region's centre (nm), x y z
        centre = [t + (n - 1) * 8.0 / 2 for t, n in zip(TRANSLATION, EM_SHAPE, strict=True)]
        assert list(parsed.position) == pytest.approx(centre[::-1])
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


def test_every_array_of_the_store_has_its_attributes(prediction):
    """s0 too (written as zarr's documents, not through zarr): neuroglancer asks for each
    array's ``.zattrs``, and a missing one is a 404 in the browser's console."""
    arrays = sorted(path.parent for path in prediction.rglob(".zarray"))
    assert len(arrays) == 2 * len(LAYERS) * 4  # probabilities and masks, 4 levels each
    for array in arrays:
        assert json.loads((array / ".zattrs").read_text()) == {}, array


# ------------------------------------------------------------------------------ a real browser

CHROMIUM = next(
    (found for name in ("chromium", "chromium-browser") if (found := shutil.which(name))), None
)
WINDOW = (800, 600)  # the canvas; 4 panels of 400 × 300 without the UI controls


def screenshot_in_chromium(state: dict, folder: Path, timeout_s: float = 90) -> np.ndarray:
    """``state`` opened by headless Chromium in the neuroglancer client that the ``neuroglancer``
    package ships, served on localhost by the package's own server; the canvas once every
    visible chunk has loaded (the client's own screenshot), as ``(H, W, 3)`` uint8.

    Fails with the browser's log when no screenshot comes, or when the page's console logged an
    error (a 404 for a file neuroglancer asked for counts).
    """
    import neuroglancer
    from PIL import Image

    neuroglancer.set_server_bind_address("127.0.0.1")
    viewer = neuroglancer.Viewer()
    viewer.set_state(neuroglancer.ViewerState(state))
    with viewer.config_state.txn() as config:
        config.show_ui_controls = False
        config.show_panel_borders = False
        config.viewer_size = list(WINDOW)
    log = folder / "chromium.log"
    browser = subprocess.Popen(
        [
            CHROMIUM, "--headless=new", "--no-sandbox", "--no-first-run",
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader",  # WebGL 2 without a GPU
            f"--user-data-dir={folder / 'profile'}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
            "--enable-logging=stderr", "--v=0", viewer.get_viewer_url(),
        ],
        stdout=subprocess.DEVNULL, stderr=log.open("w"),
    )  # fmt: skip
    try:
        done, result = threading.Event(), []
        viewer.async_screenshot(lambda reply: (result.append(reply), done.set()))
        arrived = done.wait(timeout_s)
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=10)
        except subprocess.TimeoutExpired:
            browser.kill()
            browser.wait()
        neuroglancer.stop()
    text = log.read_text(errors="replace")
    assert arrived, f"no screenshot within {timeout_s} s; chromium's log ends:\n{text[-3000:]}"
    console_errors = [line for line in text.splitlines() if ":ERROR:CONSOLE" in line]
    assert not console_errors, "\n".join(console_errors)
    image = Image.open(io.BytesIO(result[0].screenshot.image)).convert("RGB")
    image.save(folder / "screenshot.png")  # for a look when a check fails
    return np.asarray(image)


def chroma_cosine(observed: np.ndarray, grey: np.ndarray, colour: str) -> float:
    """Cosine between a masked band's colour shift off the unmasked EM (``observed - grey``,
    mean RGB) and the shift that blending ``colour`` over that EM gives (``colour - grey``)."""
    target = np.array([int(colour[i : i + 2], 16) for i in (1, 3, 5)], dtype=float) - grey
    shift = observed - grey
    return float(shift @ target / (np.linalg.norm(shift) * np.linalg.norm(target) + 1e-9))


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium (bash .ci/install-slurm.sh installs it)")
def test_headless_chromium_shows_the_em_and_two_masks_in_their_colours(
    inputs, prediction, tmp_path, monkeypatch
):
    """The state as ``cellseg view`` writes it, in a real browser: the main (top-left) panel
    shows the y-x plane of the EM, voxel for voxel, and nuc's and pm's masks, each in its
    palette colour. nuc covers x < 16 and pm x >= 32 of the 48 x voxels (the middle third is
    EM alone); on the z-y plane, or in one colour, the checks below fail."""
    from cellseg.viewer import _Handler, view

    answered: list[tuple[str, int]] = []  # what the browser asked cellseg's server, and the code
    monkeypatch.setattr(
        _Handler, "log_request", lambda self, code="-", size="-": answered.append((self.path, code))
    )
    store = tmp_path / "pred.zarr"
    shutil.copytree(prediction, store)
    root = zarr.open_group(str(store), mode="r+", zarr_format=2)
    for level in range(4):
        for name, band in (("nuc", slice(0, 1)), ("pm", slice(2, 3))):
            array = root[f"masks/{name}/s{level}"]
            mask = np.zeros(array.shape, dtype=np.uint8)
            third = array.shape[2] // 3
            mask[..., band.start * third : band.stop * third] = 1
            array[...] = mask
    server, state, _ = view(store)
    try:
        for layer in state["layers"]:
            if layer["name"] == "masks/pm":
                layer["visible"] = True  # nuc is on already; a user switches pm on
        pixels = screenshot_in_chromium(state, tmp_path).astype(float)
    finally:
        server.shutdown()
        server.server_close()
    assert pixels.shape == (WINDOW[1], WINDOW[0], 3)
    # every array's .zattrs that neuroglancer asked for was there, s0's included (the 404s it
    # meets are its zarr v3 / array probes of a group, and chunks never stored: all zero)
    codes = {path: int(code) for path, code in answered}
    attributes = {path: code for path, code in codes.items() if path.endswith(".zattrs")}
    missing = sorted(path for path, code in attributes.items() if code != 200)
    assert attributes and not missing, f"neuroglancer asked for these in vain: {missing}"
    for group in (f"em/{EM_GROUP}", "prediction/masks/nuc", "prediction/masks/pm"):
        assert codes.get(f"/{group}/s0/.zattrs") == 200, group
    # the main panel's centre is the view's position: the middle of the 48 x 40 voxels (8 nm,
    # one screen pixel each); bands a few pixels inside each third, off the axis lines that
    # cross at the centre
    cy, cx = WINDOW[1] // 4, WINDOW[0] // 4
    rows = np.array([r for r in range(cy - 14, cy + 14) if abs(r - cy) > 1])
    bands = [np.array([c for c in range(cx + a, cx + b) if abs(c - cx) > 1])
             for a, b in ((-20, -12), (-5, 5), (12, 20))]  # fmt: skip
    nuc, em_only, pm = (pixels[np.ix_(rows, columns)] for columns in bands)
    # EM: the EM's own voxels (z slice 5 or 6, the position lies between them), y down and x
    # right; the best of a few pixel offsets, as where a voxel edge falls is the renderer's
    em_path, _ = inputs
    em = zarr.open_array(str(em_path / "s0"), mode="r")[...].astype(float)
    shown = em_only.mean(axis=2)
    y, x = rows - cy + EM_SHAPE[1] // 2, bands[1] - cx + EM_SHAPE[2] // 2
    best = max(
        np.corrcoef(shown.ravel(), em[z][np.ix_(y + dy, x + dx)].ravel())[0, 1]
        for z in (5, 6) for dy in range(-2, 3) for dx in range(-2, 3)
    )  # fmt: skip
    assert best > 0.8, f"the main panel does not show the EM's y-x plane (best r = {best:.2f})"
    spread = np.abs(em_only - em_only.mean(axis=2, keepdims=True)).max()
    assert spread < 4, f"the unmasked band is not grey (channels differ by {spread})"
    assert em_only.std() > 30, "no EM in the main panel's unmasked band"
    # the masks: each band shifted off the EM's grey towards its own class's colour
    grey = em_only.reshape(-1, 3).mean(axis=0)
    nuc_mean, pm_mean = nuc.reshape(-1, 3).mean(axis=0), pm.reshape(-1, 3).mean(axis=0)
    assert np.linalg.norm(nuc_mean - pm_mean) > 60, (nuc_mean, pm_mean)
    for observed, own, other in ((nuc_mean, "nuc", "pm"), (pm_mean, "pm", "nuc")):
        mine = chroma_cosine(observed, grey, COLOURS[own])
        theirs = chroma_cosine(observed, grey, COLOURS[other])
        assert mine > 0.9 and mine > theirs + 0.3, (own, observed, grey, mine, theirs)
