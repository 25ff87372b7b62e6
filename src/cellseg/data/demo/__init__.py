"""Embedded synthetic FIB-SEM demo data in the exact CellMap layout (SPEC §3).

``cellseg make-demo-data --out DIR --seed N [--size small|default|large|realistic] [--force]``
writes four datasets ``DIR/{name}/{name}.zarr`` (zarr format 2, written with zarr 3.x; two for
``realistic``, whose crops have the real training crops' geometry: see :data:`SIZES`):

* EM: ``recon-1/em/fibsem-uint8/s0, s1, s2`` (uint8; 8, 16, 32 nm isotropic; first-voxel centre
  of s0 at 0 nm, level k shifted by half the voxel-size growth, i.e. +4 nm and +12 nm);
* labels: ``recon-1/labels/groundtruth/cropN/{class}/s0, s1, s2`` for each annotated class and
  ``cropN/all`` (class ids), at 4, 8 or 16 nm per crop (``realistic``: 4 nm, (2.6, 2, 2) nm and
  32 nm), placed by their translation only.

How it works, one module per concern:

* :mod:`cellseg.data.demo_layout` — the sizes, datasets and crops, as data;
* :mod:`.scene` — each dataset is a *scene*, an analytic description in nanometres of phantom
  cells holding a nucleus and organelles, which can be sampled on any voxel grid, so the EM and
  every label crop come from the same geometry and agree to the nanometre;
* :mod:`.placement` — where each crop goes in its dataset;
* :mod:`.render` — EM slabs (per-class intensity and texture, chromatin, blur, noise) and label
  crop slabs sampled from the scene;
* :mod:`.labels` — CellMap's encodings: ``cropN/all`` holds CellMap label ids
  (:data:`CELLMAP_LABEL_IDS`; ``nuc`` is a composite class in CellMap, so its voxels carry the
  nucleoplasm id; the mapping is also the ``cellseg.class_ids`` attribute of every ``all``
  group), each class a 0/1 (or instance id) array with 255 where unannotated;
* :mod:`.writer` — the OME-NGFF groups (through :mod:`cellseg.ngff`), slab by slab, the marker
  and manifest, and the command line.

Everything is deterministic for a seed (``numpy.random.default_rng``).
"""

from __future__ import annotations

from cellseg.data.demo.placement import DatasetPlan, PlacedCrop, plan_dataset, plan_layout
from cellseg.data.demo.scene import Scene, build_scene
from cellseg.data.demo.writer import add_parser, make_demo_data
from cellseg.data.demo_layout import (
    BIG_CROP_NUMBER,
    DATASETS,
    EM_LEVELS,
    EM_PATH,
    EM_VOXEL_NM,
    LABEL_LEVELS,
    LABELS_PATH,
    MARKER_NAME,
    REALISTIC_DATASETS,
    SIZES,
    CropSpec,
    SizePreset,
)
from cellseg.data.label_codes import (
    CELLMAP_LABEL_IDS,
    INSTANCE_CLASSES,
    INSTANCE_ENCODING,
    SEMANTIC_ENCODING,
    UNKNOWN,
    UNKNOWN_CODE,
    annotation_attrs,
    code_to_class_index,
)

__all__ = [
    "BIG_CROP_NUMBER",
    "CELLMAP_LABEL_IDS",
    "DATASETS",
    "EM_LEVELS",
    "EM_PATH",
    "EM_VOXEL_NM",
    "INSTANCE_CLASSES",
    "INSTANCE_ENCODING",
    "LABELS_PATH",
    "LABEL_LEVELS",
    "MARKER_NAME",
    "REALISTIC_DATASETS",
    "SEMANTIC_ENCODING",
    "SIZES",
    "UNKNOWN",
    "UNKNOWN_CODE",
    "CropSpec",
    "DatasetPlan",
    "PlacedCrop",
    "Scene",
    "SizePreset",
    "add_parser",
    "annotation_attrs",
    "build_scene",
    "code_to_class_index",
    "make_demo_data",
    "plan_dataset",
    "plan_layout",
]
