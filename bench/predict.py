"""Blockwise prediction (``cellseg predict``) against MONAI on the whole volume in memory.

Usage::

    bash scripts/env.sh python bench/predict.py [--quick] [--device cpu|cuda] [--dim 3d|2d]

For a volume V and 8 V (twice as large on every axis), with the demo UNet, its training window and
the same overlap and blending:

* **throughput**: voxels/s of :func:`cellseg.prediction.predict_volume` (EM read from zarr,
  blocks, probabilities and masks of 14 classes written; no pyramid) against
  ``monai.inferers.sliding_window_inference`` on the whole EM already in memory (logits only).
  The ratio blockwise / MONAI should be >= 0.9 with the default blocks (one y-x tile per layer).
* **memory**: peak RSS of a blockwise run in a fresh process, with blocks smaller than the
  volume's y-x plane (so 8 V has 8 × as many blocks): flat as the volume grows; and the ratio
  there, which pays for the windows recomputed at y-x block borders.

Prints one line per measurement and a summary; no assertion (the machine's load changes times).
"""

from __future__ import annotations

import argparse
import io
import json
import resource
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

from cellseg.classes import NUM_CLASSES  # noqa: E402
from cellseg.evaluation import EvaluationSettings, Predictor, sliding_window_logits  # noqa: E402
from cellseg.prediction import (  # noqa: E402
    EMReader,
    PredictionSettings,
    plan_prediction,
    predict_volume,
    split_store_path,
)

EM_GROUP = "recon-1/em/fibsem-uint8"


def make_em(path: Path, shape: tuple[int, int, int]) -> Path:
    """A smooth random uint8 EM volume at 8 nm (one level), chunks 64³."""
    from scipy import ndimage

    from cellseg.data.demo import write_multiscale_array

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


def blockwise(em_path: Path, out: Path, settings: PredictionSettings, dim: str) -> dict:
    model = demo_predictor(dim, settings.device)
    started = time.perf_counter()
    run = predict_volume(None, em_path, out, settings, predictor=model, log=io.StringIO())
    seconds = time.perf_counter() - started
    return {
        "seconds": seconds,
        "voxels": int(np.prod(run.plan.shape)),
        "blocks": run.plan.n_blocks,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def monai_whole(em_path: Path, settings: PredictionSettings, dim: str) -> dict:
    model = demo_predictor(dim, settings.device)
    store, group = split_store_path(em_path)
    from cellseg.data.store import open_group, read_multiscale

    em = read_multiscale(open_group(store), store, group)
    plan = plan_prediction(em, model, settings)
    box = [(0, n + 2 * m) for n, m in zip(plan.shape, plan.margin, strict=True)]
    image = torch.from_numpy(EMReader(plan, em, model.em_range).read(box))  # not timed
    evaluation = EvaluationSettings(
        overlap=settings.overlap,
        blend_mode=settings.blend_mode,
        sw_batch_size=settings.sw_batch_size,
    )
    started = time.perf_counter()
    if dim == "3d":
        sliding_window_logits(model.network, image[None, None], model.patch_shape, evaluation,
                              settings.device)  # fmt: skip
    else:
        sliding_window_logits(model.network, image[:, None], model.patch_shape, evaluation,
                              settings.device)  # fmt: skip
    return {"seconds": time.perf_counter() - started, "voxels": int(np.prod(plan.shape))}


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    settings = PredictionSettings(
        block_voxels=tuple(args.block), pyramid_levels=1, device=args.device
    )
    torch.set_num_threads(args.threads)
    if args.what == "monai":
        result = monai_whole(Path(args.em), settings, args.dim)
    else:
        result = blockwise(Path(args.em), Path(args.out), settings, args.dim)
    print(json.dumps(result))


def measure(what: str, em: Path, out: Path, block, args) -> dict:
    command = [sys.executable, __file__, "--child", what, "--em", str(em), "--out", str(out)]
    command += ["--block", *map(str, block), "--device", args.device, "--dim", args.dim]
    command += ["--threads", str(args.threads)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="V = 16x128x128 (default 32x256x256)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dim", default="3d", choices=["2d", "3d"])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--em", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--block", type=int, nargs=3, default=[64, 1024, 1024])
    parser.add_argument("--what", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.what = args.child
        child(args)
        return
    base = (16, 128, 128) if args.quick else (32, 256, 256)
    small_block = [64, base[1], base[2]]  # V: one block per layer; 8 V: 2 x 2 tiles x 2 layers
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for factor in (1, 2):
            shape = tuple(n * factor for n in base)
            em = make_em(Path(tmp) / f"em{factor}.zarr", shape)
            monai = measure("monai", em, Path(tmp) / "unused", [64, 1024, 1024], args)
            default = measure("blocks", em, Path(tmp) / f"a{factor}.zarr", [64, 1024, 1024], args)
            tiled = measure("blocks", em, Path(tmp) / f"b{factor}.zarr", small_block, args)
            for name, run in (("default blocks", default), (f"blocks {small_block}", tiled)):
                ratio = (run["voxels"] / run["seconds"]) / (monai["voxels"] / monai["seconds"])
                rows.append((shape, name, run, ratio, monai))
                print(
                    f"{args.dim} {shape}: {name}: {run['blocks']} blocks, "
                    f"{run['voxels'] / run['seconds']:.3g} voxels/s vs MONAI "
                    f"{monai['voxels'] / monai['seconds']:.3g} -> ratio {ratio:.3f}; "
                    f"peak RSS {run['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
    growth = rows[3][2]["peak_rss_mb"] / rows[1][2]["peak_rss_mb"]
    print(
        f"summary: ratio (default blocks) {rows[0][3]:.3f} at V, {rows[2][3]:.3f} at 8 V; "
        f"peak RSS with blocks {small_block}: {rows[1][2]['peak_rss_mb']:.0f} MB at V, "
        f"{rows[3][2]['peak_rss_mb']:.0f} MB at 8 V (x{growth:.2f})"
    )


if __name__ == "__main__":
    main()
