"""Torch datasets of CellMap patches for training and validation.

Both datasets are map-style and hold only picklable crop descriptions; each data-loader worker
opens its own read-only zarr handles and keeps at most ``cache_mb`` of crop arrays, so memory
stays flat however many patches are drawn (no per-epoch growth, ``num_workers > 0`` works in 2D
and 3D).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from cellseg.classes import GROUP_INDEX
from cellseg.data.patches import (
    TARGET_UNKNOWN,
    ArrayCache,
    Augmentation,
    CropReader,
    PatchGrid,
    PatchTransform,
    crop_sampling_weights,
)
from cellseg.data.store import Crop, CropGeometry, read_crop_geometry
from cellseg.errors import CellsegError
from cellseg.voxels import Resolution, Vec3, as_vec3


@dataclass(frozen=True)
class PatchSpec:
    """Shape and resolution of the patches a model consumes.

    Attributes:
        shape: ``(H, W)`` for 2D models or ``(D, H, W)`` for 3D models, in voxels.
        resolution_nm: voxel size in nm: one number (isotropic; 8 in the seed) or ``(z, y, x)``
            (anisotropic data: a 2D model reads y-x planes at the y, x spacing, a 3D model
            ``(D, H, W)`` voxels at the three spacings).
    """

    shape: tuple[int, ...]
    resolution_nm: Resolution = 8.0

    def __post_init__(self) -> None:
        if len(self.shape) not in (2, 3) or min(self.shape) < 1:
            raise CellsegError(
                f"patch shape {list(self.shape)}: expected [H, W] (2D) or [D, H, W] (3D) positive sizes"
            )

    @property
    def is_3d(self) -> bool:
        return len(self.shape) == 3

    @property
    def voxel_nm(self) -> Vec3:
        """``(z, y, x)`` voxel size, nm."""
        return as_vec3(self.resolution_nm)

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        """``(D, H, W)`` with D = 1 for 2D patches."""
        return tuple(self.shape) if self.is_3d else (1, *self.shape)  # type: ignore[return-value]


def _to_sample(em: np.ndarray, target: np.ndarray, spec: PatchSpec, crop_index: int) -> dict:
    """``(D, H, W)`` EM and ``(C, D, H, W)`` target → ``image (1, …)``, ``target (C, …)`` tensors."""
    if not spec.is_3d:
        em, target = em[0], target[:, 0]
    return {
        "image": torch.from_numpy(np.ascontiguousarray(em[None])),
        "target": torch.from_numpy(np.ascontiguousarray(target)),
        "crop": crop_index,
    }


def decode_target(target: torch.Tensor) -> torch.Tensor:
    """A compact ``uint8`` target (0 absent, 1 present, 255 unknown) → float32 with NaN
    unknown, on its device; a float target is returned as it is."""
    if target.dtype != torch.uint8:
        return target
    decoded = target.to(torch.float32)
    return decoded.masked_fill_(target == TARGET_UNKNOWN, float("nan"))


def has_groups(geometries: Sequence[CropGeometry]) -> bool:
    """Whether some crop holds a group label (:data:`cellseg.classes.GROUP_NAMES`): then every
    target of the dataset carries the group channels after the 14 (one shape to batch), else
    targets keep their 14 channels exactly as before (issue 33 item 2)."""
    return any(name in GROUP_INDEX for g in geometries for name in g.labels)


def open_crops(crops: Sequence[Crop], resolution_nm: Resolution) -> list[CropGeometry]:
    """Validate and parse every crop up front, so a broken dataset fails before training starts."""
    if not crops:
        raise CellsegError("no crops to read: the datasplit has no rows for this split")
    return [read_crop_geometry(crop, resolution_nm) for crop in crops]


class TrainPatches(Dataset):
    """Randomly placed, augmented training patches, addressed by a running sample index.

    Sample ``i`` is drawn from a generator seeded by ``(seed, rank, i)``, so the stream is the
    same whatever the number of data-loader workers, and training resumed at sample ``i`` sees
    exactly the patches an uninterrupted run would (no sampler state to save). Crops are drawn
    with probability proportional to their annotated volume (optionally boosting crops that
    annotate rarely annotated classes); the patch centre is uniform inside the crop's annotated
    box, so every patch is centred on annotated voxels.

    Args:
        crops: training crops.
        spec: patch shape and resolution.
        augmentation: random spatial transforms (:class:`Augmentation`).
        seed: base random seed.
        rank: DDP rank, so that ranks draw different patches.
        rare_class_boost: see :func:`cellseg.data.patches.crop_sampling_weights`.
        em_range, infer_true_negatives: see :class:`cellseg.data.patches.CropReader`.
        cache_mb: per-process memory for crops' arrays (:class:`ArrayCache`); 0 reads every
            patch from the store.
        compact_target: the compact ``uint8`` target (default); False gives float32 with NaN
            (``bench/loader.py`` compares the two).

    Items:
        ``{"image": (1, *shape) float32 in [0, 1], "target": (14, *shape) uint8, "crop": int}``
        (``(14 + NUM_GROUPS, *shape)`` when some crop holds a group label: :func:`has_groups`)
        with the compact target (0 absent, 1 present, 255 unknown: a quarter of float32's bytes
        through shared memory and pinned copies; :func:`decode_target` on the device restores
        float32 with NaN); any non-negative index is valid (the dataset is unbounded).
    """

    def __init__(
        self,
        crops: Sequence[Crop],
        spec: PatchSpec,
        augmentation: Augmentation | None = None,
        seed: int = 0,
        rank: int = 0,
        rare_class_boost: float = 0.0,
        em_range: tuple[float, float] = (10.6, 194.1),
        infer_true_negatives: bool = False,
        cache_mb: float = 0.0,
        compact_target: bool = True,
    ) -> None:
        super().__init__()
        self.crops = list(crops)
        self.compact_target = compact_target
        self.spec = spec
        self.augmentation = augmentation if augmentation is not None else Augmentation()
        self.seed = seed
        self.rank = rank
        geometries = open_crops(self.crops, spec.resolution_nm)
        cache = ArrayCache(int(cache_mb * 2**20)) if cache_mb > 0 else None
        depth, height, width = spec.grid_shape
        # a rotated patch reaches half its diagonal from its centre, plus a voxel of interpolation
        # (y and x spacings may differ: the larger bounds the rotated patch's reach)
        r_z, r_y, r_x = spec.voxel_nm
        context = (
            (depth / 2 + 1) * r_z,
            (np.hypot(height, width) / 2 + 1) * max(r_y, r_x),
        )
        self.groups = has_groups(geometries)
        self.readers = [
            CropReader(
                g, spec.resolution_nm, em_range, infer_true_negatives, cache, context, self.groups
            )
            for g in geometries
        ]
        self.weights = crop_sampling_weights(geometries, rare_class_boost)

    def __getitem__(self, index: int) -> dict:
        return self.sample(np.random.default_rng([self.seed, self.rank, int(index)]))

    def __iter__(self) -> Iterator[dict]:
        """Samples ``0, 1, 2, …`` (for quick looks; training uses a :class:`SampleRange`)."""
        index = 0
        while True:
            yield self[index]
            index += 1

    def sample(self, rng: np.random.Generator) -> dict:
        """Draw one patch with ``rng``."""
        index = int(rng.choice(len(self.readers), p=self.weights))
        reader = self.readers[index]
        start, stop = reader.geometry.bounds_nm
        centre = rng.uniform(start, stop)
        transform = PatchTransform.draw(rng, self.augmentation, self.spec.is_3d)
        grid = PatchGrid.build(centre, self.spec.grid_shape, self.spec.resolution_nm, transform)
        em, target = reader.read(grid, compact=self.compact_target)
        return _to_sample(em, target, self.spec, index)


class SampleRange(Sampler[int]):
    """Sample indices ``start, start + 1, …, stop - 1``: one epoch (or its rest, on resume)."""

    def __init__(self, start: int, stop: int) -> None:
        self.set_range(start, stop)

    def set_range(self, start: int, stop: int) -> None:
        """Move to another range; a loader reads it at its next ``iter()``."""
        self.start, self.stop = int(start), int(stop)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.start, self.stop))

    def __len__(self) -> int:
        return max(self.stop - self.start, 0)


class FixedPatches(Dataset):
    """A fixed, unaugmented set of patches for validation: the same patches every epoch.

    ``patches_per_crop`` centres per crop are drawn once from ``seed`` (uniform in the crop's
    annotated box), so validation Dice is comparable from epoch to epoch and across models.
    """

    def __init__(
        self,
        crops: Sequence[Crop],
        spec: PatchSpec,
        patches_per_crop: int = 4,
        seed: int = 0,
        em_range: tuple[float, float] = (10.6, 194.1),
        infer_true_negatives: bool = False,
    ) -> None:
        super().__init__()
        self.crops = list(crops)
        self.spec = spec
        geometries = open_crops(self.crops, spec.resolution_nm)
        self.groups = has_groups(geometries)
        self.readers = [
            CropReader(g, spec.resolution_nm, em_range, infer_true_negatives, groups=self.groups)
            for g in geometries
        ]
        rng = np.random.default_rng(seed)
        self.items: list[tuple[int, np.ndarray]] = []
        for index, geometry in enumerate(geometries):
            start, stop = geometry.bounds_nm
            for _ in range(patches_per_crop):
                self.items.append((index, rng.uniform(start, stop)))

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> dict:
        index, centre = self.items[item]
        grid = PatchGrid.build(centre, self.spec.grid_shape, self.spec.resolution_nm)
        em, target = self.readers[index].read(grid)
        return _to_sample(em, target, self.spec, index)


def worker_init_fn(worker_id: int) -> None:
    """Keep each worker to one intra-op thread (workers already run in parallel), and keep the
    memory it frees for its next patch (:func:`keep_freed_memory`)."""
    torch.set_num_threads(1)
    keep_freed_memory()


def keep_freed_memory(mmap_mb: int = 32, trim_mb: int = 128) -> bool:
    """Ask glibc's malloc to reuse freed memory instead of returning it to the system.

    A patch allocates and frees the same few MB of temporaries every time. By default glibc
    serves allocations that large with fresh ``mmap`` pages (and trims its heap as soon as they
    are freed), so each patch page-faults all of them back in, which slows a data-loader
    worker's patch stream several-fold (``bench/loader.py``; docs/benchmarks.md). Blocks under
    ``mmap_mb`` come from the heap, and up to ``trim_mb`` of free heap is kept per process
    (memory that the next patch reuses, so the peak is unchanged). Larger blocks (a 3D seed
    patch's target) still use ``mmap``. A no-op (returns False) where the C library is not glibc.
    """
    import ctypes

    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(mallopt(m_mmap_threshold, mmap_mb * 2**20)) and bool(
        mallopt(m_trim_threshold, trim_mb * 2**20)
    )
