"""The preflight of all 8 seed models on one GPU, on data of the real crops' geometry.

    bash scripts/env.sh python bench/preflight.py [--data DIR] [--out DIR] [--models unet_2d,...]

Writes synthetic data with the real crops' geometry (``cellseg make-demo-data --size realistic``,
two datasets, 400³ label crops at 4 nm; skipped when ``--data`` already holds it), a datasplit of
all its crops for training and validation and their class frequencies, then runs ``cellseg
preflight`` (:mod:`cellseg.training.preflight`) for every model of the seed preset
(config/experiments/l40s_comparison.yaml over config/config.yaml) at its seed settings (batch
per GPU, accumulation, bf16 autocast, TF32, workers, cache) with **one** GPU each (``gpus: 1``:
no DDP, so no all-reduce figure; the per-GPU figures are those of the seed's 2-4 GPU jobs, whose
ranks each have their own loader), one model after the other, and prints the table of
``results/preflight.md``. The seed's 32 CPUs per job are assumed on the machine; fewer cores
lower the loader supply (each rank's ``num_workers`` workers share them).

Needs a CUDA GPU: on a machine without one it stops at once with one line (nothing is written).
Meant to take about 1 minute per model on an L40S-class GPU with 16+ cores (under 10 minutes for
the 8; not yet run on a GPU: docs/benchmarks.md), after the data: making them took 9 minutes on
this project's 2 busy cores (``--data DIR`` keeps and reuses them). Its pieces (the data, the
datasplit, the class count and one seed model's preflight with ``run_on_cpu``) were run on CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = [REPO / "config/config.yaml", REPO / "config/experiments/l40s_comparison.yaml"]


def require_cuda() -> str:
    """The GPU's name, or exit with one line when this process cannot use CUDA."""
    import torch

    if not torch.cuda.is_available():
        sys.exit(
            "bench/preflight.py: error: needs a CUDA GPU and torch sees none (torch "
            f"{torch.__version__}, CUDA build {torch.version.cuda}); run it on a GPU node"
        )
    return torch.cuda.get_device_name(0)


def prepare_data(data: Path) -> tuple[Path, Path]:
    """The realistic-geometry demo under ``data`` (made once), its datasplit (every crop for
    training and validation: the preflight reads training patches) and class frequencies."""
    from cellseg.data.datasplit import make_datasplit, write_datasplit
    from cellseg.data.demo import make_demo_data
    from cellseg.data.frequencies import class_frequencies
    from cellseg.io import write_json_atomic

    stores = data / "stores"
    if not stores.is_dir():
        make_demo_data(stores, size="realistic")
    crops = make_datasplit([stores], 0.2, 0.0, resolution_nm=8.0)
    datasplit = data / "datasplit.csv"
    write_datasplit(crops, datasplit)
    frequencies = data / "class_frequencies.json"
    if not frequencies.is_file():
        train = [crop for crop in crops if crop.split == "train"]
        write_json_atomic(frequencies, class_frequencies(train, 8.0, allow_missing_classes=True))
    return datasplit, frequencies


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="where the data are (made there once)")
    parser.add_argument("--out", type=Path, help="the runs' JSONs and preflight.md")
    parser.add_argument("--models", default="all", help="comma-separated {model}_{dim} keys")
    parser.add_argument("--retries", type=int, default=2, help="the profile's retries")
    args = parser.parse_args()

    device = require_cuda()
    from cellseg.config.layers import layered_config, read_layer
    from cellseg.training.preflight import launch_preflight
    from cellseg.training.preflight_table import format_table
    from cellseg.training.preflight_verdict import read_result

    scratch = Path(tempfile.mkdtemp(prefix="cellseg-preflight-"))
    data = args.data or scratch / "data"
    out = args.out or scratch / "preflight"
    started = time.perf_counter()
    datasplit, frequencies = prepare_data(data)
    print(f"data ready in {time.perf_counter() - started:.0f} s ({data}); GPU: {device}")
    config = layered_config(read_layer(LAYERS[0]), [read_layer(p) for p in LAYERS[1:]])
    config["data"]["roots"] = [str(data / "stores")]
    keys = list(config["models"]) if args.models == "all" else args.models.split(",")
    documents = []
    for key in keys:
        # one GPU: the per-GPU demand and each rank's own loader, as in the seed's DDP jobs
        config["models"][key] = {**(config["models"][key] or {}), "gpus": 1}
        before = time.perf_counter()
        status = launch_preflight(
            config, key, datasplit, frequencies, out / f"{key}.json", args.retries
        )
        if status != 0:
            print(f"{key}: the preflight failed (exit {status}); its output is above")
            continue
        documents.append(read_result(out / f"{key}.json"))
        print(f"{key}: {documents[-1]['verdict']} ({time.perf_counter() - before:.0f} s)")
    table = format_table(documents)
    (out / "preflight.md").write_text(table)
    print()
    print(table)
    print(json.dumps({"total_s": round(time.perf_counter() - started), "out": str(out)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
