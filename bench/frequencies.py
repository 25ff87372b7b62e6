"""Peak memory of ``cellseg class-frequencies`` on ≥ 2 GB of labels vs a naive whole-array count.

    bash scripts/env.sh python bench/frequencies.py [--quick] [--data DIR] [--keep]

Makes the large demo store (``make-demo-data --size large``: a 112×1024×1024 crop with all 14
classes at 8 nm, over 2 GB of uncompressed labels; 1.5-2.5 min, 2.7 GB RAM) in a subprocess,
unless ``--data`` names one made before; ``--keep`` leaves the new one in place (its path is
printed). Every crop is put in the training split, then each counter runs in its own fresh
subprocess whose peak RSS is read from ``os.wait4`` (that child's own rusage, so neither the
generator nor another counter contaminates it):

* ``cellseg class-frequencies`` (``python -m cellseg``): the command the workflow runs;
* ``class_frequencies()``: the same function called from a process that imports only its module;
* naive: reads each label array whole with zarr, converts and counts it (what a counter without
  streaming does), with the same encoding and level choice, so the counts must agree.

Also printed: two import-only children (the frequencies module; the CLI, whose parser imports
every sub-command), so each counter's own memory can be told apart from the fixed cost, the
uncompressed label bytes counted and in the training crops, wall times and the ratios. Target: cellseg's peak RSS < 1 GB. ``--quick`` uses the default
demo store (< 100 MB of labels; seconds), which does not test the target.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from cellseg.classes import CLASSES
from cellseg.data.datasplit import make_datasplit, read_datasplit, write_datasplit
from cellseg.data.frequencies import class_frequencies
from cellseg.data.store import read_crop_geometry

RESOLUTION_NM = 8.0
IMPORTS = "import numpy, zarr, cellseg.data.frequencies"
# what `cellseg class-frequencies` loads before counting: only its own sub-command's module
CLI_IMPORTS = "from cellseg.cli import build_parser; build_parser('class-frequencies')"


def run_child(command: list[str]) -> tuple[float, float]:
    """Run ``command``; return (its peak RSS in MB, wall seconds). Raises on failure."""
    started = time.perf_counter()
    process = subprocess.Popen(command)
    # wait4 gives this child's own rusage; RUSAGE_CHILDREN would be the max over every child
    # so far, the 2.8 GB generator included
    _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)}: exit status {process.returncode}")
    return usage.ru_maxrss / 1024, wall  # Linux reports KiB


def naive_count(datasplit: Path, out: Path) -> None:
    """The baseline: each label array read whole, converted and counted (run as a child)."""
    annotated = dict.fromkeys(CLASSES, 0.0)
    positive = dict.fromkeys(CLASSES, 0.0)
    for crop in read_datasplit(datasplit, ["train"]):
        geometry = read_crop_geometry(crop, RESOLUTION_NM)
        for name, multiscale in geometry.labels.items():
            level = multiscale.level_for(RESOLUTION_NM)
            array = multiscale.open_level(level)
            target = geometry.encodings[name].to_target(np.asarray(array[:]))
            weight = float(np.prod(np.asarray(level.voxel_size_nm) / RESOLUTION_NM))
            annotated[name] += int(np.count_nonzero(~np.isnan(target))) * weight
            positive[name] += int(np.count_nonzero(target == 1.0)) * weight
            del target
    per_class = {
        n: {"annotated_voxels": annotated[n], "positive_voxels": positive[n]} for n in CLASSES
    }
    out.write_text(json.dumps({"per_class": per_class}))


def label_bytes(datasplit: Path) -> tuple[int, int, int]:
    """(bytes counted, largest array counted, label bytes of every level) of the training crops."""
    counted = largest = every_level = 0
    for crop in read_datasplit(datasplit, ["train"]):
        geometry = read_crop_geometry(crop, RESOLUTION_NM)
        for multiscale in geometry.labels.values():
            chosen = multiscale.level_for(RESOLUTION_NM)
            for level in multiscale.levels:
                array = multiscale.open_level(level)
                every_level += array.nbytes
                if level == chosen:
                    counted += array.nbytes
                    largest = max(largest, array.nbytes)
    return counted, largest, every_level


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="default demo store (seconds)")
    parser.add_argument("--data", type=Path, help="an existing demo store root to count")
    parser.add_argument("--keep", action="store_true", help="keep the store this run makes")
    parser.add_argument("--naive-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--function-child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.naive_child is not None:
        naive_count(args.naive_child, args.out)
        return
    if args.function_child is not None:
        crops = read_datasplit(args.function_child, ["train"])
        args.out.write_text(json.dumps(class_frequencies(crops, RESOLUTION_NM, True)))
        return

    scratch = Path(tempfile.mkdtemp(prefix="cellseg-bench-frequencies-"))
    try:
        root = args.data
        size = "default" if args.quick else "large"
        if root is None:
            root = scratch / f"demo_{size}"
            generator_mb, generator_s = run_child(
                [sys.executable, "-m", "cellseg", "make-demo-data", "--out", str(root),
                 "--seed", "0", "--size", size]
            )  # fmt: skip
            print(f"generator (--size {size}): {generator_s:.0f} s, peak RSS {generator_mb:.0f} MB")
        datasplit = scratch / "datasplit.csv"
        write_datasplit(make_datasplit([root], 0.0, 0.0), datasplit)
        counted, largest, every_level = label_bytes(datasplit)
        print(f"data: {root}; cpus: {os.cpu_count()}; load average: {os.getloadavg()[0]:.2f}")
        print(
            f"labels: {every_level / 1e9:.2f} GB uncompressed in the training crops (all levels); "
            f"counted at {RESOLUTION_NM:g} nm: {counted / 1e9:.2f} GB, largest array "
            f"{largest / 1e6:.0f} MB"
        )
        ours_json, function_json, naive_json = (
            scratch / "cellseg.json",
            scratch / "function.json",
            scratch / "naive.json",
        )
        rows = [
            ("imports: frequencies module", run_child([sys.executable, "-c", IMPORTS]), None),
            ("imports: cellseg CLI", run_child([sys.executable, "-c", CLI_IMPORTS]), None),
        ]
        rows.append((
            "cellseg class-frequencies",
            run_child(
                [sys.executable, "-m", "cellseg", "class-frequencies", "--datasplit",
                 str(datasplit), "--out", str(ours_json), "--resolution-nm", str(RESOLUTION_NM),
                 "--allow-missing-classes"]
            ),
            rows[1][1][0],
        ))  # fmt: skip
        rows.append((
            "class_frequencies()",
            run_child([sys.executable, __file__, "--function-child", str(datasplit), "--out",
                       str(function_json)]),
            rows[0][1][0],
        ))  # fmt: skip
        rows.append((
            "naive (whole arrays)",
            run_child([sys.executable, __file__, "--naive-child", str(datasplit), "--out",
                       str(naive_json)]),
            rows[0][1][0],
        ))  # fmt: skip
        naive = json.loads(naive_json.read_text())["per_class"]
        agree = all(
            json.loads(path.read_text())["per_class"][n][k] == naive[n][k]
            for path in (ours_json, function_json)
            for n in CLASSES
            for k in ("annotated_voxels", "positive_voxels")
        )
        print(
            f"{'child process':>26} {'peak RSS MB':>11} {'above imports':>13} {'wall s':>7} "
            f"{'GB/s':>6} {'RSS/naive':>9}"
        )
        naive_mb, naive_s = rows[-1][1]
        for name, (mb, seconds), base in rows:
            above = f"{mb - base:13.0f}" if base is not None else f"{'':13}"
            timing = (
                f"{seconds:7.1f} {counted / 1e9 / seconds:6.2f} {mb / naive_mb:8.2f}x"
                if base is not None
                else ""
            )
            print(f"{name:>26} {mb:11.0f} {above} {timing}")
        ours_mb, ours_s = rows[2][1]
        function_mb, function_s = rows[3][1]
        print(
            f"cellseg class-frequencies / naive: peak RSS {ours_mb / naive_mb:.2f}x, wall "
            f"{ours_s / naive_s:.2f}x; class_frequencies() / naive: peak RSS "
            f"{function_mb / naive_mb:.2f}x, wall {function_s / naive_s:.2f}x; counts agree: {agree}"
        )
        print(
            f"target peak RSS < 1 GB: cellseg class-frequencies {ours_mb:.0f} MB "
            f"({'met' if ours_mb < 1000 else 'NOT met'}); class_frequencies() {function_mb:.0f} MB "
            f"({'met' if function_mb < 1000 else 'NOT met'})"
        )
    finally:
        if args.keep and args.data is None:
            for path in scratch.glob("*.*"):
                path.unlink()
            print(f"kept {scratch / f'demo_{size}'}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
