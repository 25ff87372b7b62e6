"""Writing the demo: each dataset's EM pyramid and label crops into a CellMap-layout store.

The generator writes only under ``--out`` and leaves a marker file there
(:data:`~cellseg.data.demo_layout.MARKER_NAME`, also a manifest of every crop); it refuses to
write into a non-empty directory without that marker unless ``--force`` is given. EM pyramid
levels are block means; label pyramid levels are block modes that turn a block containing any
unknown voxel into 255. Arrays are OME-NGFF multiscale groups written through
:mod:`cellseg.ngff`, slab by slab in z, so memory stays bounded whatever the size.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import shutil
import time
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from cellseg.data.demo.placement import PlacedCrop, plan_dataset, preset_of
from cellseg.data.demo.render import em_slab, render_crop_slab
from cellseg.data.demo.scene import Scene
from cellseg.data.demo_layout import (
    EM_LEVELS,
    EM_PATH,
    EM_VOXEL_NM,
    LABEL_LEVELS,
    LABELS_PATH,
    MARKER_NAME,
    SIZES,
)
from cellseg.data.label_codes import (
    CELLMAP_LABEL_IDS,
    INSTANCE_CLASSES,
    UNKNOWN,
    UNKNOWN_CODE,
    all_attrs,
    annotation_attrs,
    arrays_from_codes,
)
from cellseg.errors import CellsegError
from cellseg.ngff import create_multiscale_group, downsample_labels, downsample_mean

DESCRIPTION = "Embedded synthetic FIB-SEM demo data in the exact CellMap layout (SPEC §3)."


def write_em(
    root: Any, scene: Scene, key: Sequence[int], em_shape: Sequence[int], slab: int
) -> None:
    """EM pyramid s0..s2 written slab by slab (``slab`` voxels of s0 in z, a multiple of 4)."""
    arrays = create_multiscale_group(
        root.require_group(EM_PATH.rsplit("/", 1)[0]), EM_PATH.rsplit("/", 1)[1], em_shape, "uint8",
        [EM_VOXEL_NM] * 3, [0.0] * 3, EM_LEVELS,
    )  # fmt: skip
    for z0 in range(0, int(em_shape[0]), slab):
        z1 = min(z0 + slab, int(em_shape[0]))
        data = em_slab(scene, key, em_shape, z0, z1)
        arrays[0][z0:z1] = data
        for level in range(1, EM_LEVELS):
            f = 2**level
            arrays[level][z0 // f : z1 // f] = downsample_mean(data, f)


def write_crop(labels: Any, scene: Scene, crop: PlacedCrop, slab: int) -> dict[str, Any]:
    """Write one crop slab by slab; return its manifest entry (positives counted at s0)."""
    spec = crop.spec
    voxel = list(spec.voxel_size_nm)
    group = labels.require_group(spec.name)
    arrays = {
        "all": create_multiscale_group(
            group,
            "all",
            crop.shape,
            "uint8",
            voxel,
            crop.translation_nm,
            LABEL_LEVELS,
            all_attrs(spec.classes),
        )
    }
    for name in spec.classes:
        dtype = "uint16" if name in INSTANCE_CLASSES else "uint8"
        arrays[name] = create_multiscale_group(
            group,
            name,
            crop.shape,
            dtype,
            voxel,
            crop.translation_nm,
            LABEL_LEVELS,
            annotation_attrs(name),
        )
    positives = dict.fromkeys(spec.classes, 0)
    unknown_voxels = 0
    values_seen: set[int] = set()
    for z0 in range(0, crop.shape[0], slab):
        z1 = min(z0 + slab, crop.shape[0])
        levels = [render_crop_slab(scene, crop, z0, z1)]
        for _ in range(1, LABEL_LEVELS):
            levels.append(downsample_labels(levels[-1], UNKNOWN_CODE))
        values_seen.update(np.flatnonzero(np.bincount(levels[0].ravel())).tolist())
        unknown_voxels += int((levels[0] == UNKNOWN_CODE).sum())
        for level, codes in enumerate(levels):
            f = 2**level
            for name, data in arrays_from_codes(codes, spec.classes):
                arrays[name][level][z0 // f : z1 // f] = data
                if level == 0 and name != "all":
                    positives[name] += int(((data != 0) & (data != UNKNOWN)).sum())
    if spec.homogeneous and len(values_seen) != 1:
        raise AssertionError(
            f"{spec.name} is meant to be homogeneous but holds codes {sorted(values_seen)}"
        )
    return {
        "name": spec.name,
        "voxel_size_nm": voxel,
        "translation_nm": list(crop.translation_nm),
        "shape": list(crop.shape),
        "classes": list(spec.classes),
        "positive_voxels_s0": positives,
        "unknown_voxels_s0": unknown_voxels,
        "homogeneous": spec.homogeneous,
    }


def _prepare_out(out: Path, force: bool) -> None:
    """Refuse a non-empty directory that is not a previous demo output, unless ``force``."""
    if out.exists() and not out.is_dir():
        raise CellsegError(f"{out}: exists and is not a directory; choose another --out")
    if out.is_dir() and any(out.iterdir()):
        marker = out / MARKER_NAME
        if not marker.is_file() and not force:
            raise CellsegError(
                f"{out}: directory is not empty and holds no {MARKER_NAME} from a previous demo "
                f"run; choose an empty --out or pass --force to write into it"
            )
        if marker.is_file():
            try:
                previous = json.loads(marker.read_text())
            except json.JSONDecodeError:
                previous = {}
            # remove only what a previous run made, so stale datasets of another size go away
            for name in previous.get("datasets", {}):
                target = out / Path(name).name
                if target.is_dir():
                    shutil.rmtree(target)
    out.mkdir(parents=True, exist_ok=True)


def make_demo_data(
    out: Path | str,
    seed: int = 0,
    size: str = "default",
    force: bool = False,
    datasets: Sequence[str] | None = None,
    extent_scale: float = 1.0,
    workers: int = 1,
) -> list[Path]:
    """Write the synthetic CellMap-layout demo under ``out``; return the ``.zarr`` store paths.

    ``size``: "small" (tests: EM 48×192×192, crops halved), "default" (EM 96×320×320 voxels at
    8 nm per dataset, < 100 MB), "large" (adds crop 29, 112×1024×1024 voxels at 8 nm with all
    14 classes, ≥ 2 GB of uncompressed labels, to the first dataset) or "realistic" (two
    datasets with the real training crops' geometry: three crops of 400³ voxels at 4 nm and one
    of 400³ at (2.6, 2, 2) nm, all 14 classes each, and a 48×64×64 crop at 32 nm; EM of
    232×600×600 and 232×600×900 voxels at 8 nm). Deterministic for (``seed``, ``size``,
    ``extent_scale``). Writes ``out/cellseg_demo.json`` (the marker and a manifest of every crop)
    first as "incomplete" and finally as "complete". ``datasets`` restricts the output to those
    dataset names (for quick tests); each dataset depends only on (seed, size, its index).
    ``extent_scale`` multiplies every length of the size (:meth:`SizePreset.scaled`): a reduced
    variant for tests, the same code at a fraction of the cost. ``workers`` > 1 writes that many
    datasets at once, each in a process of its own (the same bytes: a dataset depends on
    nothing the others do).
    """
    preset = preset_of(size, extent_scale)
    names = [name for name, _ in preset.datasets]
    unknown_names = sorted(set(datasets or ()) - set(names))
    if unknown_names:
        raise CellsegError(f"datasets {unknown_names}: unknown; choose from {names}")
    out = Path(out)
    _prepare_out(out, force)
    started = time.perf_counter()
    manifest: dict[str, Any] = {
        "generator": "cellseg make-demo-data",
        "status": "incomplete",
        "seed": seed,
        "size": size,
        "class_ids": CELLMAP_LABEL_IDS,
        "datasets": {},
    }
    if extent_scale != 1.0:
        manifest["extent_scale"] = extent_scale
    marker = out / MARKER_NAME
    marker.write_text(json.dumps(manifest, indent=1))
    jobs = [
        (out, seed, size, extent_scale, index, name)
        for index, name in enumerate(names)
        if datasets is None or name in datasets
    ]
    if workers > 1 and len(jobs) > 1:
        # spawned, not forked: zarr's I/O threads do not survive a fork
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context) as pool:
            written = list(pool.map(_write_dataset, *zip(*jobs, strict=True)))
    else:
        written = [_write_dataset(*job) for job in jobs]
    stores: list[Path] = []
    for (*_, name), (store, entry) in zip(jobs, written, strict=True):
        manifest["datasets"][name] = entry  # in the datasets' order, however they finished
        stores.append(store)
    manifest["status"] = "complete"
    manifest["seconds"] = round(time.perf_counter() - started, 2)
    marker.write_text(json.dumps(manifest, indent=1))
    return stores


def _write_dataset(
    out: Path, seed: int, size: str, extent_scale: float, index: int, name: str
) -> tuple[Path, dict[str, Any]]:
    """Write dataset ``index`` (``name``) of the preset under ``out``: its store and its
    manifest entry (a top-level function: it runs in a worker process too)."""
    import zarr

    preset = preset_of(size, extent_scale)
    plan = plan_dataset(seed, preset, index)
    store = out / name / f"{name}.zarr"
    root = zarr.open_group(store, mode="w", zarr_format=2)
    write_em(root, plan.scene, (int(seed), index), plan.em_shape, preset.slab)
    labels = root.require_group(LABELS_PATH)
    entries = [write_crop(labels, plan.scene, placed, preset.slab) for placed in plan.crops]
    entry = {
        "store": str(store.relative_to(out)),
        "em_shape": list(plan.em_shape),
        "em_voxel_size_nm": EM_VOXEL_NM,
        "crops": entries,
    }
    return store, entry


def add_parser(subparsers: Any) -> None:
    """Register ``cellseg make-demo-data``."""
    parser = subparsers.add_parser(
        "make-demo-data",
        help="write synthetic FIB-SEM demo data in the CellMap layout",
        description=DESCRIPTION,
    )
    parser.add_argument("--out", type=Path, required=True, help="directory to write (only there)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--size", choices=tuple(SIZES), default="default",
        help="small (tests), default (< 100 MB), large (≥ 2 GB of labels, for benchmarks) or "
        "realistic (the real crops' geometry: 400³ voxels at 4 nm, 2.6×2×2 nm and 32 nm crops)",
    )  # fmt: skip
    parser.add_argument(
        "--force",
        action="store_true",
        help="write into a non-empty directory without a demo marker",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="datasets written at once, each in a process of its own (default 1; same bytes)",
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    stores = make_demo_data(
        args.out, seed=args.seed, size=args.size, force=args.force, workers=max(args.workers, 1)
    )
    size_mb = sum(f.stat().st_size for s in stores for f in s.rglob("*") if f.is_file()) / 1e6
    print(
        f"wrote {len(stores)} datasets to {args.out} ({size_mb:.1f} MB) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    return 0
