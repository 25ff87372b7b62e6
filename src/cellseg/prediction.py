"""Whole-dataset prediction to OME-Zarr: blockwise, resumable, parallel over jobs.

``cellseg predict`` runs a trained model over an EM volume (or a region of it) and writes, per
class, a probability array and a thresholded mask as OME-NGFF 0.4 multiscale images (zarr
format 2), at the model's resolution, in the EM's world coordinates (nm). Each layer has its own
``multiscales`` name (``probabilities/{class}``, ``masks/{class}``); the masks are NGFF label
images (``masks`` is a ``labels`` group, each mask's ``image-label`` source its probabilities)
and the root lists them too, so ome-zarr's reader (napari) opens the store as labels and images.
A mask is 1 exactly where the *stored* probability exceeds the class's threshold, at every
pyramid level (:func:`mask_of`). A class the model did not train (:mod:`cellseg.trained_classes`)
gets neither array; the store's settings list it as ``untrained_classes``. The groups (whole
organelles) of ``predict.groups`` (by default those whose labels the run trained on;
:mod:`cellseg.prediction_groups`) get the same two arrays: the union probability of their
members and the union of their masks. ``cellseg view`` (:mod:`cellseg.viewer`) shows a store in neuroglancer.

Settings, geometry and blending: :mod:`cellseg.prediction_geometry` (the grid over the EM
volume, the ROI, the windows, the blocks and their blended logits, and the memory they take).

Resumability and parallelism. A block's chunks are written and fsynced (files and directories),
then a small JSON marker ``OUT/.cellseg/blocks/{index}.json`` (atomically) recording which chunk
files it stored; a rerun skips blocks with a marker whose chunk files are all there, and names
and redoes the others, also in a complete store, which keeps the markers as one manifest
(:mod:`cellseg.prediction_store`). Blocks are numbered along the carry axis first; ``--part I
--parts N`` takes the I-th of N contiguous ranges, so N SLURM jobs write disjoint regions of one
store (N > 1 parts refuse a store that ``--stage init`` did not make first). ``--stage init`` creates the store,
``--stage pyramid`` writes the downsampled levels and the final metadata once every block is
done; the default runs all three.

Test-time augmentation (``--tta``, ``inference.tta``) is :mod:`cellseg.inference`'s, inside the
blending, as in evaluation and the figures; the store records it with its settings.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr

from cellseg.classes import CLASSES, GROUPS
from cellseg.config.options import settings_from_args
from cellseg.data.multiscale import Multiscale, open_group, read_multiscale
from cellseg.data.store import check_em_dtype, refuse_inside
from cellseg.errors import CellsegError
from cellseg.inference import BLEND_MODES, Predictor, resolve_device
from cellseg.io import write_json_atomic
from cellseg.losses import InferenceLogitAdjustment
from cellseg.ngff import (
    ChunkWriter,
    array_metadata,
    block_mean,
    blosc_zstd,
    image_label_attrs,
    labels_attrs,
    multiscales_attrs,
    pyramid_levels,
    write_documents,
)
from cellseg.ownership import STATE_DIR as OWNER_STATE_DIR
from cellseg.ownership import check_output_path
from cellseg.prediction_geometry import (
    PredictionPlan,
    PredictionSettings,
    block_logits,
    plan_prediction,
)
from cellseg.prediction_groups import (
    GROUP_CHOICES,
    GROUPS_KEY,
    MemberMasks,
    group_probability,
    pyramid_mask,
    store_groups,
)
from cellseg.prediction_plan import parse_roi, split_store_path
from cellseg.prediction_store import (
    DTYPES,
    MANIFEST,
    ChunkListing,
    dequantize,
    describe_lost,
    level_mask,
    lost_chunks,
    marker_path,
    mask_of,
    quantize,
    read_marker,
    reopen_lost,
    sync_chunks,
    write_manifest,
    write_marker,
)
from cellseg.trained_classes import (
    UNTRAINED_KEY,
    stored_classes,
    untrained_classes,
    untrained_line,
)
from cellseg.tta import TTA_MODES
from cellseg.voxels import format_resolution

__all__ = [
    "DTYPES",
    "PredictionPlan",
    "PredictionSettings",
    "block_logits",
    "parse_roi",
    "plan_prediction",
    "predict_volume",
    "split_store_path",
]

FORMAT = "cellseg-prediction-1"
STATE_DIR = OWNER_STATE_DIR
"""The store's working state (block markers); what makes a half-made store recognisably ours."""
KILL_AFTER_ENV = "CELLSEG_PREDICT_KILL_AFTER_BLOCKS"
"""Test-only fault injection: the process SIGKILLs itself after this many blocks written."""


# ------------------------------------------------------------------------------ the output store


def _group_attrs(name: str, plan: PredictionPlan, levels: int, kind: str) -> dict[str, Any]:
    """A class's (or a group's) zarr group attributes: ``multiscales`` named ``{kind}/{name}``
    (distinct layer names in a viewer); a mask is also an NGFF label image whose source is the
    class's probabilities; a group names its members."""
    attrs = multiscales_attrs(f"{kind}/{name}", plan.resolution_nm, plan.translation_nm, levels)
    if kind == "masks":
        attrs |= image_label_attrs(source_image=f"../../probabilities/{name}")
    attrs["cellseg"] = {"kind": kind, **({"members": list(GROUPS[name])} if name in GROUPS else {})}
    return attrs


def _spec(
    predictor: Predictor, plan: PredictionPlan, settings: PredictionSettings, checkpoint: str
) -> dict[str, Any]:
    untrained = untrained_classes(predictor.trained_classes)
    return {
        "format": FORMAT,
        "model": predictor.key,
        "checkpoint": checkpoint,
        "adjustment": settings.adjustment or predictor.default_mode,
        "overlap": settings.overlap,
        "blend_mode": settings.blend_mode,
        "tta": settings.tta,
        "thresholds": {c: float(t) for c, t in zip(CLASSES, settings.thresholds(), strict=True)},
        "dtype": settings.dtype,
        "em_range": list(predictor.em_range),
        **plan.describe(),
        # a model with untrained classes (cellseg.trained_classes) gets no arrays of them; the
        # settings of a model of all 14 stay as they were, so its stores still resume
        **({UNTRAINED_KEY: list(untrained)} if untrained else {}),
        # only a store with group maps records them: one without has the settings of before
        **({GROUPS_KEY: list(groups)} if (groups := store_groups(settings, predictor)) else {}),
    }


def file_digest(path: Path | str) -> str:
    """sha256 of a file (the checkpoint's identity in the output's provenance), hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**22), b""):
            digest.update(block)
    return digest.hexdigest()


def init_store(out: Path, spec: Mapping[str, Any], plan: PredictionPlan, overwrite: bool) -> str:
    """Create the output store (s0 of every class, empty), or keep one made with ``spec``.

    Returns:
        ``"created"``, ``"resumed"`` or ``"complete"``.

    Raises:
        CellsegError: ``out`` holds a prediction with other settings and not ``overwrite``, or
            is not a prediction store of cellseg's (never deleted, ``overwrite`` or not).
    """
    # only a store cellseg's own metadata identifies as a prediction is ever deleted below
    check_output_path(out, "--out", "store")
    if out.exists() and any(out.iterdir()):  # an empty directory is simply used
        try:
            held = dict(zarr.open_group(str(out), mode="r", zarr_format=2).attrs)["cellseg"]
        except Exception:  # not a store of ours (or a half-made one): never resumed
            held = {}
        old = held.get("prediction")
        if old == dict(spec):
            return "complete" if held.get("complete") else "resumed"
        if not overwrite:
            if not isinstance(old, dict):  # being created by another job, or a killed creation
                raise CellsegError(
                    f"{out}: a prediction store whose settings are not recorded yet (another "
                    "job may be creating it); wait for its --stage init to finish, or run "
                    "--stage init again once no job writes it"
                )
            # a key either side holds (groups: only a store with group maps records them)
            differs = next((k for k in {**old, **spec} if old.get(k) != spec.get(k)), "format")
            raise CellsegError(
                f"{out}: holds a prediction made with other settings ({differs} differs); "
                "delete it, choose another --out, or pass --overwrite (several --parts: rerun "
                "--stage init, which replaces it, before the parts)"
            )
        shutil.rmtree(out)
    # the state directory first: a store killed while being created is still recognised as
    # cellseg's (cellseg.ownership.is_prediction_store), so a rerun may replace it
    (out / STATE_DIR / "blocks").mkdir(parents=True, exist_ok=True)
    # every array's and group's metadata as zarr v2 JSON documents, directly (faster than
    # zarr's API; the same documents: cellseg.ngff.write_documents)
    chunks = plan.chunk_shape()
    classes = stored_classes(spec)
    layers = (*classes, *spec.get(GROUPS_KEY, ()))
    documents: dict[str, Any] = {".zgroup": {"zarr_format": 2}}
    for kind, dtype in (("probabilities", spec["dtype"]), ("masks", "uint8")):
        documents[f"{kind}/.zgroup"] = {"zarr_format": 2}
        array = array_metadata(plan.shape, chunks, dtype)
        for name in layers:
            documents[f"{kind}/{name}/.zgroup"] = {"zarr_format": 2}
            documents[f"{kind}/{name}/.zattrs"] = _group_attrs(name, plan, 1, kind)
            documents[f"{kind}/{name}/s0/.zarray"] = array
    # the NGFF labels convention: masks is the labels group; the root lists them for readers
    # that open the store's root (ome-zarr, napari)
    documents["masks/.zattrs"] = labels_attrs(layers)
    write_documents(out, documents)
    layout = (
        "probabilities/{class}/s{k}: probability (uint8: x 255); "
        "masks/{class}/s{k}: stored probability > threshold (0/1)"
    )
    if len(layers) > len(classes):
        layout += (
            "; probabilities/{group}/s{k}: 1 - prod(1 - p_member); "
            "masks/{group}/s{k}: union of the members' masks"
        )
    # the spec last: a store killed while being created is recognised as unfinished
    write_json_atomic(
        out / ".zattrs",
        {
            **labels_attrs([f"masks/{name}" for name in layers]),
            "cellseg": {"prediction": dict(spec), "complete": False, "layout": layout},
        },
    )
    return "created"


def _write_block(
    out: Path,
    writer: ChunkWriter,
    index: int,
    box: tuple[slice, slice, slice],
    probabilities: torch.Tensor,
    thresholds: np.ndarray,
    dtype: str,
    seconds: float,
    classes: Sequence[str] = CLASSES,
    groups: Sequence[str] = (),
) -> None:
    """Write one block's chunks (the classes', then each group's once its members are written:
    :mod:`cellseg.prediction_groups`), make them durable, then its marker (so a kill or a node
    crash in between redoes the block: a marker never outlives its chunks). ``classes`` and
    ``groups``: those the store holds (the model's trained classes, the groups of them)."""
    layers = (*classes, *groups)
    arrays = [f"{kind}/{name}/s0" for name in layers for kind in ("probabilities", "masks")]
    members = MemberMasks(groups, classes)
    for name in classes:  # class by class: temporaries 1/14 of the block
        c = CLASSES.index(name)
        stored = quantize(probabilities[c], dtype)
        mask = mask_of(stored, dtype, thresholds[c])
        writer.write(f"probabilities/{name}/s0", box, stored)
        writer.write(f"masks/{name}/s0", box, mask)
        for group in members.add(c, mask):
            stored = group_probability(probabilities, group, dtype)
            writer.write(f"probabilities/{group}/s0", box, stored)
            writer.write(f"masks/{group}/s0", box, members.pop(group))
    stored = sync_chunks(out, arrays, box, writer.chunks)
    write_marker(out, index, box, seconds, stored)


def predict_blocks(
    out: Path,
    predictor: Predictor,
    plan: PredictionPlan,
    em: Multiscale,
    settings: PredictionSettings,
    blocks: Sequence[int],
    device: torch.device,
    log: Any,
) -> tuple[int, int]:
    """Predict the blocks of ``blocks`` that have no marker yet, or whose marker records chunk
    files that are gone (named on ``log``); returns ``(done, skipped)``.

    Writing runs on a background thread (one block at a time) while the next block computes.
    """
    listing, todo = ChunkListing(out), []
    for b in blocks:
        marker = read_marker(out, b)
        lost = [] if marker is None else lost_chunks(marker, plan.chunk_shape(), listing)
        if lost:
            print(
                f"[{predictor.key}] block {b}: {len(lost)} chunk files it wrote are gone "
                f"({describe_lost(lost)}); predicting it again",
                file=log,
                flush=True,
            )
            marker_path(out, b).unlink(missing_ok=True)
        if marker is None or lost:
            todo.append(b)
    skipped = len(blocks) - len(todo)
    if not todo:
        return 0, skipped
    chunks = ChunkWriter(out, plan.chunk_shape())
    reader = plan.reader(em, predictor.em_range)
    mode = settings.adjustment or predictor.default_mode
    thresholds = settings.thresholds()
    kill_after = int(os.environ.get(KILL_AFTER_ENV, "0") or 0)
    done = 0
    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as background:
        pending: concurrent.futures.Future | None = None
        for index, logits in block_logits(predictor, plan, reader, todo, settings, device):
            probabilities = predictor.probabilities(logits, mode, in_place=True)
            del logits  # (the same tensor) not held while the next block computes
            seconds = time.perf_counter() - started
            if pending is not None:
                pending.result()  # at most one block waits to be written: bounded memory
                _release_freed_memory()
                done += 1
                _maybe_kill(kill_after, done)
            box = plan.block_box(index)
            pending = background.submit(
                _write_block, out, chunks, index, box, probabilities, thresholds,
                settings.dtype, seconds, predictor.trained_classes,
                store_groups(settings, predictor),
            )  # fmt: skip
            print(
                f"[{predictor.key}] block {index} {[(s.start, s.stop) for s in box]} "
                f"predicted ({seconds:.1f} s)",
                file=log,
                flush=True,
            )
            started = time.perf_counter()
        if pending is not None:
            pending.result()
            done += 1
            _maybe_kill(kill_after, done)
    return done, skipped


def _release_freed_memory() -> None:
    """Hand the memory freed by a written block back to the system (glibc's ``malloc_trim``;
    a no-op elsewhere). glibc keeps freed memory in its per-thread arenas (the writer thread's,
    zarr's codec threads') and raises its mmap threshold after each large free, so without this
    the RSS crept up block after block although each block's memory is released; a call costs
    well under a millisecond against seconds per block."""
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _maybe_kill(kill_after: int, done: int) -> None:
    if kill_after and done >= kill_after:
        os.kill(os.getpid(), signal.SIGKILL)  # a test's stand-in for a preempted job


def _downsample(values: np.ndarray, dtype: str) -> np.ndarray:
    """2×2×2 means of a dequantised ``(D, H, W)`` block (odd edges repeat their last voxel)."""
    return block_mean(dequantize(values, dtype), 2)


def _write_levels(
    root: zarr.Group,
    name: str,
    plan: PredictionPlan,
    settings: PredictionSettings,
    levels: int,
    mask: Callable[[int, tuple[slice, ...], np.ndarray], np.ndarray],
) -> None:
    """Levels s1… of class (or group) ``name``: probabilities are 2×2×2 means of the level
    below; ``mask(k, box, stored)`` is level ``k``'s mask over ``box`` (a class's: those means,
    as stored, above its threshold, :func:`mask_of`; a group's: the union of its members' masks
    of that level, :func:`cellseg.prediction_groups.pyramid_mask`)."""
    probabilities, masks = root[f"probabilities/{name}"], root[f"masks/{name}"]
    for k in range(1, levels):
        source = probabilities[f"s{k - 1}"]
        shape = tuple(-(-n // 2) for n in source.shape)
        chunks = plan.chunk_shape(shape)
        kwargs = dict(shape=shape, chunks=chunks, compressors=blosc_zstd(), fill_value=0)
        target = probabilities.create_array(f"s{k}", dtype=settings.dtype, overwrite=True, **kwargs)
        masks_k = masks.create_array(f"s{k}", dtype="uint8", overwrite=True, **kwargs)
        # level k+1 voxels per step: reads (2 chunk, 8 chunk, 8 chunk) of level k at once
        step = (plan.chunk, 4 * plan.chunk, 4 * plan.chunk)
        for z in range(0, shape[0], step[0]):
            for y in range(0, shape[1], step[1]):
                for x in range(0, shape[2], step[2]):
                    box = (slice(z, z + step[0]), slice(y, y + step[1]), slice(x, x + step[2]))
                    read = tuple(slice(2 * s.start, 2 * s.stop) for s in box)
                    mean = _downsample(np.asarray(source[read]), settings.dtype)
                    box = tuple(
                        slice(s.start, s.start + n) for s, n in zip(box, mean.shape, strict=True)
                    )
                    stored = quantize(torch.from_numpy(mean), settings.dtype)
                    target[box] = stored
                    masks_k[box] = mask(k, box, stored)


def write_pyramid(out: Path, plan: PredictionPlan, settings: PredictionSettings, log: Any) -> int:
    """Downsampled levels s1… of every class (probabilities: 2×2×2 means; masks: those means,
    as stored, above the threshold), the final ``multiscales``, and the store marked complete.

    Raises:
        CellsegError: some block has no marker yet (a job of the dataset has not finished).

    Returns:
        the number of levels.
    """
    markers = {b: read_marker(out, b) for b in range(plan.n_blocks)}
    missing = [b for b, marker in markers.items() if marker is None]
    if missing:
        raise CellsegError(
            f"{out}: {len(missing)} of {plan.n_blocks} blocks are not predicted yet (first: "
            f"{missing[0]}); run the block jobs (or cellseg predict without --stage) first"
        )
    listing = ChunkListing(out)
    lost = {b: lost_chunks(m, plan.chunk_shape(), listing) for b, m in markers.items() if m}
    lost = {b: files for b, files in lost.items() if files}
    if lost:  # never a pyramid of zeros read for lost chunks: the blocks are redone first
        for b in lost:
            marker_path(out, b).unlink()
        first = min(lost)
        raise CellsegError(
            f"{out}: chunk files of {len(lost)} finished blocks are gone (block {first}: "
            f"{describe_lost(lost[first])}); their markers are removed: run the block jobs "
            "again (or cellseg predict without --stage), then the pyramid"
        )
    levels = pyramid_levels(plan.shape, plan.chunk, settings.pyramid_levels)
    thresholds = settings.thresholds()
    attrs = json.loads((out / ".zattrs").read_text())
    classes = stored_classes(attrs["cellseg"]["prediction"])
    groups = tuple(attrs["cellseg"]["prediction"].get(GROUPS_KEY, ()))
    if levels > 1:
        root = zarr.open_group(str(out), mode="r+", zarr_format=2)
        for name in classes:
            mask = level_mask(settings.dtype, float(thresholds[CLASSES.index(name)]))
            _write_levels(root, name, plan, settings, levels, mask)
            print(f"pyramid: {name} ({levels} levels)", file=log, flush=True)
        # after every class: a group's mask of a level is its members' of that level
        for name in groups:
            _write_levels(root, name, plan, settings, levels, pyramid_mask(root, name, classes))
            print(f"pyramid: {name} ({levels} levels)", file=log, flush=True)
    # the groups' final multiscales (as JSON documents, like init_store), then the store is
    # marked complete: the root's attributes, atomically, last
    write_documents(
        out,
        {
            f"{kind}/{name}/.zattrs": _group_attrs(name, plan, levels, kind)
            for kind in ("probabilities", "masks")
            for name in (*classes, *groups)
        },
    )
    # the markers stay as one manifest (a later run finds chunk files lost since); the rest of
    # the working state goes
    write_manifest(out, markers)  # type: ignore[arg-type]
    attrs["cellseg"]["complete"] = True
    write_json_atomic(out / ".zattrs", attrs)
    for child in (out / STATE_DIR).iterdir():
        if child.name != MANIFEST:
            shutil.rmtree(child) if child.is_dir() else child.unlink()
    return levels


# ------------------------------------------------------------------------------ the whole run


@dataclass
class PredictionRun:
    """What :func:`predict_volume` did (for logs and tests)."""

    plan: PredictionPlan
    state: str
    blocks_done: int = 0
    blocks_skipped: int = 0
    levels: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def predict_volume(
    checkpoint: Path | str | None,
    em_path: Path | str,
    out: Path | str,
    settings: PredictionSettings | None = None,
    roi: Sequence[tuple[float, float]] | None = None,
    stage: str = "all",
    part: int = 0,
    parts: int = 1,
    overwrite: bool = False,
    predictor: Predictor | None = None,
    threads: int | None = None,
    log: Any = None,
) -> PredictionRun:
    """Predict an EM multiscale group into an OME-Zarr store (see the module docstring).

    Args:
        checkpoint: a ``best.pt`` of the train rule (or ``None`` with ``predictor``).
        em_path: ``STORE.zarr/GROUP`` of the EM multiscale group.
        out: the output store.
        settings: prediction settings.
        roi: ``((z0, z1), (y0, y1), (x0, x1))`` nm, or ``None`` for the whole volume.
        stage: ``all`` (init, every block of ``part``/``parts``, pyramid when every block is
            done), ``init``, ``blocks`` (init must have run) or ``pyramid``.
        part, parts: this job's share of the blocks.
        overwrite: replace a store made with other settings (else that is an error).
        predictor: a loaded model (tests, benchmarks); ``checkpoint`` then only names it.
        threads: CPU threads for torch (``None``: torch's default).
        log: text stream for progress (default stderr).
    """
    settings = settings or PredictionSettings()
    log = log or sys.stderr
    if stage not in ("all", "init", "blocks", "pyramid"):
        raise CellsegError(f"--stage {stage!r}: use all, init, blocks or pyramid")
    if threads is not None:
        torch.set_num_threads(max(int(threads), 1))
    out = Path(out)
    store, group = split_store_path(em_path)
    root = open_group(store)
    em = read_multiscale(root, store, group)
    check_em_dtype(root, em)  # a uint16 EM would saturate at the top of em_range
    refuse_inside(out, [store], "EM store")
    check_output_path(out, "--out", "store")
    device = resolve_device(settings.device)
    if predictor is None:
        if checkpoint is None:
            raise CellsegError("cellseg predict: --checkpoint is required")
        predictor = Predictor.from_checkpoint(checkpoint, device)
    predictor.network.to(device).eval()
    identity = (
        f"{Path(checkpoint).resolve()} sha256:{file_digest(checkpoint)[:16]}"
        if checkpoint is not None and Path(checkpoint).is_file()
        else str(checkpoint)
    )
    plan = plan_prediction(em, predictor, settings, roi)
    spec = _spec(predictor, plan, settings, identity)
    if parts > 1 and stage in ("all", "blocks") and not (out.is_dir() and any(out.iterdir())):
        # parts started at once would race to create the store (and the loser's error advised
        # --overwrite, deleting a store the others write): one init first, then the parts
        raise CellsegError(
            f"{out}: --parts {parts} needs the store made first: run this command once with "
            "--stage init (no --part/--parts), then the parts with --stage blocks"
        )
    if stage in ("all", "init") and not (parts > 1 and stage == "all"):
        state = init_store(out, spec, plan, overwrite or stage == "init")
    else:
        state = init_store(out, spec, plan, overwrite=False) if out.exists() else "missing"
        if state in ("missing", "created"):
            raise CellsegError(f"{out}: no prediction store yet; run --stage init first")
    reopen = stage in ("all", "init") and parts == 1
    if state == "complete" and reopen_lost(out, plan.chunk_shape(), reopen, predictor.key, log):
        state = "resumed"
    run = PredictionRun(plan, state)
    print(
        f"[{predictor.key}] {em.location} at {format_resolution(plan.resolution_nm, 'g')} nm: output {plan.shape} "
        f"voxels from {list(plan.translation_nm)} nm, {plan.n_blocks} blocks of {plan.block}, "
        f"windows {plan.window}, adjustment {spec['adjustment']}, on {device} ({state})",
        file=log,
        flush=True,
    )
    if (line := untrained_line(predictor.trained_classes)) is not None:
        print(f"[{predictor.key}] {line}", file=log, flush=True)
    if state == "complete" or stage == "init":
        return run
    if stage in ("all", "blocks"):
        blocks = plan.part_blocks(part, parts)
        run.blocks_done, run.blocks_skipped = predict_blocks(
            out, predictor, plan, em, settings, blocks, device, log
        )
        print(
            f"[{predictor.key}] part {part}/{parts}: {run.blocks_done} blocks predicted, "
            f"{run.blocks_skipped} already done",
            file=log,
            flush=True,
        )
    if stage == "pyramid" or (stage == "all" and parts == 1):
        run.levels = write_pyramid(out, plan, settings, log)
        run.state = "complete"
    return run


def finish_to(work: Path | str, final: Path | str) -> None:
    """Move a complete work store to its final path (the workflow's last step): a reader of
    ``final`` sees a whole prediction or none."""
    work, final = Path(work), Path(final)
    attrs = dict(zarr.open_group(str(work), mode="r", zarr_format=2).attrs).get("cellseg", {})
    if not attrs.get("complete"):
        raise CellsegError(f"{work}: prediction not complete; run its pyramid stage first")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(work, final)


def settings_dict(settings: PredictionSettings) -> dict[str, Any]:
    """The settings as plain data (logs)."""
    return asdict(settings)


# ------------------------------------------------------------------------------ command line


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="predict a whole EM volume (or a ROI) into an OME-Zarr store",
        description=(
            "Sliding-window prediction of an EM multiscale group with a best.pt: per class a "
            "probability array and a thresholded mask (OME-NGFF 0.4, zarr v2, with a pyramid), "
            "at the model's resolution in the EM's world coordinates. Resumable: a rerun skips "
            "finished blocks."
        ),
    )
    defaults = PredictionSettings()
    parser.add_argument("--checkpoint", type=Path, required=True, help="best.pt of the train rule")
    parser.add_argument(
        "--em", required=True, help="EM multiscale group: STORE.zarr/recon-1/em/fibsem-uint8"
    )
    parser.add_argument("--out", type=Path, required=True, help="output .zarr store")
    parser.add_argument("--roi", default=None, help="z0:z1,y0:y1,x0:x1 in nm (world coordinates)")
    parser.add_argument(
        "--adjustment",
        choices=[m.value for m in InferenceLogitAdjustment],
        default=None,
        help="logit adjustment (default: the model's own, as evaluation)",
    )
    parser.add_argument("--threshold", type=float, default=0.5, help="mask threshold")
    parser.add_argument("--dtype", choices=list(DTYPES), default=defaults.dtype)
    parser.add_argument("--overlap", type=float, default=defaults.overlap)
    parser.add_argument("--blend-mode", choices=BLEND_MODES, default=defaults.blend_mode)
    parser.add_argument("--sw-batch-size", type=int, default=defaults.sw_batch_size)
    parser.add_argument("--chunk-voxels", type=int, default=defaults.chunk_voxels)
    parser.add_argument(
        "--block-voxels",
        type=int,
        nargs=3,
        default=list(defaults.block_voxels),
        metavar=("BZ", "BY", "BX"),
    )
    parser.add_argument("--pyramid-levels", type=int, default=None, help="default: automatic")
    parser.add_argument(
        "--tta", choices=TTA_MODES, default=defaults.tta, help="test-time augmentation"
    )
    parser.add_argument(
        "--groups",
        choices=GROUP_CHOICES,
        default=defaults.groups,
        help="which groups (mito, golgi, ves, endo, er) get a probability array (of the union "
        "of their members) and a mask (the union of their masks): auto (default) those whose "
        "labels the run trained on, all, none",
    )
    parser.add_argument("--device", default=defaults.device, help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads for torch")
    parser.add_argument(
        "--stage",
        choices=["all", "init", "blocks", "pyramid"],
        default="all",
        help="all (default), or one step of a parallel run: init, blocks, pyramid",
    )
    parser.add_argument("--part", type=int, default=0, help="this job's range of blocks")
    parser.add_argument("--parts", type=int, default=1, help="number of block ranges (jobs)")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a store made with other settings"
    )
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    settings = settings_from_args(PredictionSettings, args, block_voxels=tuple(args.block_voxels))
    run = predict_volume(
        args.checkpoint,
        args.em,
        args.out,
        settings,
        parse_roi(args.roi),
        stage=args.stage,
        part=args.part,
        parts=args.parts,
        overwrite=args.overwrite,
        threads=args.threads,
    )
    print(f"{args.out}: {run.state}", file=sys.stderr)
    return 0
