"""Bad output paths, a busy run directory, a full disk and the umask, fed the way a user would:
the ``cellseg`` command in a subprocess. Each refusal is one line, and the directory it would
have written into or deleted (a CellMap data store, a copy of ``results/``) is still there,
byte for byte (issue 22, sections 1 and 5)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cellseg.data.datasplit import write_datasplit
from cellseg.data.store import EM_GROUP, LABELS_ROOT, Crop
from cellseg.training.lock import LOCK_NAME
from checkpoint_builders import demo_unet_checkpoint
from store_builders import annotation, write_multiscale

pytestmark = pytest.mark.minutes(1.5)  # order: tests/conftest.py

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "config" / "config.yaml"


def cellseg(*arguments: str, umask: int = -1) -> subprocess.CompletedProcess:
    """``python -m cellseg ARGUMENTS…`` as a user runs it (this checkout's package)."""
    return subprocess.run(
        [sys.executable, "-m", "cellseg", *arguments],
        env=os.environ | {"PYTHONPATH": str(REPO / "src")},
        capture_output=True,
        text=True,
        timeout=300,
        umask=umask,
    )


def one_line(result: subprocess.CompletedProcess, command: str) -> str:
    """The single error line of a refused command (no traceback before it)."""
    assert result.returncode == 2, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"cellseg {command}: error: "), result.stderr
    return lines[0]


def last_line(result: subprocess.CompletedProcess, command: str) -> str:
    """The error line that ends a failed command's output after its progress lines, with no
    traceback anywhere."""
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"cellseg {command}: error: "), result.stderr
    return line


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` with its bytes (what must survive unchanged)."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def cellmap_store(path: Path) -> Path:
    """A CellMap-layout store: 8 nm EM (bright for x < 4) and one crop with ecs and nuc."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    em = np.zeros((8, 16, 16), dtype=np.uint8)
    em[..., :4] = 255
    write_multiscale(root, EM_GROUP, [em], [(8.0,) * 3], [(4.0,) * 3])
    ecs = np.zeros((2, 4, 6), dtype=np.uint8)
    ecs[..., :4] = 1
    for name, data in (("ecs", ecs), ("nuc", 1 - ecs)):
        write_multiscale(
            root,
            f"{LABELS_ROOT}/crop_a/{name}",
            [data],
            [(8.0,) * 3],
            [(12.0,) * 3],
            attributes=annotation(name),
        )
    return path


@pytest.fixture
def victims(tmp_path: Path) -> dict[str, Path]:
    """What a bad path must never cost: the input data store, another data store, a copy of a
    results directory with a trained model; plus a checkpoint to predict with."""
    data = cellmap_store(tmp_path / "data" / "jrc_toy.zarr")
    other = cellmap_store(tmp_path / "data" / "jrc_other.zarr")
    results = tmp_path / "results_copy"
    (results / "models" / "unet_2d").mkdir(parents=True)
    checkpoint = results / "models" / "unet_2d" / "best.pt"
    torch.manual_seed(0)
    torch.save(demo_unet_checkpoint(["elsewhere/crop_z"]), checkpoint)
    (results / "summary.csv").write_text("model,mean_dice\nunet_2d,0.5\n")
    return {"data": data, "other": other, "results": results, "checkpoint": checkpoint}


def predict(victims: dict[str, Path], out: Path, *extra: str, umask: int = -1):
    return cellseg(
        "predict",
        "--checkpoint",
        str(victims["checkpoint"]),
        "--em",
        str(victims["data"] / EM_GROUP),
        "--out",
        str(out),
        "--device",
        "cpu",
        "--threads",
        "1",
        *extra,
        umask=umask,
    )


def test_predict_overwrite_never_deletes_what_cellseg_did_not_write(victims, tmp_path):
    before = {name: snapshot(victims[name]) for name in ("data", "other", "results")}
    # --overwrite on another data store, on a copy of results/, inside a data store
    for target, expected in (
        (victims["other"], "is not a prediction store cellseg wrote"),
        (victims["results"], "is not a prediction store cellseg wrote"),
        (victims["other"] / "recon-1" / "predictions.zarr", "lies inside the zarr store"),
        (victims["data"] / "recon-1" / "predictions.zarr", "EM store"),
    ):
        line = one_line(predict(victims, target, "--overwrite"), "predict")
        assert str(target) in line and expected in line, line
    # a regular file as --out: one line, not NotADirectoryError, and the file is kept
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    line = one_line(predict(victims, notes, "--overwrite"), "predict")
    assert "is a file, not a directory" in line and notes.read_text() == "mine"
    for name, files in before.items():
        assert snapshot(victims[name]) == files, name
    assert not (victims["other"] / "recon-1" / "predictions.zarr").exists()


def test_overwrite_replaces_cellseg_s_own_prediction_with_the_umask_s_modes(victims, tmp_path):
    out = tmp_path / "predictions" / "toy.zarr"
    first = predict(victims, out, "--dtype", "float32", umask=0o022)
    assert first.returncode == 0, first.stderr[-3000:]
    attributes = json.loads((out / ".zattrs").read_text())["cellseg"]
    assert attributes["complete"] and attributes["prediction"]["dtype"] == "float32"
    # outputs get 0o666 less the umask (mkstemp alone would make them 0600), dirs likewise
    for written in (out / ".zattrs", out / "probabilities" / "ecs" / ".zattrs"):
        assert stat.S_IMODE(written.stat().st_mode) == 0o644, written
    assert stat.S_IMODE((out / "probabilities").stat().st_mode) == 0o755
    # other settings: refused without --overwrite, replaced with it (it is cellseg's own)
    line = one_line(predict(victims, out, "--dtype", "uint8"), "predict")
    assert "dtype differs" in line and "--overwrite" in line
    second = predict(victims, out, "--dtype", "uint8", "--overwrite", umask=0o002)
    assert second.returncode == 0, second.stderr[-3000:]
    assert json.loads((out / ".zattrs").read_text())["cellseg"]["prediction"]["dtype"] == "uint8"
    assert stat.S_IMODE((out / ".zattrs").stat().st_mode) == 0o664


def test_evaluate_and_train_never_write_into_a_data_store(victims, tmp_path):
    before = {name: snapshot(victims[name]) for name in ("data", "other")}
    datasplit = tmp_path / "datasplit.csv"
    crop = Crop(
        victims["data"], EM_GROUP, victims["data"], f"{LABELS_ROOT}/crop_a", ("ecs", "nuc"), "test"
    )
    write_datasplit([crop], datasplit)
    checkpoint = str(victims["checkpoint"])
    evaluate = ("evaluate", "--checkpoint", checkpoint, "--datasplit", str(datasplit))
    for out in (victims["data"] / "metrics.csv", victims["other"] / "recon-1" / "metrics.csv"):
        line = one_line(cellseg(*evaluate, "--out", str(out), "--device", "cpu"), "evaluate")
        assert f"--out {out}" in line and "lies inside the zarr store" in line, line
        assert not out.exists()
    line = one_line(cellseg(*evaluate, "--out", str(tmp_path)), "evaluate")
    assert "is a directory" in line
    # --predictions is replaced at the end: never over a directory cellseg did not write
    results = snapshot(victims["results"])
    out = tmp_path / "metrics.csv"
    refused = cellseg(*evaluate, "--out", str(out), "--predictions", str(victims["results"]))
    line = last_line(refused, "evaluate")
    assert f"--predictions {victims['results']}: exists and is not a store cellseg" in line
    assert snapshot(victims["results"]) == results and not out.exists()
    train = ("train", "--config", str(CONFIG), "--model", "unet", "--dim", "2d")
    run_dir = victims["other"] / "recon-1" / "unet_2d"
    line = one_line(cellseg(*train, "--run-dir", str(run_dir)), "train")
    assert f"--run-dir {run_dir}" in line and "lies inside the zarr store" in line, line
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    line = one_line(cellseg(*train, "--run-dir", str(notes)), "train")
    assert "is a file, not a directory" in line and notes.read_text() == "mine"
    # the comparison's outputs likewise
    metrics = victims["results"] / "summary.csv"
    summary = ("summary", "--metrics", str(metrics))
    out = victims["other"] / "summary.csv"
    line = one_line(cellseg(*summary, "--out-csv", str(out)), "summary")
    assert f"--out-csv {out}: lies inside the zarr store" in line, line
    figures = victims["data"] / "recon-1" / "figures"
    line = one_line(cellseg(*summary, "--figures", str(figures)), "summary")
    assert f"--figures {figures}: lies inside the zarr store" in line, line
    for name, files in before.items():
        assert snapshot(victims[name]) == files, name


HOLD_LOCK = textwrap.dedent(
    """
    import sys, time
    from cellseg.training.lock import run_dir_lock
    with run_dir_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(120)
    """
)


def test_a_second_train_on_a_busy_run_directory_is_refused(tmp_path):
    run_dir = tmp_path / "results" / "models" / "unet_2d"
    train = ("train", "--config", str(CONFIG), "--model", "unet", "--dim", "2d")
    train += ("--run-dir", str(run_dir), "--datasplit", str(tmp_path / "missing.csv"))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(run_dir)],
        env=os.environ | {"PYTHONPATH": str(REPO / "src")},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_line(cellseg(*train), "train")
        assert f"pid {holder.pid} on {socket.gethostname()}" in line, line
        assert str(run_dir) in line and "another cellseg train" in line
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing it (SIGKILL): its lock is stale and taken over, so the
    # next train gets as far as its datasplit
    assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == holder.pid
    line = last_line(cellseg(*train), "train")
    assert "missing.csv: datasplit CSV not found" in line, line
    assert (run_dir / LOCK_NAME).read_text() == ""  # released at exit


def fill(path: Path) -> None:
    """Write zeros to ``path`` until its file system is full."""
    with contextlib.suppress(OSError), open(path, "wb") as handle:
        while True:
            handle.write(b"\0" * 4096)
            handle.flush()


@contextlib.contextmanager
def full_disk(path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs at ``path``, filled to the last byte (needs mount rights)."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(path)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        fill(path / "filler")
        yield path
    finally:
        subprocess.run(["umount", str(path)], check=True)


def test_a_full_disk_is_one_line_without_a_traceback(victims, tmp_path):
    datasplit = tmp_path / "datasplit.csv"
    crop = Crop(
        victims["data"], EM_GROUP, victims["data"], f"{LABELS_ROOT}/crop_a", ("ecs", "nuc"), "test"
    )
    write_datasplit([crop], datasplit)
    with full_disk(tmp_path / "full") as full:
        out = full / "metrics" / "unet_2d.csv"
        evaluate = cellseg(
            "evaluate",
            "--checkpoint",
            str(victims["checkpoint"]),
            "--datasplit",
            str(datasplit),
            "--out",
            str(out),
            "--device",
            "cpu",
        )
        line = last_line(evaluate, "evaluate")  # after the crop's progress line
        assert f"{out}: no space left on the device" in line, line
        assert not out.exists()
        run_dir = full / "unet_2d"
        train = cellseg(
            "train",
            "--config",
            str(CONFIG),
            "--model",
            "unet",
            "--dim",
            "2d",
            "--run-dir",
            str(run_dir),
        )
        line = last_line(train, "train")
        assert "no space left on the device" in line, line
    shutil.rmtree(tmp_path / "full", ignore_errors=True)


def test_a_checkpoint_on_a_full_disk_is_one_line_and_the_previous_one_is_kept(tmp_path):
    """torch's writer reports a full disk as a RuntimeError naming no errno: the write site
    (cellseg.io.atomic_path, which every checkpoint goes through) makes it the one line."""
    from cellseg.errors import CellsegError
    from cellseg.training.checkpoint import save_checkpoint

    with full_disk(tmp_path / "full") as full:
        best = full / "best.pt"
        (full / "filler").unlink()
        save_checkpoint({"epoch": 1}, best)
        fill(full / "filler")
        with pytest.raises(CellsegError, match=f"{best}: no space left on the device"):
            save_checkpoint({"epoch": 2, "weights": torch.zeros(2**16)}, best)
        assert torch.load(best)["epoch"] == 1
        assert sorted(p.name for p in full.iterdir()) == ["best.pt", "filler"]
