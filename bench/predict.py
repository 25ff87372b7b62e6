"""Blockwise prediction (``cellseg predict``) against MONAI on the whole volume in memory.

Usage::

    bash scripts/env.sh python bench/predict.py [--quick] [--device cpu|cuda] [--dim 3d|2d]
        [--threads N] [--repeats K] [--tmp DIR] [--windows-only] [--tiling-only]

For a volume V (``--quick``: 16 x 128 x 128, else 32 x 256 x 256) and 8 V (twice as large on every
axis), with the demo UNet, its training window and the same overlap and blending:

* **throughput**, in this process, after a warm-up (imports, first forward passes), the two
  methods interleaved ``--repeats`` times per size (the median ratio is printed): voxels/s of
  :func:`cellseg.prediction.predict_volume` with the default blocks (EM read from zarr, the store
  created, blocks blended, probabilities and masks of 14 classes written, the store finalised;
  no pyramid levels) against ``monai.inferers.sliding_window_inference`` on the whole EM already
  in memory (logits only). The ratio blockwise / MONAI should be >= 0.9. What blockwise pays
  and MONAI does not is then timed on its own: ``init`` (planning, creating the store's 28
  arrays), the last block's write (not overlapped with any computation) and ``finish`` (final
  metadata).
* **memory**: peak RSS of a blockwise run with blocks of V's depth and half its height and width
  (V: 4 blocks, 8 V: 32 blocks of the same shape; both have a block being written while the
  next computes, as every run of more than one block has), and its ratio 8 V / V, which should
  be <= 1.1 (flat). One fresh process per run, which reads its own high-water mark
  (``VmHWM``): a process's peak only grows, and ``ru_maxrss`` of a child is no better, since
  Linux carries the parent's peak across ``exec`` (with the throughput runs before, every child
  reported this process's 1.4 GB).

* **the sliding window itself** (``--windows-only``): cellseg's
  :func:`cellseg.inference.sliding_window_logits` (what evaluation and prediction run) against
  ``monai.inferers.sliding_window_inference`` on the same V in memory, interleaved: the median
  time ratio MONAI / cellseg and the largest difference of their logits.
* **tiling** (``--tiling-only``): the windows a 2D model recomputes at block borders with the
  default blocks, counted, when windows are carried along z (before) and along x (now), and the
  time of a quarter-scale run both ways.

Prints one line per measurement and a summary; no assertion (the machine's load changes times).
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import zarr

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from cellseg import prediction  # noqa: E402
from cellseg.classes import NUM_CLASSES  # noqa: E402
from cellseg.data.multiscale import open_group, read_multiscale  # noqa: E402
from cellseg.inference import Predictor, sliding_window_logits  # noqa: E402
from cellseg.prediction import predict_volume  # noqa: E402
from cellseg.prediction_geometry import PredictionSettings, plan_prediction  # noqa: E402
from cellseg.prediction_plan import split_store_path  # noqa: E402
from peak_rss import peak_rss_mb  # noqa: E402  (bench/, this script's folder)

EM_GROUP = "recon-1/em/fibsem-uint8"


def make_em(path: Path, shape: tuple[int, int, int]) -> Path:
    """A smooth random uint8 EM volume at 8 nm (one level), chunks 64³."""
    from scipy import ndimage

    from cellseg.ngff import write_multiscale_array

    rng = np.random.default_rng(0)
    em = ndimage.gaussian_filter(rng.normal(size=shape).astype(np.float32), 2)
    em = np.clip(128 + 600 * em, 0, 255).astype(np.uint8)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    parent = root.require_group(EM_GROUP.rsplit("/", 1)[0])
    write_multiscale_array(parent, EM_GROUP.rsplit("/", 1)[1], [em], (8.0,) * 3, (4.0,) * 3)
    return path / EM_GROUP


def demo_predictor(dim: str, device: str) -> Predictor:
    from cellseg.models import build_model

    torch.manual_seed(0)
    network = build_model("unet", dim, preset="demo").to(device).eval()
    return Predictor(
        network=network,
        model="unet",
        dim=dim,
        patch_shape=(16, 64, 64) if dim == "3d" else (64, 64),
        resolution_nm=8.0,
        em_range=(0.0, 255.0),
        logit_shift=torch.zeros(NUM_CLASSES),
    )


def blockwise_seconds(
    model: Predictor, em_path: Path, out: Path, settings: PredictionSettings
) -> float:
    """Seconds of a whole ``predict_volume`` run into a new store (removed afterwards)."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    predict_volume(None, em_path, out, settings, predictor=model, log=io.StringIO())
    seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    return seconds


def monai_image(model: Predictor, em_path: Path, settings: PredictionSettings) -> torch.Tensor:
    """The EM image (ROI + margin) the windows slide over, in memory, as MONAI gets it."""
    store, group = split_store_path(em_path)
    em = read_multiscale(open_group(store), store, group)
    plan = plan_prediction(em, model, settings)
    box = [(0, n + 2 * m) for n, m in zip(plan.shape, plan.margin, strict=True)]
    image = torch.from_numpy(plan.reader(em, model.em_range).read(box))
    return image[None, None] if model.dim == "3d" else image[:, None]


def monai_logits(model: Predictor, image: torch.Tensor, settings: PredictionSettings):
    """MONAI's ``sliding_window_inference`` on an image in memory (the reference)."""
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        return sliding_window_inference(
            image, model.patch_shape, settings.sw_batch_size, model.network,
            overlap=settings.overlap, mode=settings.blend_mode, sw_device=settings.device,
            device="cpu", progress=False,
        )  # fmt: skip


def monai_seconds(model: Predictor, image: torch.Tensor, settings: PredictionSettings) -> float:
    started = time.perf_counter()
    monai_logits(model, image, settings)
    return time.perf_counter() - started


def sliding_windows(args: argparse.Namespace, shape: tuple[int, int, int]) -> float:
    """cellseg's sliding window (:func:`cellseg.inference.sliding_window_logits`, the one
    evaluation and prediction use) against MONAI's on the same image in memory: median time
    ratio MONAI / cellseg over interleaved repeats, and the largest difference of the logits."""
    torch.set_num_threads(args.threads)
    settings = PredictionSettings(device=args.device)
    model = demo_predictor(args.dim, args.device)
    image = torch.rand((1, 1, *shape) if args.dim == "3d" else (shape[0], 1, *shape[1:]))
    ours = sliding_window_logits(model.network, image, model.patch_shape, settings, args.device)
    difference = float((ours - monai_logits(model, image, settings)).abs().max())
    times: dict[str, list[float]] = {"monai": [], "cellseg": []}
    for repeat in range(args.repeats):
        for what in ("monai", "cellseg") if repeat % 2 == 0 else ("cellseg", "monai"):
            started = time.perf_counter()
            if what == "monai":
                monai_logits(model, image, settings)
            else:
                sliding_window_logits(
                    model.network, image, model.patch_shape, settings, args.device
                )
            times[what].append(time.perf_counter() - started)
    ratios = [m / c for m, c in zip(times["monai"], times["cellseg"], strict=True)]
    print(
        f"{args.dim} {shape}: sliding window in memory, MONAI {statistics.median(times['monai']):.2f}"
        f" s vs cellseg {statistics.median(times['cellseg']):.2f} s -> MONAI / cellseg "
        f"{statistics.median(ratios):.3f} (median of {args.repeats}: "
        f"{', '.join(f'{r:.3f}' for r in ratios)}); max |logits difference| {difference:.2e}",
        flush=True,
    )
    return statistics.median(ratios)


def fixed_costs(
    model: Predictor, em_path: Path, out: Path, settings: PredictionSettings
) -> dict[str, float]:
    """Milliseconds of what blockwise pays and MONAI does not, stage by stage: ``init`` (read the
    EM's metadata, plan, create the store), the last block's write (timed around
    ``prediction._write_block``: the only write no computation overlaps) and ``finish``."""
    shutil.rmtree(out, ignore_errors=True)
    writes: list[float] = []
    original = prediction._write_block

    def timed(*args, **kwargs):
        started = time.perf_counter()
        original(*args, **kwargs)
        writes.append(time.perf_counter() - started)

    log = io.StringIO()
    stages = {}
    prediction._write_block = timed
    try:
        for stage in ("init", "blocks", "pyramid"):
            started = time.perf_counter()
            run = predict_volume(
                None, em_path, out, settings, stage=stage, predictor=model, log=log
            )
            stages[stage] = time.perf_counter() - started
        # chunk files (one per chunk of each of the 28 arrays): each is a new file to create
        files = sum(1 for path in out.glob("*/*/s0/*") if path.name[0].isdigit())
    finally:
        prediction._write_block = original
        shutil.rmtree(out, ignore_errors=True)
    return {
        "init_ms": 1000 * stages["init"],
        "last_write_ms": 1000 * writes[-1],
        "finish_ms": 1000 * stages["pyramid"],
        "chunk_files": files,
        "blocks": run.plan.n_blocks,
    }


def throughput(args: argparse.Namespace, shapes: list[tuple[int, int, int]], tmp: Path) -> list:
    """Interleaved blockwise / MONAI timings per shape, in this process."""
    torch.set_num_threads(args.threads)
    settings = PredictionSettings(pyramid_levels=1, device=args.device)
    model = demo_predictor(args.dim, args.device)
    ems = [make_em(tmp / f"em{k}.zarr", shape) for k, shape in enumerate(shapes)]
    images = [monai_image(model, em, settings) for em in ems]
    # warm-up: imports and first passes (oneDNN primitives, zarr codecs) on both sides
    blockwise_seconds(model, ems[0], tmp / "out.zarr", settings)
    monai_seconds(model, images[0], settings)
    times: dict[int, dict[str, list[float]]] = {k: {"blocks": [], "monai": []} for k in range(2)}
    for repeat in range(args.repeats):
        for k in range(len(shapes)):
            # alternate which method goes first, so a drift in the machine's load hits both
            order = ("blocks", "monai") if repeat % 2 == 0 else ("monai", "blocks")
            for what in order:
                seconds = (
                    blockwise_seconds(model, ems[k], tmp / "out.zarr", settings)
                    if what == "blocks"
                    else monai_seconds(model, images[k], settings)
                )
                times[k][what].append(seconds)
    rows = []
    for k, shape in enumerate(shapes):
        voxels = int(np.prod(shape))
        ratios = [m / b for b, m in zip(times[k]["blocks"], times[k]["monai"], strict=True)]
        costs = fixed_costs(model, ems[k], tmp / "out.zarr", settings)
        blocks_s, monai_s = (statistics.median(times[k][w]) for w in ("blocks", "monai"))
        rows.append((shape, statistics.median(ratios), costs))
        print(
            f"{args.dim} {shape}: default blocks {list(settings.block_voxels)}: "
            f"{voxels / blocks_s:.3g} voxels/s vs MONAI {voxels / monai_s:.3g} -> ratio "
            f"{statistics.median(ratios):.3f} (median of {args.repeats}: "
            f"{', '.join(f'{r:.3f}' for r in ratios)}); blockwise - MONAI = "
            f"{1000 * (blocks_s - monai_s):.0f} ms, of which init {costs['init_ms']:.0f} ms, "
            f"last block's write {costs['last_write_ms']:.0f} ms ({costs['chunk_files']} chunk "
            f"files in {costs['blocks']} block(s)), finish {costs['finish_ms']:.0f} ms",
            flush=True,
        )
    return rows


def child(args: argparse.Namespace) -> None:
    """One blockwise run in this (fresh) process; prints a JSON line with its peak RSS."""
    settings = PredictionSettings(
        block_voxels=tuple(args.block),
        chunk_voxels=args.block[0],
        pyramid_levels=1,
        device=args.device,
    )
    torch.set_num_threads(args.threads)
    model = demo_predictor(args.dim, args.device)
    started = time.perf_counter()
    run = predict_volume(None, Path(args.em), Path(args.out), settings, predictor=model,
                         log=io.StringIO())  # fmt: skip
    print(
        json.dumps(
            {
                "seconds": time.perf_counter() - started,
                "blocks": run.plan.n_blocks,
                "peak_rss_mb": peak_rss_mb(),
            }
        )
    )


def peak_rss(args: argparse.Namespace, em: Path, out: Path, block: list[int]) -> dict:
    command = [sys.executable, __file__, "--child", "--em", str(em), "--out", str(out)]
    command += ["--block", *map(str, block), "--device", args.device, "--dim", args.dim]
    command += ["--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def tiling_plan(shape, window, block, carry_axis: int):
    """A plan of a volume of ``shape`` voxels (no EM needed: only windows are counted)."""
    from cellseg.inference import WindowGrid, context_voxels
    from cellseg.prediction_geometry import PredictionPlan

    margin = tuple(
        0 if w == 1 else context_voxels(w, n) for w, n in zip(window, shape, strict=True)
    )
    image = [n + 2 * m for n, m in zip(shape, margin, strict=True)]
    starts = WindowGrid.over(image, window, (0, 0, 0), 0.25).starts
    return PredictionPlan(
        Path("."), "", None, 8.0, (0.0, 0.0, 0.0), shape, (0, 0, 0), shape, window, (0, 0, 0),
        margin, starts, block, 64, carry_axis,
    )  # fmt: skip


def tiling(args: argparse.Namespace, tmp: Path) -> None:
    """Windows recomputed at block borders by a 2D model: carried along z (before: 2D windows
    never span z, so every y and x border recomputed) vs along x (now: only y borders), at the
    default blocks (64 x 1024 x 1024, 256^2 windows, overlap 0.25) by counting, and timed on a
    quarter-scale run of the demo 2D UNet (64^2 windows, blocks 8 x 256 x 256) in this process."""
    from dataclasses import replace

    from cellseg.inference import Blender

    for shape in [(64, 2048, 2048), (64, 4096, 4096), (64, 3000, 5000)]:
        fractions = {}
        for carry in (0, 2):
            plan = tiling_plan(shape, (1, 256, 256), (64, 1024, 1024), carry)
            computed, distinct = plan.window_counts(range(plan.n_blocks))
            fractions[carry] = computed / distinct - 1
        print(
            f"2d {shape}, blocks (64, 1024, 1024), windows 256^2: windows recomputed "
            f"{100 * fractions[0]:.1f} % (carried along z, before) -> {100 * fractions[2]:.1f} % "
            "(along x, now)",
            flush=True,
        )
    torch.set_num_threads(args.threads)
    model = demo_predictor("2d", args.device)
    em_path = make_em(tmp / "tiles.zarr", (8, 512, 512))
    store, group = split_store_path(em_path)
    em = read_multiscale(open_group(store), store, group)
    settings = PredictionSettings(chunk_voxels=8, block_voxels=(8, 256, 256), device=args.device)
    plan = plan_prediction(em, model, settings)
    times: dict[int, list[float]] = {0: [], 2: []}
    counts = {}
    for repeat in range(args.repeats):
        for carry in (0, 2) if repeat % 2 == 0 else (2, 0):
            tiles = replace(plan, carry_axis=carry)
            blender = Blender(model, tiles.windows, settings.blend_mode, settings.sw_batch_size)
            boxes = ((i, tiles.image_box(i)) for i in range(tiles.n_blocks))
            started = time.perf_counter()
            for _ in blender.logits(tiles.reader(em, model.em_range).read, boxes, carry):
                pass
            times[carry].append(time.perf_counter() - started)
            counts[carry] = blender.windows_run / tiles.windows.n_windows - 1
    ratios = [a / b for a, b in zip(times[0], times[2], strict=True)]
    print(
        f"2d (8, 512, 512), blocks (8, 256, 256), windows 64^2, demo UNet: recomputed "
        f"{100 * counts[0]:.1f} % -> {100 * counts[2]:.1f} %; time before / now "
        f"{statistics.median(ratios):.3f} (median of {args.repeats}: "
        f"{', '.join(f'{r:.3f}' for r in ratios)})",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="V = 16x128x128 (default 32x256x256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", default="3d", choices=["2d", "3d"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings per size")
    parser.add_argument(
        "--tmp",
        default=None,
        help="where the EM and output stores go (default: the system's temporary directory); "
        "creating a store's files costs what the file system charges, e.g. /dev/shm is tmpfs",
    )
    parser.add_argument(
        "--windows-only",
        action="store_true",
        help="only cellseg's sliding window against MONAI's, on V in memory",
    )
    parser.add_argument(
        "--tiling-only",
        action="store_true",
        help="only the windows a 2D model recomputes at block borders, before and now",
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--em", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--block", type=int, nargs=3, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    base = (16, 128, 128) if args.quick else (32, 256, 256)
    if args.windows_only:
        sliding_windows(args, base)
        return
    if args.tiling_only:
        with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
            tiling(args, Path(tmp))
        return
    shapes = [base, tuple(2 * n for n in base)]
    # memory: V in 2 x 2 blocks, 8 V in 4 x 4 x 2 blocks of the same shape (V in one block would
    # never have a block being written while another computes: not the steady state)
    block = [base[0], base[1] // 2, base[2] // 2]
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        rows = throughput(args, shapes, Path(tmp))
        peaks = []
        for k, shape in enumerate(shapes):
            em = Path(tmp) / f"em{k}.zarr" / EM_GROUP
            run = peak_rss(args, em, Path(tmp) / f"rss{k}.zarr", block)
            peaks.append(run["peak_rss_mb"])
            print(
                f"{args.dim} {shape}: blocks {block}: {run['blocks']} blocks, peak RSS "
                f"{run['peak_rss_mb']:.0f} MB ({run['seconds']:.1f} s, fresh process)",
                flush=True,
            )
    print(
        f"summary: throughput ratio blockwise / MONAI {rows[0][1]:.3f} at {shapes[0]}, "
        f"{rows[1][1]:.3f} at {shapes[1]}; peak RSS with blocks {block}: {peaks[0]:.0f} MB at V, "
        f"{peaks[1]:.0f} MB at 8 V: ratio {peaks[1] / peaks[0]:.2f}"
    )


if __name__ == "__main__":
    main()
