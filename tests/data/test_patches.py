from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from cellseg.data.dataset import (
    FixedPatches,
    PatchSpec,
    SampleRange,
    TrainPatches,
    decode_target,
    worker_init_fn,
)
from cellseg.data.patches import (
    TARGET_UNKNOWN,
    Augmentation,
    CropReader,
    PatchGrid,
    PatchTransform,
    infer_true_negatives,
    sample_linear,
)
from cellseg.data.store import discover_crops, read_crop_geometry
from cellseg.errors import CellsegError
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


def test_compact_target_decodes_to_the_float_target(blob_crop):
    crop, _ = blob_crop
    spec = PatchSpec((4, 16, 16), 8.0)
    rotate = Augmentation(rotate_xy=1.0)
    for infer in (False, True):
        compact = TrainPatches([crop], spec, rotate, seed=3, infer_true_negatives=infer)
        full = TrainPatches(
            [crop], spec, rotate, seed=3, infer_true_negatives=infer, compact_target=False
        )
        for index in range(6):
            small, reference = compact[index]["target"], full[index]["target"]
            assert small.dtype == torch.uint8 and reference.dtype == torch.float32
            assert set(small.unique().tolist()) <= {0, 1, TARGET_UNKNOWN}
            assert torch.isnan(reference).any() and (reference == 1).any()
            torch.testing.assert_close(decode_target(small), reference, equal_nan=True)
    # a float target passes through
    assert decode_target(reference) is reference


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


def test_sample_linear_matches_scipy_map_coordinates(make_store):
    """Trilinear EM on a rotated, off-centre grid partly outside the volume, against scipy's
    order-1 interpolation with edge values beyond the box (``mode="nearest"``)."""
    em = np.random.default_rng(2).integers(0, 256, size=(12, 20, 24)).astype(np.uint8)
    store = make_store(
        "lin",
        em,
        {
            "crop1": {
                "er_lum": (
                    [blob_labels()[:12, :20, :24].copy()],
                    [(8.0,) * 3],
                    [(4.0,) * 3],
                    SEMANTIC,
                )
            }
        },
    )
    (crop,) = discover_crops(store.parent.parent)
    geometry = read_crop_geometry(crop, 8.0)
    level = geometry.em.level_for(8.0)
    transform = PatchTransform.draw(np.random.default_rng(5), Augmentation(rotate_xy=1.0), True)
    grid = PatchGrid.build(np.array([41.3, 77.9, 150.2]), (5, 30, 30), 8.0, transform)
    got = sample_linear(geometry.em.open_level(level), level, grid)
    # voxel i is centred at 4 + 8 i nm
    z = np.broadcast_to(((grid.z_nm - 4) / 8)[:, None, None], got.shape)
    yx = np.broadcast_to((grid.yx_nm - 4) / 8, (*got.shape, 2))
    reference = ndimage.map_coordinates(
        em.astype(np.float64), [z, yx[..., 0], yx[..., 1]], order=1, mode="nearest"
    )
    assert got.dtype == np.float32
    assert (yx < 0).any() or (yx[..., 1] > em.shape[2] - 1).any(), "part of the grid is outside"
    np.testing.assert_allclose(got, reference, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("centre", [(64.0, 192.0, 192.0), (20.0, 30.0, 370.0)])
def test_labels_match_a_point_by_point_nearest_reference(blob_crop, centre):
    """Labels of a rotated grid (inside, and partly outside the crop in z, y and x): each point
    takes the label voxel whose cell holds it, NaN outside the crop or where unknown."""
    crop, labels = blob_crop
    transform = PatchTransform.draw(np.random.default_rng(9), Augmentation(rotate_xy=1.0), True)
    grid = PatchGrid.build(np.asarray(centre), (6, 20, 20), 8.0, transform)
    reader = CropReader(read_crop_geometry(crop, 8.0), 8.0, em_range=(LOW, HIGH))
    _, target = reader.read(grid)
    expected = np.full((6, 20, 20), np.nan, dtype=np.float32)
    for k, z_nm in enumerate(grid.z_nm):
        for i in range(20):
            for j in range(20):
                index = [int(np.floor((v - 4.0) / 8.0 + 0.5)) for v in (z_nm, *grid.yx_nm[i, j])]
                if all(0 <= n < size for n, size in zip(index, labels.shape, strict=True)):
                    value = labels[tuple(index)]
                    expected[k, i, j] = {0: 0.0, 1: 1.0}.get(int(value), np.nan)
    np.testing.assert_array_equal(target[12], expected)
    assert np.isnan(target[np.arange(14) != 12]).all(), "classes the crop lacks are NaN"


def two_crop_store(make_store, em: np.ndarray):
    """One EM volume, two crops of er_lum at different places: ``(16, 24, 24)`` voxels each."""
    labels = blob_labels()[:, :24, :24]
    crops = {
        "crop1": {"er_lum": ([labels], [(8.0,) * 3], [(4.0,) * 3], SEMANTIC)},
        "crop2": {
            "er_lum": ([labels[:, ::-1].copy()], [(8.0,) * 3], [(4.0, 196.0, 196.0)], SEMANTIC)
        },
    }
    store = make_store("two", em, crops)
    return discover_crops(store.parent.parent)


def test_em_cache_holds_each_crops_box_and_reads_identically(make_store):
    """Crops sharing one EM array each get their own cached EM box (not the first crop's)."""
    em = np.random.default_rng(4).integers(0, 256, size=SHAPE).astype(np.uint8)
    crops = two_crop_store(make_store, em)
    spec = PatchSpec((4, 16, 16), 8.0)
    plain = TrainPatches(crops, spec, seed=2)
    cached = TrainPatches(crops, spec, seed=2, cache_mb=4.0)
    seen = set()
    for index in range(12):
        a, b = plain[index], cached[index]
        seen.add(a["crop"])
        torch.testing.assert_close(a["image"], b["image"], rtol=0, atol=0)
        torch.testing.assert_close(a["target"], b["target"], equal_nan=True, rtol=0, atol=0)
    assert seen == {0, 1}
    em_boxes = [key for key in cached.readers[0].cache._entries if "/em/" in key]
    assert len(em_boxes) == 2


def test_finite_float_em_reads_like_the_same_uint8_em(make_store):
    em = np.random.default_rng(4).integers(0, 256, size=SHAPE).astype(np.uint8)
    spec = PatchSpec((4, 16, 16), 8.0)
    as_uint8 = TrainPatches(two_crop_store(make_store, em), spec, seed=3)
    crops = two_crop_store(make_store, em.astype(np.float32))
    as_float = TrainPatches(crops, spec, seed=3)
    for index in range(4):
        torch.testing.assert_close(as_float[index]["image"], as_uint8[index]["image"])


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_em_is_refused_in_training_validation_and_evaluation(make_store, bad):
    from cellseg.inference import PredictionGrid, read_em_slab

    em = np.full(SHAPE, 120.0, dtype=np.float32)
    em[:, 20:28, 20:28] = bad  # every patch and slab below reads this column
    crops = two_crop_store(make_store, em)
    location = f"{crops[0].em_store}/recon-1/em/fibsem-uint8/s0"
    spec = PatchSpec((16, 48, 48), 8.0)
    for read in (
        lambda: TrainPatches(crops, spec, seed=0)[0],
        lambda: TrainPatches(crops, spec, seed=0, cache_mb=8.0)[0],
        lambda: FixedPatches(crops, spec, patches_per_crop=1)[0],
    ):
        with pytest.raises(CellsegError, match="NaN or infinite") as error:
            read()
        assert location in str(error.value) and "\n" not in str(error.value)
    geometry = read_crop_geometry(crops[0], 8.0)
    level = geometry.em.level_for(8.0)
    grid = PredictionGrid.for_crop(geometry, 8.0)
    with pytest.raises(CellsegError, match="NaN or infinite") as error:
        read_em_slab(geometry.em.open_level(level), level, grid, (0, 4), (2, 8, 8), (LOW, HIGH))
    assert location in str(error.value)


def test_float_em_in_0_1_is_refused_where_training_reads_it(make_store):
    """Training and validation read EM through CropReader: float EM in [0, 1] would clip to
    the bottom of data.em_range everywhere (a blank image); on the EM's own scale it is read."""
    em = np.full(SHAPE, 0.5, dtype=np.float32)
    crop = two_crop_store(make_store, em)[0]
    geometry = read_crop_geometry(crop, 8.0)
    with pytest.raises(CellsegError) as error:
        CropReader(geometry, 8.0, em_range=(10.6, 194.1))
    location = f"{crop.em_store}/recon-1/em/fibsem-uint8/s0"
    assert str(error.value).startswith(
        f"{location}: float EM whose sampled values (central "
    ) and str(error.value).endswith(
        "lie in [0.5, 0.5], 100% of them outside data.em_range = [10.6, 194.1] (raw 8-bit "
        "values), so they would clip to its bottom and the model would see a blank image; "
        "rescale the EM to uint8 (0-255), or set data.em_range to the EM's own scale (e.g. "
        "[0, 1])"
    )
    CropReader(geometry, 8.0, em_range=(0.0, 1.0))
