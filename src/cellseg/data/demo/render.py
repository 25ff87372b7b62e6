"""Rendering the demo's scene: EM slabs and label-crop slabs.

EM intensities are derived from the 8 nm class map (per-class mean and texture, chromatin clumps
in the nucleus, blur, noise). Everything is deterministic for a seed: noise is drawn per global
z slice (:func:`slice_noise`) and each slab is rendered with a halo, so any slab partition gives
the same volume without seams. Label crops are sampled on their own grid from the same scene
(:func:`render_crop_slab`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cellseg.classes import CLASSES
from cellseg.data.demo.placement import PlacedCrop
from cellseg.data.demo.scene import Scene
from cellseg.data.demo_layout import EM_VOXEL_NM
from cellseg.data.label_codes import NUC_CLASS_INDEX, UNKNOWN_CODE, code_to_class_index
from cellseg.ngff import downsample_labels

# EM appearance per class: (mean grey value, texture amplitude), the contrast polarity of
# CellMap's (inverted) FIB-SEM uint8 volumes: stained membranes dark; ECS brightest (it saturates
# at the top of data.em_range, 194); lumens of vesicles and Golgi cisternae light and smooth, the
# Golgi's a little darker; granular cytoplasm in between; ER lumen denser than the cytoplasm
# (smooth, where the cytoplasm is grainy); mitochondrial matrix dark with darker ribosome specks;
# mottled endosome content; nucleoplasm with chromatin clumps. The lumens and the cytoplasm sit
# about 16 grey levels apart within [10.6, 194.1] (the range the models see), so a membrane is
# told apart by what it encloses, as in real EM. Index = class index 0..14 (0 = cyto).
_EM_LOOK: dict[str, tuple[float, float]] = {
    "cyto": (150.0, 8.0),
    "ecs": (215.0, 3.0),
    "pm": (50.0, 4.0),
    "mito_mem": (45.0, 4.0),
    "mito_lum": (84.0, 6.0),
    "mito_ribo": (22.0, 3.0),
    "golgi_mem": (55.0, 4.0),
    "golgi_lum": (167.0, 3.0),
    "ves_mem": (50.0, 4.0),
    "ves_lum": (183.0, 3.0),
    "endo_mem": (48.0, 4.0),
    "endo_lum": (133.0, 16.0),
    "er_mem": (55.0, 4.0),
    "er_lum": (116.0, 3.0),
    "nuc": (100.0, 9.0),
}
_EM_MEAN = np.array([_EM_LOOK[n][0] for n in ("cyto", *CLASSES)], dtype=np.float32)
_EM_TEXTURE = np.array([_EM_LOOK[n][1] for n in ("cyto", *CLASSES)], dtype=np.float32)

# EM synthesis: texture and chromatin are low-pass filtered versions of one white-noise field; a
# final blur stands in for the point-spread function, then additive noise. The halo (voxels)
# covers the filters' reach (truncate=3: 3 * 2.5 + 3 * 0.7 < 10) so slabs join without seams.
_TEXTURE_SIGMA = 1.0
_CHROMATIN_SIGMA = 2.5
_BLUR_SIGMA = 0.7
_NOISE_STD = 6.0
_TRUNCATE = 3.0
_EM_HALO = 10


def slice_noise(key: Sequence[int], z_indices: range, shape_yx: tuple[int, int]) -> np.ndarray:
    """White noise (float32) drawn per global z index, so any slab partition gives the same field."""
    out = np.empty((len(z_indices), *shape_yx), dtype=np.float32)
    for i, zi in enumerate(z_indices):
        out[i] = np.random.default_rng([*key, zi + 1_000_000]).standard_normal(
            shape_yx, dtype=np.float32
        )
    return out


def em_slab(
    scene: Scene, key: Sequence[int], em_shape: Sequence[int], z0: int, z1: int
) -> np.ndarray:
    """EM s0 voxels ``z0:z1`` (uint8, full y-x) rendered with a halo, so slabs join seamlessly."""
    from scipy import ndimage

    halo = _EM_HALO
    ny, nx = int(em_shape[1]) + 2 * halo, int(em_shape[2]) + 2 * halo
    origin = (np.array([z0, 0, 0]) - halo) * EM_VOXEL_NM
    codes = scene.render(origin, EM_VOXEL_NM, (z1 - z0 + 2 * halo, ny, nx))
    cls = code_to_class_index(codes)
    del codes
    zs = range(z0 - halo, z1 + halo)

    noise = slice_noise((*key, 1), zs, (ny, nx))

    def lowpass(noise: np.ndarray, sigma: float) -> np.ndarray:
        # normalised by the analytic std of filtered unit white noise (not the sample std,
        # which would differ between slabs)
        return ndimage.gaussian_filter(noise, sigma, truncate=_TRUNCATE) * np.float32(
            (4 * np.pi * sigma**2) ** 0.75
        )

    intensity = _EM_MEAN[cls] + _EM_TEXTURE[cls] * lowpass(noise, _TEXTURE_SIGMA)
    chromatin = np.clip((lowpass(noise, _CHROMATIN_SIGMA) - 0.5) / 0.8, 0.0, 1.0)
    intensity -= np.float32(48.0) * chromatin * (cls == NUC_CLASS_INDEX)
    del chromatin, cls, noise
    intensity = ndimage.gaussian_filter(intensity, _BLUR_SIGMA, truncate=_TRUNCATE)
    intensity += np.float32(_NOISE_STD) * slice_noise((*key, 3), zs, (ny, nx))
    core = intensity[halo:-halo, halo:-halo, halo:-halo]
    return np.clip(np.round(core), 0, 255).astype(np.uint8)


def render_crop_slab(scene: Scene, crop: PlacedCrop, z0: int, z1: int) -> np.ndarray:
    """Label codes of s0 voxels ``z0:z1`` of a crop, with its unknown box applied.

    Crops coarser than the EM are rendered at 8 nm and reduced by block mode: point samples
    16 nm apart would cut thin structures at random, which no annotator does. Finer crops,
    anisotropic ones included, are sampled on their own grid.
    """
    voxel = np.array(crop.spec.voxel_size_nm)
    if (voxel > EM_VOXEL_NM).any():
        if not (voxel == voxel[0]).all():
            raise ValueError(f"{crop.spec.name}: anisotropic crops must be finer than the EM")
        base: float | np.ndarray = EM_VOXEL_NM
        factor = round(float(voxel[0]) / EM_VOXEL_NM)
    else:
        base, factor = voxel, 1
    t = np.array(crop.translation_nm)
    origin = t - (voxel - base) / 2 + np.array([z0 * voxel[0], 0.0, 0.0])
    shape = (z1 - z0, crop.shape[1], crop.shape[2])
    codes = scene.render(origin, base, tuple(n * factor for n in shape))
    while factor > 1:
        codes = downsample_labels(codes, UNKNOWN_CODE)
        factor //= 2
    if crop.spec.unknown is not None:
        box = [
            slice(round(lo * n), round(hi * n))
            for (lo, hi), n in zip(crop.spec.unknown, crop.shape, strict=True)
        ]
        zlo = max(box[0].start, z0) - z0
        zhi = min(box[0].stop, z1) - z0
        if zhi > zlo:
            codes[zlo:zhi, box[1], box[2]] = UNKNOWN_CODE
    return codes
