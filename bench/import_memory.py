"""Peak memory and time of ``cellseg import`` on a volume larger than its blocks, as ratios
against the volume's size.

    bash scripts/env.sh python bench/import_memory.py [--shape Z Y X] [--block N]

Writes, in a temporary folder, a uint8 EM TIFF (uncompressed: memory-mapped) and a uint8
label image of the same shape (zlib-compressed pages: read through tifffile's zarr store),
whose one crop is the whole volume, then imports it in a fresh process and prints:

* the Python-level peak (tracemalloc: NumPy's buffers, zarr's chunks) of the whole import and
  of the streamed write alone (the read-back check, ``check_label_data``, reads a z row of
  64-voxel chunks at a time and is measured apart), each ÷ the EM volume's bytes;
* the peak resident set (``VmHWM``) growth of the importing process ÷ the volume (it counts the
  memory-mapped EM pages the kernel kept, which it may drop at will);
* wall time, and seconds per GiB of EM.

The whole-volume import it replaced held the EM, the label image, the uint16 label codes and
each class array at once: at least 5 volumes' bytes for this mapping. Default 1024×512×512
(256 MiB): about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from pathlib import Path


def _import(folder: str, block: int, queue: multiprocessing.Queue) -> None:
    import tracemalloc

    import cellseg.data.importer as importer

    peaks: dict[str, int] = {}
    validate = importer.validate

    def measured_validate(*args, **kwargs):  # the read-back check, measured apart
        peaks["write"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.reset_peak()
        result = validate(*args, **kwargs)
        peaks["check"] = tracemalloc.get_traced_memory()[1]
        return result

    # a tiny import first: the modules it loads (zarr, tifffile, the reader) are not counted
    importer.import_mapping(Path(folder) / "tiny" / "mapping.yaml", Path(folder) / "tiny_out")
    importer.validate = measured_validate
    before = _vm_hwm_kb()
    tracemalloc.start()
    started = time.perf_counter()
    importer.import_mapping(Path(folder) / "mapping.yaml", Path(folder) / "out", block=block)
    elapsed = time.perf_counter() - started
    tracemalloc.stop()
    queue.put((peaks, elapsed, (_vm_hwm_kb() - before) * 1024))


def _vm_hwm_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(1024, 512, 512))
    parser.add_argument("--block", type=int, default=None, help="default: importer.BLOCK")
    args = parser.parse_args()
    import numpy as np
    import tifffile

    from cellseg.data.importer import BLOCK

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from import_builders import write_mapping, write_striped_tiffs  # the tests' mapping writers

    block = args.block or BLOCK
    shape = tuple(args.shape)
    volume = int(np.prod(shape))
    with tempfile.TemporaryDirectory() as folder:
        dataset = write_striped_tiffs(Path(folder), shape)
        write_mapping(Path(folder), dataset)
        (Path(folder) / "tiny").mkdir()
        for name in ("em.tif", "labels.tif"):
            tifffile.imwrite(Path(folder) / "tiny" / name, np.ones((8, 8, 8), dtype=np.uint8))
        write_mapping(Path(folder) / "tiny", dataset)
        queue: multiprocessing.Queue = multiprocessing.Queue()
        process = multiprocessing.get_context("fork").Process(
            target=_import, args=(folder, block, queue)
        )
        process.start()
        peaks, elapsed, rss = queue.get()
        process.join()
    mib = volume / 2**20
    print(f"volume {shape} uint8 = {mib:.0f} MiB (EM; labels the same shape), block {block}")
    print(
        f"python peak: whole import {max(peaks.values()) / volume:.3f} x volume "
        f"({max(peaks.values()) / 2**20:.1f} MiB); streamed write {peaks['write'] / volume:.3f} x "
        f"({peaks['write'] / 2**20:.1f} MiB); read-back check {peaks['check'] / volume:.3f} x "
        f"({peaks['check'] / 2**20:.1f} MiB)"
    )
    print(
        f"peak RSS growth {rss / volume:.3f} x volume ({rss / 2**20:.0f} MiB, mapped EM included)"
    )
    print(f"time {elapsed:.1f} s = {elapsed / (volume / 2**30):.0f} s per GiB of EM")


if __name__ == "__main__":
    main()
