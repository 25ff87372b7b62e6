"""The demo's layout as data: its sizes, datasets and crops (no numpy, no zarr).

Kept apart from the generator (:mod:`cellseg.data.demo`) so that the workflow's planning
(:mod:`cellseg.prediction_plan`) can list a size's datasets without importing the generator.
A :class:`CropSpec` says where a ground-truth crop goes and what it annotates; a
:class:`SizePreset` (one of :data:`SIZES`) says how large the EM volumes and crops are.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from cellseg.classes import CLASSES

EM_PATH = "recon-1/em/fibsem-uint8"
LABELS_PATH = "recon-1/labels/groundtruth"
EM_VOXEL_NM = 8.0
EM_LEVELS = 3
LABEL_LEVELS = 3
MARKER_NAME = "cellseg_demo.json"


@dataclass(frozen=True)
class CropSpec:
    """One ground-truth crop of the demo layout.

    ``extent_em``: size in 8 nm EM voxels (z, y, x) at the default size; the s0 shape is
    ``extent_em * 8 / voxel_nm``. ``phase``: where its first voxel sits relative to the EM grid —
    "em": its lower edge on an EM s0 voxel edge (a 4 nm crop then has translation ≡ 6 mod 8 nm,
    and its s1 coincides with EM s0, as in the real data); "half": lower edge at an EM voxel
    centre (4 nm crops only; translation ≡ 2 mod 8); "odd": like "em" with an odd EM start
    index, so the crop is off the EM s1 / s2 grids. ``unknown``: a box, in fractions of the crop
    extent (z, y, x) as ``((lo, hi), (lo, hi), (lo, hi))``, encoded 255 in every array.
    ``voxel_nm`` is one size or ``(z, y, x)`` sizes (anisotropic crops; each at most the EM's).
    """

    number: int
    voxel_nm: float | tuple[float, float, float]
    extent_em: tuple[int, int, int]
    anchor: str
    phase: str
    classes: tuple[str, ...]
    unknown: tuple[tuple[float, float], ...] | None = None
    homogeneous: bool = False

    @property
    def name(self) -> str:
        return f"crop{self.number}"

    @property
    def voxel_size_nm(self) -> tuple[float, float, float]:
        """s0 voxel size ``(z, y, x)``, nm."""
        if isinstance(self.voxel_nm, tuple):
            return tuple(float(v) for v in self.voxel_nm)  # type: ignore[return-value]
        return (float(self.voxel_nm),) * 3


ALL = tuple(CLASSES)
NO_GOLGI = tuple(c for c in CLASSES if not c.startswith("golgi"))
DATASETS: tuple[tuple[str, tuple[CropSpec, ...]], ...] = (
    (
        "jrc_demo-1",
        (
            CropSpec(1, 8.0, (32, 128, 128), "golgi", "odd", ALL),
            CropSpec(2, 4.0, (24, 96, 96), "boundary", "em",
                     ("ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "er_mem", "er_lum", "nuc"),
                     unknown=((0.0, 0.5), (0.0, 1.0), (0.7, 1.0))),
            CropSpec(3, 16.0, (32, 96, 96), "nucleus_edge", "odd", ("ecs", "mito_lum", "endo_lum", "nuc")),
            CropSpec(4, 8.0, (16, 32, 32), "nucleus", "em", ("nuc", "ecs", "pm", "er_mem", "er_lum"),
                     homogeneous=True),
            CropSpec(5, 4.0, (24, 96, 96), "golgi_b", "half", ALL),
            CropSpec(6, 8.0, (24, 96, 128), "random", "em", NO_GOLGI),
            CropSpec(7, 8.0, (24, 96, 96), "random", "odd",
                     ("pm", "golgi_mem", "golgi_lum", "ves_mem", "ves_lum", "er_mem", "er_lum")),
        ),
    ),
    (
        "jrc_demo-2",
        (
            CropSpec(8, 4.0, (24, 96, 96), "boundary", "half",
                     ("ecs", "pm", "mito_mem", "mito_lum", "ves_mem", "ves_lum", "endo_mem",
                      "endo_lum", "er_mem", "er_lum", "nuc"),
                     unknown=((0.0, 1.0), (0.6, 1.0), (0.0, 0.4))),
            CropSpec(9, 8.0, (32, 96, 160), "nucleus_edge", "odd",
                     ("ecs", "pm", "mito_mem", "mito_lum", "ves_mem", "ves_lum", "er_mem",
                      "er_lum", "nuc")),
            CropSpec(10, 4.0, (24, 96, 96), "golgi", "em", ALL),
            CropSpec(11, 8.0, (32, 128, 128), "golgi_b", "odd", ALL),
            CropSpec(12, 16.0, (24, 96, 96), "random", "em", ("ecs", "pm", "mito_mem", "mito_lum", "nuc")),
            CropSpec(13, 8.0, (24, 96, 96), "random", "em",
                     ("mito_mem", "mito_lum", "mito_ribo", "ves_mem", "ves_lum", "er_mem", "er_lum")),
            CropSpec(14, 4.0, (24, 80, 80), "random", "half",
                     ("ecs", "pm", "endo_mem", "endo_lum", "golgi_mem", "golgi_lum")),
        ),
    ),
    (
        "jrc_demo-3",
        (
            CropSpec(15, 8.0, (32, 128, 160), "boundary", "em",
                     ("ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "endo_mem", "endo_lum",
                      "ves_mem", "ves_lum", "nuc"),
                     unknown=((0.5, 1.0), (0.0, 0.3), (0.0, 1.0))),
            CropSpec(16, 4.0, (24, 80, 80), "random", "half",
                     ("ecs", "pm", "er_mem", "er_lum", "ves_mem", "ves_lum")),
            CropSpec(17, 16.0, (24, 80, 80), "random", "em", ("ecs", "nuc", "mito_lum", "er_lum")),
            CropSpec(18, 8.0, (32, 128, 128), "golgi", "em", ALL),
            CropSpec(19, 8.0, (24, 96, 96), "golgi_b", "odd", ALL),
            CropSpec(20, 8.0, (24, 96, 96), "nucleus_edge", "em",
                     ("ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "endo_mem", "endo_lum", "nuc")),
            CropSpec(21, 4.0, (24, 96, 96), "random", "em",
                     ("er_mem", "er_lum", "ves_mem", "ves_lum", "golgi_mem", "golgi_lum")),
        ),
    ),
    (
        "jrc_demo-4",
        (
            CropSpec(22, 8.0, (32, 128, 128), "golgi", "odd", ALL),
            CropSpec(23, 4.0, (24, 96, 96), "golgi_b", "em", ALL),
            CropSpec(24, 8.0, (24, 128, 128), "boundary", "em",
                     ("ecs", "pm", "mito_mem", "mito_lum", "mito_ribo", "er_mem", "er_lum", "nuc"),
                     unknown=((0.0, 1.0), (0.0, 0.35), (0.0, 0.35))),
            CropSpec(25, 16.0, (32, 96, 96), "centre", "odd",
                     ("ecs", "pm", "mito_lum", "endo_lum", "ves_lum", "nuc")),
            CropSpec(26, 8.0, (24, 96, 128), "random", "em",
                     tuple(c for c in NO_GOLGI if c != "mito_ribo")),
            CropSpec(27, 4.0, (24, 80, 80), "random", "half",
                     ("mito_mem", "mito_lum", "mito_ribo", "er_mem", "er_lum")),
            CropSpec(28, 8.0, (24, 96, 96), "nucleus_edge", "em",
                     ("ecs", "pm", "ves_mem", "ves_lum", "er_mem", "er_lum", "nuc")),
        ),
    ),
)  # fmt: skip
"""The demo layout: (dataset name, crops). Two crops per dataset annotate all 14 classes (centred
on a Golgi stack next to a cell boundary); the others annotate subsets, as real crops do."""

BIG_CROP_NUMBER = 1 + max(spec.number for _, specs in DATASETS for spec in specs)
"""Number of the ``--size large`` crop added to the first dataset."""


REALISTIC_DATASETS: tuple[tuple[str, tuple[CropSpec, ...]], ...] = (
    (
        "jrc_realistic-1",
        (
            CropSpec(1, 4.0, (200, 200, 200), "golgi_stack", "em", ALL),
            CropSpec(2, 4.0, (200, 200, 200), "golgi_b_stack", "odd", ALL),
        ),
    ),
    (
        "jrc_realistic-2",
        (
            CropSpec(3, 4.0, (200, 200, 200), "golgi_stack", "odd", ALL),
            # 400³ voxels at (2.6, 2, 2) nm: 1040 × 800 × 800 nm, on whole EM voxels
            CropSpec(4, (2.6, 2.0, 2.0), (130, 100, 100), "golgi_b_front", "em", ALL),
            # coarse annotation: membranes thinner than a voxel are not annotated at 32 nm
            CropSpec(5, 32.0, (192, 256, 256), "boundary_bc", "em",
                     ("ecs", "pm", "mito_lum", "endo_lum", "nuc")),
        ),
    ),
)  # fmt: skip
"""The ``--size realistic`` layout: crops of the real training crops' geometry (400³ voxels at
4 nm, one at (2.6, 2, 2) nm, one at 32 nm), four of five annotating all 14 classes."""


@dataclass(frozen=True)
class SizePreset:
    """EM volume and crop scaling of a ``--size`` choice.

    ``layout`` and ``em_shapes`` replace :data:`DATASETS` and ``em_shape`` (one EM shape per
    dataset) when set. ``context_em``: the least EM (s0 voxels, z y x) between a crop's centre
    and the volume's edges, so that training patches centred anywhere in the crop read real EM.
    ``disjoint``: crops of a dataset are moved apart (in x, then y) until none overlaps, so no
    voxel is in two splits. ``packed``: instead, crops are placed one by one at the free start
    nearest their anchor (z, y or x), at least ``gap_em`` EM voxels (8 nm) from one another, so
    that no two crops of a dataset share or touch a voxel and each crop is a split unit of its
    own (:mod:`cellseg.data.split_units`); the ``large`` size's big crop is left where it is.
    """

    em_shape: tuple[int, int, int]  # EM s0 voxels (z, y, x) at 8 nm
    crop_scale: float  # multiplies every CropSpec.extent_em
    slab: int  # s0 z-slab (voxels) for EM and label writing; a multiple of 4
    big_crop_extent: tuple[int, int, int] | None = None  # extra 8 nm crop in the first dataset
    big_em_shape: tuple[int, int, int] | None = None  # first dataset's EM when big_crop is set
    layout: tuple[tuple[str, tuple[CropSpec, ...]], ...] | None = None
    em_shapes: tuple[tuple[int, int, int], ...] | None = None
    cell_nm: float = 1800.0  # spacing of the phantom cells in y-x, nm
    context_em: tuple[int, int, int] = (0, 0, 0)
    disjoint: bool = False
    packed: bool = False
    gap_em: int = 2

    @property
    def datasets(self) -> tuple[tuple[str, tuple[CropSpec, ...]], ...]:
        """(dataset name, crops) of this size."""
        return self.layout if self.layout is not None else DATASETS

    def scaled(self, factor: float) -> SizePreset:
        """The same layout with every length times ``factor`` (EM, crops, cells, context).

        For tests: a reduced variant runs the same code at a fraction of the cost. EM shapes stay
        multiples of 4 (the EM pyramid's block means); crop extents are rounded as usual.
        """

        def em(shape: tuple[int, int, int]) -> tuple[int, int, int]:
            return tuple(max(4, round(n * factor / 4) * 4) for n in shape)  # type: ignore[return-value]

        return SizePreset(
            em(self.em_shape),
            self.crop_scale * factor,
            self.slab,
            None if self.big_crop_extent is None else em(self.big_crop_extent),
            None if self.big_em_shape is None else em(self.big_em_shape),
            self.layout,
            None if self.em_shapes is None else tuple(em(e) for e in self.em_shapes),
            self.cell_nm * factor,
            tuple(math.ceil(n * factor) for n in self.context_em),  # type: ignore[arg-type]
            self.disjoint,
            self.packed,
            self.gap_em,
        )


SIZES: dict[str, SizePreset] = {
    # crops packed apart (no two of a dataset share or touch a voxel: each is its own split
    # unit, so the default split holds 7 test crops disjoint from training and validation)
    "small": SizePreset((48, 192, 192), 0.5, 48, packed=True, gap_em=1),
    "default": SizePreset((96, 320, 320), 1.0, 96, packed=True),
    # ≥ 2 GB of (uncompressed) labels for the streaming benchmarks: one 112×1024×1024 crop
    # at 8 nm with all 14 classes + `all` in the first dataset (it encloses that dataset's
    # other crops: they are one split unit).
    "large": SizePreset(
        (96, 320, 320), 1.0, 64, (112, 1024, 1024), (128, 1088, 1088), packed=True
    ),
    # The real training crops' geometry (REALISTIC_DATASETS). Cells of 2.4 µm in two rows, so a
    # 1.6 µm crop centred on a Golgi stack reaches the nucleus and a cell boundary; EM reaches
    # 128 voxels (half a 256² patch) beyond every crop centre in y-x and 16 (half of 32) in z.
    "realistic": SizePreset(
        (232, 600, 600), 1.0, 128,
        layout=REALISTIC_DATASETS, em_shapes=((232, 600, 600), (232, 600, 900)),
        cell_nm=2400.0, context_em=(16, 128, 128), disjoint=True,
    ),
}  # fmt: skip
