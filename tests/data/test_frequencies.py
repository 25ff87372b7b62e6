from __future__ import annotations

import json

import numpy as np
import pytest

from cellseg.classes import CLASSES
from cellseg.cli import main
from cellseg.data.datasplit import split_crops, write_datasplit
from cellseg.data.frequencies import class_frequencies
from cellseg.data.store import discover_crops
from cellseg.errors import CellsegError
from store_builders import INSTANCE, SEMANTIC


def random_labels(rng, shape, unknown_fraction=0.1):
    labels = (rng.random(shape) < 0.3).astype(np.uint8)
    labels[rng.random(shape) < unknown_fraction] = 255
    return labels


@pytest.fixture
def store_and_arrays(make_store):
    """Three crops: ecs at 8 nm, ecs at 4 nm (s1 at 8 nm), nuc (instance) at 16 nm."""
    rng = np.random.default_rng(0)
    em = np.zeros((16, 32, 32), dtype=np.uint8)
    ecs8 = random_labels(rng, (4, 6, 8))
    ecs4 = random_labels(rng, (8, 8, 8))
    ecs4_s1 = ecs4[::2, ::2, ::2]
    nuc16 = rng.integers(0, 4, (2, 3, 3)).astype(np.uint8)
    nuc16[0, 0] = 255
    crops = {
        "crop1": {"ecs": ([ecs8], [(8.0,) * 3], [(4.0,) * 3], SEMANTIC)},
        "crop2": {
            "ecs": ([ecs4, ecs4_s1], [(4.0,) * 3, (8.0,) * 3], [(2.0,) * 3, (4.0,) * 3], SEMANTIC)
        },
        "crop3": {"nuc": ([nuc16], [(16.0,) * 3], [(8.0,) * 3], INSTANCE)},
    }
    store = make_store("ds", em, crops)
    return store, ecs8, ecs4_s1, nuc16


def test_counts_equal_direct_numpy_count(store_and_arrays):
    store, ecs8, ecs4_s1, nuc16 = store_and_arrays
    crops = discover_crops(store.parent.parent)
    result = class_frequencies(crops, 8.0, allow_missing_classes=True)
    ecs = result["per_class"]["ecs"]
    # the loader reads ecs at 8 nm for both crops (crop2's s1): weight 1 per stored voxel
    assert ecs["annotated_voxels"] == np.sum(ecs8 != 255) + np.sum(ecs4_s1 != 255)
    assert ecs["positive_voxels"] == np.sum(ecs8 == 1) + np.sum(ecs4_s1 == 1)
    assert ecs["crops"] == 2
    assert ecs["prior"] == pytest.approx(ecs["positive_voxels"] / ecs["annotated_voxels"])
    nuc = result["per_class"]["nuc"]
    # a 16 nm voxel is 8 voxels of 8 nm; instance ids 1..3 are positive
    assert nuc["annotated_voxels"] == 8 * np.sum(nuc16 != 255)
    assert nuc["positive_voxels"] == 8 * np.sum((nuc16 != 0) & (nuc16 != 255))
    assert result["classes"] == list(CLASSES) and result["resolution_nm"] == 8.0
    assert "counted_at" in result
    assert result["per_class"]["pm"]["prior_source"].startswith("imputed")


def test_missing_class_is_an_error_naming_it(store_and_arrays):
    store = store_and_arrays[0]
    with pytest.raises(
        CellsegError, match=r"class\(es\) pm, mito_mem.* annotated in no training crop"
    ):
        class_frequencies(discover_crops(store.parent.parent), 8.0)


def test_cli_counts_only_training_crops(store_and_arrays, tmp_path):
    store = store_and_arrays[0]
    crops = split_crops(discover_crops(store.parent.parent), 0.0, 0.0)
    crops[2] = type(crops[2])(
        *[
            getattr(crops[2], f)
            for f in ("em_store", "em_group", "label_store", "crop_group", "classes")
        ],
        split="test",
    )
    write_datasplit(crops, tmp_path / "split.csv")
    out = tmp_path / "freq.json"
    assert (
        main(
            [
                "class-frequencies",
                "--datasplit",
                str(tmp_path / "split.csv"),
                "--out",
                str(out),
                "--allow-missing-classes",
            ]
        )
        == 0
    )
    data = json.loads(out.read_text())
    assert data["per_class"]["nuc"]["crops"] == 0 and data["per_class"]["ecs"]["crops"] == 2
    assert len(data["crops"]) == 2


def test_an_output_inside_a_data_store_is_refused(store_and_arrays, tmp_path, capsys):
    store = store_and_arrays[0]
    write_datasplit(split_crops(discover_crops(store.parent.parent), 0.0, 0.0), tmp_path / "s.csv")
    out = store / "class_frequencies.json"
    arguments = ["class-frequencies", "--datasplit", str(tmp_path / "s.csv"), "--out", str(out)]
    assert main([*arguments, "--allow-missing-classes"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"data store {store}" in err and not out.exists()


def test_a_corrupt_chunk_names_the_array_and_chunk(store_and_arrays):
    store, *_ = store_and_arrays
    chunk = store / "recon-1/labels/groundtruth/crop3/nuc/s0/0.0.0"
    chunk.write_bytes(b"truncated")  # a broken copy: no codec can decode it
    with pytest.raises(CellsegError) as error:
        class_frequencies(discover_crops(store.parent.parent), 8.0, allow_missing_classes=True)
    message = str(error.value)
    assert message.startswith(f"{store}/recon-1/labels/groundtruth/crop3/nuc/s0: chunk (0, 0, 0)")
    assert "cannot be decoded" in message and "copy the array again" in message
    assert "\n" not in message
