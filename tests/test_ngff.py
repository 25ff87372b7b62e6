"""cellseg.ngff: OME-NGFF multiscale groups, checked against hand-computed metadata, naive loops,
zarr itself and the ome-zarr-models validator."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import zarr

from cellseg.ngff import (
    ChunkWriter,
    array_metadata,
    block_mean,
    create_multiscale_group,
    downsample_labels,
    downsample_mean,
    image_label_attrs,
    labels_attrs,
    level_shape,
    level_transform,
    multiscales_attrs,
    pyramid_levels,
    write_documents,
    write_multiscale_array,
)


def test_level_transform_and_multiscales_by_hand():
    # a 4 nm base at 2 nm: level 1 is 8 nm and starts 2 nm further (half the growth)
    assert level_transform((4.0, 4.0, 4.0), (2.0, 2.0, 2.0), 1) == ([8.0] * 3, [4.0] * 3)
    assert level_transform((2.6, 2.0, 2.0), (0.0, 0.0, 0.0), 2) == (
        pytest.approx([10.4, 8.0, 8.0]),
        pytest.approx([3.9, 3.0, 3.0]),
    )
    (multiscale,) = multiscales_attrs("masks/ecs", (8.0,) * 3, (4.0, 0.0, 0.0), 2)["multiscales"]
    assert multiscale["name"] == "masks/ecs" and multiscale["version"] == "0.4"
    assert [a["name"] for a in multiscale["axes"]] == ["z", "y", "x"]
    assert {a["unit"] for a in multiscale["axes"]} == {"nanometer"}
    assert multiscale["datasets"][1] == {
        "path": "s1",
        "coordinateTransformations": [
            {"type": "scale", "scale": [16.0] * 3},
            {"type": "translation", "translation": [8.0, 4.0, 4.0]},
        ],
    }


def test_level_shapes_and_pyramid_levels():
    assert level_shape((5, 11, 13), 1) == (3, 6, 7)
    assert level_shape((5, 11, 13), 3) == (1, 2, 2)
    assert pyramid_levels((20, 44, 52), 16) == 3  # 52 -> 26 -> 13 fits one chunk of 16
    assert pyramid_levels((16, 16, 16), 16) == 1
    assert pyramid_levels((20, 44, 52), 16, requested=2) == 2


def test_block_mean_matches_a_naive_loop_with_edge_padding():
    rng = np.random.default_rng(0)
    values = rng.random((5, 6, 7), dtype=np.float32)
    got = block_mean(values, 2)
    assert got.shape == level_shape(values.shape, 1)
    expected = np.zeros(got.shape)
    for z, y, x in itertools.product(*(range(n) for n in got.shape)):
        # an odd edge repeats its last voxel
        block = [
            values[min(2 * z + a, 4), min(2 * y + b, 5), min(2 * x + c, 6)]
            for a, b, c in itertools.product((0, 1), repeat=3)
        ]
        expected[z, y, x] = np.mean(block)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    em = rng.integers(0, 256, (8, 8, 8), dtype=np.uint8)
    np.testing.assert_array_equal(
        downsample_mean(em, 4),
        np.round(em.reshape(2, 4, 2, 4, 2, 4).mean(axis=(1, 3, 5))).astype(np.uint8),
    )


def test_downsample_labels_is_the_block_mode_ties_to_the_larger_unknown_wins():
    rng = np.random.default_rng(1)
    codes = rng.choice(
        np.array([0, 3, 7, 9], dtype=np.uint16), size=(4, 6, 8), p=[0.4, 0.3, 0.2, 0.1]
    )
    got = downsample_labels(codes, unknown=9)
    for z, y, x in itertools.product(range(2), range(3), range(4)):
        block = codes[2 * z : 2 * z + 2, 2 * y : 2 * y + 2, 2 * x : 2 * x + 2].ravel().tolist()
        if 9 in block:
            expected = 9
        else:
            counts = {v: block.count(v) for v in block}
            expected = max(counts, key=lambda v: (counts[v], v))
        assert got[z, y, x] == expected, (z, y, x, block)
    assert downsample_labels(np.array([[[1, 2], [1, 2]], [[1, 2], [1, 2]]]))[0, 0, 0] == 2


def test_multiscale_groups_and_labels_validate_with_ome_zarr_models(tmp_path):
    from ome_zarr_models.v04.image import Image
    from ome_zarr_models.v04.image_label import ImageLabel
    from ome_zarr_models.v04.labels import Labels

    root = zarr.open_group(str(tmp_path / "x.zarr"), mode="w", zarr_format=2)
    arrays = create_multiscale_group(
        root, "image", (9, 20, 33), "uint8", (8.0,) * 3, (4.0,) * 3, 3, chunks=8
    )
    assert [a.shape for a in arrays] == [(9, 20, 33), (5, 10, 17), (3, 5, 9)]
    assert arrays[0].chunks == (8, 8, 8) and arrays[2].chunks == (3, 5, 8)
    labels = root.create_group("labels", attributes=labels_attrs(["cells"]))
    write_multiscale_array(
        labels, "cells", [np.ones((4, 4, 4), np.uint8), np.ones((2, 2, 2), np.uint8)],
        (8.0,) * 3, (4.0,) * 3,
        attrs=image_label_attrs("../../image", colors={1: (255, 0, 0, 255)}),
    )  # fmt: skip
    image = Image.from_zarr(root["image"])
    assert image.attributes.multiscales[0].name == "image"
    label = ImageLabel.from_zarr(root["labels/cells"])
    assert label.attributes.image_label.source.image == "../../image"
    assert label.attributes.image_label.colors[0].label_value == 1
    assert Labels.from_zarr(root["labels"]).attributes.labels == ["cells"]
    with pytest.raises(ValueError, match="level shape"):
        write_multiscale_array(
            root, "bad", [np.ones((4, 4, 4)), np.ones((3, 2, 2))], [8.0] * 3, [0.0] * 3
        )


def test_chunk_writer_stores_what_zarr_would(tmp_path):
    """Blocks written chunk by chunk read back through zarr as the values zarr itself stores:
    edge chunks (padded), an all-zero chunk (not stored, and removed when a block that a killed
    run wrote is rewritten)."""
    shape, chunks = (20, 44, 52), (16, 16, 16)  # edge chunks on every axis
    values = np.random.default_rng(1).integers(1, 256, shape, dtype=np.uint8)
    values[:16, :16, :16] = 0  # one whole chunk of the fill value
    out = tmp_path / "ours.zarr"
    metadata = array_metadata(shape, chunks, "uint8")
    write_documents(out, {".zgroup": {"zarr_format": 2}, "a/.zarray": metadata})
    writer = ChunkWriter(out, chunks)
    blocks = [
        (slice(z, min(z + 16, 20)), slice(y, min(y + 32, 44)), slice(0, 52))
        for z in (0, 16)
        for y in (0, 32)
    ]
    for box in blocks:  # what a killed run left behind, then the rerun
        writer.write("a", box, np.full(shape, 7, dtype=np.uint8)[box])
    for box in blocks:
        writer.write("a", box, values[box])
    reference = zarr.create_array(
        str(tmp_path / "zarr.zarr"), shape=shape, chunks=chunks, dtype="uint8", zarr_format=2,
        fill_value=0, compressors=None,
    )  # fmt: skip
    reference[...] = values
    ours = zarr.open_array(str(out / "a"), mode="r", zarr_format=2)
    np.testing.assert_array_equal(ours[...], values)
    assert ours.chunks == chunks and ours.dtype == np.uint8 and ours.fill_value == 0
    # the same chunk files as zarr's (which skips the all-zero one)
    assert not (out / "a" / "0.0.0").exists()
    assert sorted(p.name for p in (out / "a").glob("[0-9]*")) == sorted(
        p.name for p in (tmp_path / "zarr.zarr").glob("[0-9]*")
    )
    # the metadata is what zarr writes for create_multiscale_group's arrays
    root = zarr.open_group(str(tmp_path / "api.zarr"), mode="w", zarr_format=2)
    create_multiscale_group(root, "g", shape, "uint8", [8.0] * 3, [0.0] * 3, 1, chunks=16)
    api = json.loads((tmp_path / "api.zarr" / "g" / "s0" / ".zarray").read_text())
    assert api == json.loads((out / "a" / ".zarray").read_text())
