from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cellseg.data.dataset import FixedPatches, PatchSpec, SampleRange, TrainPatches, worker_init_fn
from cellseg.data.patches import (
    Augmentation,
    CropReader,
    PatchGrid,
    PatchTransform,
    infer_true_negatives,
)
from cellseg.data.store import discover_crops, read_crop_geometry
from store_builders import SEMANTIC

SHAPE = (16, 48, 48)
LOW, HIGH = 40, 200


def blob_labels(seed: int = 0) -> np.ndarray:
    """Smooth random blobs (0/1) with an unknown (255) slab: labels at the EM's own 8 nm grid."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=SHAPE), sigma=3)
    labels = (field > 0).astype(np.uint8)
    labels[:, :, 28:32] = 255
    return labels


@pytest.fixture
def blob_crop(make_store):
    labels = blob_labels()
    # EM is a function of the labels: present → HIGH, absent or unknown → LOW
    em = np.where(labels == 1, HIGH, LOW).astype(np.uint8)
    store = make_store(
        "blobs",
        em,
        {"crop1": {"er_lum": ([labels], [(8.0,) * 3], [(4.0,) * 3], SEMANTIC)}},
    )
    (crop,) = discover_crops(store.parent.parent)
    return crop, labels


def read(crop, transform, centre, shape=(8, 24, 24)):
    reader = CropReader(read_crop_geometry(crop, 8.0), 8.0, em_range=(LOW, HIGH))
    em, target = reader.read(PatchGrid.build(np.asarray(centre), shape, 8.0, transform))
    return em, target[12]  # er_lum


@pytest.mark.parametrize("seed", range(6))
def test_axis_aligned_augmentation_keeps_em_and_labels_aligned_exactly(blob_crop, seed):
    crop, _ = blob_crop
    rng = np.random.default_rng(seed)
    transform = PatchTransform.draw(rng, Augmentation(0.5, 0.5, 0.5, 0.5, rotate_xy=0.0), True)
    # centre on a voxel centre (4 + 8k) offset by half a voxel for even sizes → grid on centres
    centre = (4 + 8 * 7.5, 4 + 8 * 23.5, 4 + 8 * 23.5)
    em, label = read(crop, transform, centre)
    annotated = ~np.isnan(label)
    assert annotated.any() and (~annotated).any()
    np.testing.assert_allclose(em[annotated], label[annotated], atol=1e-6)
    # a permutation of the same voxels: the multiset of values (and the NaN count) is unchanged
    _, plain = read(crop, PatchTransform(), centre)
    np.testing.assert_array_equal(np.sort(label.ravel()), np.sort(plain.ravel()))


@pytest.mark.parametrize("seed", range(4))
def test_rotation_keeps_alignment_and_never_blends_nan_or_labels(blob_crop, seed):
    crop, _ = blob_crop
    transform = PatchTransform.draw(np.random.default_rng(seed), Augmentation(rotate_xy=1.0), True)
    em, label = read(crop, transform, (64.0, 192.0, 192.0))
    values = label[~np.isnan(label)]
    assert set(np.unique(values)) <= {0.0, 1.0}, "nearest-neighbour labels stay 0/1"
    annotated = ~np.isnan(label)
    # EM is interpolated linearly, labels by nearest: they agree away from the blob edges
    agreement = np.mean((em[annotated] > 0.5) == (label[annotated] == 1))
    assert agreement > 0.9
    assert np.isnan(label).any(), "the unknown slab is still NaN after rotation"


def test_rotation_by_quarter_turn_equals_rot90(blob_crop):
    crop, _ = blob_crop
    quarter = PatchTransform(1.0, np.array([[0.0, -1.0], [1.0, 0.0]]))
    centre = (4 + 8 * 7.5, 4 + 8 * 23.5, 4 + 8 * 23.5)
    em_plain, label_plain = read(crop, PatchTransform(), centre)
    em_rot, label_rot = read(crop, quarter, centre)
    for k in (1, -1):
        if np.allclose(np.rot90(em_plain, k, axes=(1, 2)), em_rot, atol=1e-6):
            np.testing.assert_array_equal(np.rot90(label_plain, k, axes=(1, 2)), label_rot)
            return
    pytest.fail("a 90° rotation of the grid is not a rot90 of the patch")


def test_infer_true_negatives():
    target = np.full((14, 3), np.nan, dtype=np.float32)
    target[0] = [1, 0, np.nan]
    infer_true_negatives(target)
    assert np.all(target[1:, 0] == 0)  # positive ecs → all others absent
    assert np.isnan(target[1:, 1]).all()  # ecs absent says nothing about the others
    assert np.isnan(target[:, 2]).all()


def test_train_patches_shapes_and_determinism(blob_crop):
    crop, _ = blob_crop
    spec3 = PatchSpec((4, 16, 16), 8.0)
    stream = TrainPatches([crop], spec3, seed=7)
    first = [s["target"] for _, s in zip(range(3), stream, strict=False)]
    again = [
        s["target"] for _, s in zip(range(3), TrainPatches([crop], spec3, seed=7), strict=False)
    ]
    sample = next(iter(stream))
    assert sample["image"].shape == (1, 4, 16, 16) and sample["target"].shape == (14, 4, 16, 16)
    assert sample["image"].dtype == torch.float32
    for a, b in zip(first, again, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)
    torch.testing.assert_close(stream[2]["target"], first[2], equal_nan=True)
    other = TrainPatches([crop], spec3, seed=7, rank=1)[0]["target"]
    assert not torch.equal(torch.nan_to_num(other, 9), torch.nan_to_num(first[0], 9))
    spec2 = PatchSpec((16, 16), 8.0)
    sample2 = next(iter(TrainPatches([crop], spec2)))
    assert sample2["image"].shape == (1, 16, 16) and sample2["target"].shape == (14, 16, 16)


def test_stream_is_the_same_with_any_number_of_workers_3d(blob_crop):
    crop, _ = blob_crop
    dataset = TrainPatches([crop], PatchSpec((4, 16, 16), 8.0), seed=1)

    def draw(workers: int, start: int = 0) -> list[torch.Tensor]:
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=2,
            sampler=SampleRange(start, 8),
            num_workers=workers,
            worker_init_fn=worker_init_fn,
        )
        return [batch["image"] for batch in loader]

    serial, parallel = draw(0), draw(2)
    assert len(serial) == 4
    for a, b in zip(serial, parallel, strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(serial[0], serial[1]), "consecutive batches are different patches"
    # resuming at sample 4 gives exactly the second half of the stream
    for a, b in zip(serial[2:], draw(2, start=4), strict=True):
        torch.testing.assert_close(a, b)


def test_fixed_patches_are_fixed(blob_crop):
    crop, _ = blob_crop
    patches = FixedPatches([crop], PatchSpec((4, 16, 16), 8.0), patches_per_crop=2, seed=3)
    assert len(patches) == 2
    torch.testing.assert_close(patches[1]["image"], patches[1]["image"])
    assert not torch.equal(patches[0]["image"], patches[1]["image"])


def test_array_cache_gives_identical_patches_and_stays_bounded(blob_crop):
    crop, _ = blob_crop
    spec = PatchSpec((4, 16, 16), 8.0)
    plain = TrainPatches([crop], spec, seed=5)
    cached = TrainPatches([crop], spec, seed=5, cache_mb=1.0)
    for index in range(6):
        a, b = plain[index], cached[index]
        torch.testing.assert_close(a["image"], b["image"])
        torch.testing.assert_close(a["target"], b["target"], equal_nan=True)
    cache = cached.readers[0].cache
    assert cache is not None and 0 < cache.bytes <= cache.max_bytes
    # a cache smaller than one crop's arrays holds nothing and still reads correctly
    tiny = TrainPatches([crop], spec, seed=5, cache_mb=0.001)
    torch.testing.assert_close(tiny[3]["target"], plain[3]["target"], equal_nan=True)
    assert tiny.readers[0].cache.bytes <= tiny.readers[0].cache.max_bytes
