"""The datasplit step checks the split as a whole and refuses data that would be scored wrongly
(issue 22 §3-4). Bad input is fed as a user would: small CellMap-layout stores and a datasplit
CSV, through the ``cellseg datasplit`` command; each refusal is asserted to leave an existing
output untouched."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from cellseg.cli import main
from cellseg.config.layers import check_config
from cellseg.data.demo import make_demo_data
from cellseg.errors import CellsegError
from store_builders import INSTANCE, SEMANTIC, annotation, write_multiscale

REPO = Path(__file__).resolve().parents[2]
EM = np.full((16, 32, 64), 100, dtype=np.uint8)  # 8 nm voxels from 0 nm: a 128 × 256 × 512 nm box
LABELS = "recon-1/labels/groundtruth"
CROP_STEP_NM = 96.0
"""Crop i lies ``i * CROP_STEP_NM`` along x from crop0: its 64 nm box is 32 nm from the next
crop's, so every crop is a split unit of its own (crops that share voxels share a split)."""


def at(index: int, level: tuple) -> tuple:
    """``level`` (levels, voxel sizes, translations, kind) moved to crop ``index``'s place."""
    levels, voxels, translations, kind = level
    moved = [(z, y, x + index * CROP_STEP_NM) for z, y, x in translations]
    return levels, voxels, moved, kind


def ecs_level(value: int = 1, index: int = 0) -> tuple:
    """A 4 × 8 × 8 ecs array at 8 nm from (16, 16, 16 + 96 ``index``) nm, inside the EM."""
    level = ([np.full((4, 8, 8), value, dtype=np.uint8)], [(8.0,) * 3], [(20.0,) * 3], SEMANTIC)
    return at(index, level)


def crops_of(count: int) -> dict[str, dict[str, tuple]]:
    return {f"crop{i}": {"ecs": ecs_level(1, i), "pm": ecs_level(0, i)} for i in range(count)}


def row(split: str, store: Path, crop: str, classes: str = "ecs,pm") -> str:
    return (
        f'"{split}","{store}","recon-1/em/fibsem-uint8","{store}","{LABELS}/{crop}/[{classes}]"\n'
    )


def datasplit(args: list[str], capsys) -> tuple[int, str]:
    code = main(["datasplit", *args])
    return code, capsys.readouterr().err


def error_lines(err: str) -> list[str]:
    """The problem lines of a refusal (after its count line, when there are several)."""
    lines = err.strip().splitlines()
    assert lines[0].startswith("cellseg datasplit: error: "), err
    return lines[1:] if len(lines) > 1 else lines


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """An earlier datasplit the refusals must leave as it is."""
    path = tmp_path / "results" / "datasplit.csv"
    path.parent.mkdir()
    path.write_text("earlier\n")
    return path


# ------------------------------------------------------------------ the split as a whole


def test_every_problem_of_a_user_split_is_listed_at_once_with_its_row(
    make_store, tmp_path, out, capsys
):
    store = make_store("ds", EM, crops_of(4))
    csv = tmp_path / "user.csv"
    csv.write_text(
        row("train", store, "crop0")
        + row("train", store, "crop1")
        + row("train", store, "crop0")  # row 3: the same crop twice in train
        + row("validate", store, "crop1", "ecs")  # row 4: crop1 in train and validate
        + row("validate", store, "crop2")
        + row("train", store, "crop9")  # row 6: no such crop
        + row("test", store, "crop3", "ecs,pm,ecs")  # row 7: ecs twice
    )
    code, err = datasplit(["--from-csv", str(csv), "--out", str(out)], capsys)
    assert code == 2 and out.read_text() == "earlier\n"
    assert err.startswith(f"cellseg datasplit: error: {csv}: 5 problems, one per line:")
    lines = error_lines(err)  # in row order, the split's own problems last
    assert lines[0].startswith(f"{csv}:3: crop ds/crop0 is listed again (train; first at {csv}:1)")
    assert lines[1].startswith(
        f"{csv}:4: crop ds/crop1 is in validate here and in train at {csv}:2"
    )
    assert lines[2].startswith(f"{csv}:6: ") and "crop9" in lines[2]
    assert (
        lines[3]
        == f"{csv}:7: column 5 (crop/[classes]) lists ecs more than once; list each class once"
    )
    assert lines[4] == (
        f'{csv}: no test rows; the workflow needs train, validate and test crops: mark some rows "test"'
    )
    # fixed, the same command writes the split
    csv.write_text(
        row("train", store, "crop0") + row("validate", store, "crop1") + row("test", store, "crop2")
    )
    code, err = datasplit(
        ["--from-csv", str(csv), "--out", str(out), "--resolution-nm", "8"], capsys
    )
    assert code == 0, err
    assert out.read_text().count("\n") == 3


def test_one_crop_through_two_paths_is_one_crop(make_store, tmp_path, out, capsys):
    store = make_store("ds", EM, crops_of(3))
    link = tmp_path / "link.zarr"
    link.symlink_to(store)
    csv = tmp_path / "user.csv"
    csv.write_text(
        row("train", store, "crop0")
        + row("validate", store, "crop1")
        + row("test", store, "crop2")
        + row("test", link, "crop0")
    )
    code, err = datasplit(["--from-csv", str(csv), "--out", str(out)], capsys)
    assert code == 2 and out.read_text() == "earlier\n"
    (line,) = error_lines(err)
    assert f"{csv}:4: crop link/crop0 is in test here and in train at {csv}:1" in line


def test_two_datasets_of_one_name_are_refused_as_they_would_share_metrics(
    make_store, tmp_path, out, capsys
):
    first = make_store("ds", EM, crops_of(3))
    copy = tmp_path / "other" / "ds" / "ds.zarr"
    root = zarr.open_group(str(copy), mode="w", zarr_format=2)
    write_multiscale(root, "recon-1/em/fibsem-uint8", [EM], [(8.0,) * 3], [(4.0,) * 3])
    levels, voxels, translations, _ = ecs_level()
    write_multiscale(root, f"{LABELS}/crop0/ecs", levels, voxels, translations, annotation("ecs"))
    csv = tmp_path / "user.csv"
    csv.write_text(
        row("train", first, "crop0")
        + row("validate", first, "crop1")
        + row("test", copy, "crop0", "ecs")
    )
    code, err = datasplit(["--from-csv", str(csv), "--out", str(out)], capsys)
    assert code == 2 and out.read_text() == "earlier\n"
    name, copied = error_lines(err)
    assert name.startswith(f"{csv}:3: crop name ds/crop0 (store {copy})")
    assert "give the datasets different names" in name
    # the copy's EM is the first store's: its crop0 is first's crop0, split apart
    assert copied == (
        f"{csv}:3: ds/crop0 (test) is a copy of ds/crop0 (train): the same box in identical EM "
        f"({copy} and {first}: one dataset under two names or roots): put them in one split"
    )


def test_a_store_whose_directory_has_another_name_is_skipped_aloud(make_store, tmp_path, capsys):
    store = make_store("ds", EM, crops_of(4))
    stray = tmp_path / "data" / "copy_of_ds"
    stray.mkdir()
    (store.parent / "ds.zarr").rename(stray / "ds.zarr")
    make_store("ok", EM, crops_of(4))
    out = tmp_path / "split.csv"
    code, err = datasplit(["--root", str(tmp_path / "data"), "--out", str(out)], capsys)
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if line.startswith("skipped")]
    assert line.startswith(f"skipped {stray / 'ds.zarr'}: its directory is named 'copy_of_ds'")
    assert "{dataset}/{dataset}.zarr" in line
    assert "/ds/" not in out.read_text() and out.read_text().count("\n") == 4


def test_a_crop_whose_scales_are_in_micrometres_is_left_out_aloud(make_store, tmp_path, capsys):
    crops = crops_of(4)
    # the same 8 nm voxels, written in µm: 0.008
    um = ([np.ones((4, 8, 8), dtype=np.uint8)], [(0.008,) * 3], [(0.02,) * 3], SEMANTIC)
    crops["crop9"] = {"ecs": um}
    make_store("ds", EM, crops)
    out = tmp_path / "split.csv"
    code, err = datasplit(
        ["--root", str(tmp_path / "data"), "--out", str(out), "--resolution-nm", "8"], capsys
    )
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if "crop9" in line]
    assert line.startswith("left out ds/crop9: ") and "no scale level near 8.0 nm" in line
    assert "look like µm" in line and "multiply them by 1000" in line
    assert "crop9" not in out.read_text()


# ------------------------------------------------------------------ data scored wrongly


def refused(tmp_path: Path, out: Path, capsys, resolution: str = "8") -> str:
    """``cellseg datasplit --root`` on the data root, refused in one line; ``out`` untouched."""
    code, err = datasplit(
        ["--root", str(tmp_path / "data"), "--out", str(out), "--resolution-nm", resolution],
        capsys,
    )
    assert code == 2 and out.read_text() == "earlier\n", err
    (line,) = error_lines(err)
    return line


def test_em_that_is_not_uint8_is_refused(tmp_path, out, capsys):
    store = tmp_path / "data" / "ds" / "ds.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    em16 = EM.astype(np.uint16) * 257  # a fibsem-uint16 volume
    write_multiscale(root, "recon-1/em/fibsem-uint8", [em16], [(8.0,) * 3], [(4.0,) * 3])
    for i in range(4):
        levels, voxels, translations, _ = ecs_level(1, i)
        write_multiscale(
            root, f"{LABELS}/crop{i}/ecs", levels, voxels, translations, annotation("ecs")
        )
    line = refused(tmp_path, out, capsys)
    assert (
        f"{store}/recon-1/em/fibsem-uint8/s0: EM dtype is uint16, but cellseg reads uint8" in line
    )
    assert "convert this one to uint8" in line


@pytest.mark.parametrize(
    ("em_range", "ok"),
    [([10.6, 194.1], True), ([194.1, 10.6], False), ([50, 50], False), ([0, 65535], False)],
)
def test_a_reversed_or_empty_em_range_is_a_config_error(em_range, ok):
    import yaml

    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["data"]["em_range"] = em_range
    schema = REPO / "workflow" / "schemas" / "config.schema.yaml"
    if ok:
        check_config(config, schema, ["config/config.yaml"])
        return
    with pytest.raises(CellsegError) as error:
        check_config(config, schema, ["config/config.yaml"])
    message = str(error.value)
    assert f"data.em_range = [{em_range[0]}, {em_range[1]}] must be" in message
    assert "0 <= low < high <= 255" in message and "\n" not in message


def test_label_values_outside_the_encoding_are_refused_above_the_limit(
    make_store, tmp_path, out, capsys
):
    crops = crops_of(4)
    values = np.ones((4, 8, 8), dtype=np.uint8)
    values[2:, 4:, 4:] = 2  # 32 of 256 voxels hold a 2 in a 0/1/255 array
    crops["crop3"]["ecs"] = at(3, ([values], [(8.0,) * 3], [(20.0,) * 3], SEMANTIC))
    store = make_store("ds", EM, crops)
    # stored as one 4 × 8 × 8 chunk (store_builders' chunks are at most 8 an axis)
    line = refused(tmp_path, out, capsys)
    array = f"{store}/{LABELS}/crop3/ecs/s0"
    assert line.startswith(f"cellseg datasplit: error: ds/crop3: {array}: 32 of 256 voxels (12%)")
    assert "values (2) outside the encoding (absent 0, present 1, unknown 255)" in line
    assert "in chunk [0, 0, 0]" in line and f"(file {array}/0.0.0)" in line
    assert "more than 0.1% is refused" in line


def test_a_few_stray_label_values_are_read_as_unknown_and_said(make_store, tmp_path, capsys):
    crops = crops_of(4)
    values = np.ones((16, 32, 32), dtype=np.uint8)
    values[0, 0, 0] = 7  # 1 of 16384 voxels: below the 0.1% limit
    crops["crop3"]["ecs"] = at(3, ([values], [(4.0,) * 3], [(18.0,) * 3], SEMANTIC))
    crops["crop3"]["pm"] = at(3, ([np.zeros_like(values)], [(4.0,) * 3], [(18.0,) * 3], SEMANTIC))
    make_store("ds", EM, crops)
    out = tmp_path / "split.csv"
    code, err = datasplit(["--root", str(tmp_path / "data"), "--out", str(out)], capsys)
    assert code == 0, err
    (line,) = [line for line in err.splitlines() if "outside the encoding" in line]
    assert (
        line.startswith("ds/crop3: ") and "1 of 16384 voxels" in line and "read as unknown" in line
    )


def two_levels(s0: np.ndarray) -> tuple:
    """``s0`` at 4 nm and its 8 nm mode-downsampled level (every 2nd voxel: s0 is blocky)."""
    return (
        [s0, s0[::2, ::2, ::2].copy()],
        [(4.0,) * 3, (8.0,) * 3],
        [(18.0,) * 3, (20.0,) * 3],
        SEMANTIC,
    )


def test_a_lost_label_chunk_is_refused_and_an_empty_one_is_not(make_store, tmp_path, out, capsys):
    s0 = np.zeros((8, 16, 16), dtype=np.uint8)
    s0[:, 8:, 8:] = 1  # the object fills chunk 0.1.1 of s0 (8-voxel chunks); the others are absent
    crops = {f"crop{i}": {"ecs": at(i, two_levels(s0))} for i in range(4)}
    store = make_store("ds", EM, crops)
    array = store / LABELS / "crop2" / "ecs" / "s0"
    # zarr skipped the chunks that hold only the fill value (absent): legitimately empty
    assert sorted(p.name for p in array.iterdir() if not p.name.startswith(".")) == ["0.1.1"]
    code, err = datasplit(
        ["--root", str(tmp_path / "data"), "--out", str(tmp_path / "ok.csv")], capsys
    )
    assert code == 0, err
    (array / "0.1.1").unlink()  # lost in a copy: crop2's ecs now reads as absent everywhere
    line = refused(tmp_path, out, capsys)
    assert line.startswith(
        f"cellseg datasplit: error: ds/crop2: {array}: chunk [0, 1, 1] (file {array}/0.1.1) is "
        "not stored, so it reads as 0 (absent), but the coarser level s1 holds 64 present"
    )
    assert "copy the array again" in line


def test_a_class_shifted_or_cut_against_the_crop_s_other_classes_is_refused(
    make_store, tmp_path, out, capsys
):
    crops = crops_of(4)
    shifted = at(3, ([np.ones((4, 8, 8), np.uint8)], [(8.0,) * 3], [(20, 20, 120.0)], SEMANTIC))
    crops["crop3"]["pm"] = shifted  # 100 nm along x
    store = make_store("ds", EM, crops)
    line = refused(tmp_path, out, capsys)
    assert line.startswith(f"cellseg datasplit: error: ds/crop3: {store}/{LABELS}/crop3/")
    assert f"{LABELS}/crop3/pm: box [16, 16, 404]–[48, 80, 468] nm differs from" in line
    assert f"{store}/{LABELS}/crop3/ecs's [16, 16, 304]–[48, 80, 368] nm" in line
    assert "offset [0, 0, 100] nm" in line
    # a smaller box
    root = zarr.open_group(str(store), mode="a", zarr_format=2)
    del root[f"{LABELS}/crop3/pm"]
    small = np.ones((4, 8, 4), dtype=np.uint8)
    write_multiscale(
        root, f"{LABELS}/crop3/pm", [small], [(8.0,) * 3], [(20.0, 20.0, 308.0)], annotation("pm")
    )
    line = refused(tmp_path, out, capsys)
    assert "size [32, 64, 32] vs [32, 64, 64] nm" in line


def test_a_zero_size_finest_level_is_refused_not_read_at_the_coarser_one(
    make_store, tmp_path, out, capsys
):
    crops = crops_of(4)
    empty = np.zeros((0, 8, 8), dtype=np.uint8)
    coarse = np.ones((4, 8, 8), dtype=np.uint8)
    crops["crop2"]["ecs"] = at(
        2, ([empty, coarse], [(4.0,) * 3, (8.0,) * 3], [(18.0,) * 3, (20.0,) * 3], SEMANTIC)
    )
    store = make_store("ds", EM, crops)
    line = refused(tmp_path, out, capsys)
    assert (
        f"{store}/{LABELS}/crop2/ecs/s0: zero-size level (shape [0, 8, 8], scale [4, 4, 4] nm)"
        in line
    )
    assert "finer than s1 ([8, 8, 8] nm), which holds data" in line


def test_a_level_of_the_wrong_shape_is_told_its_shape_is_wrong(make_store, tmp_path, out, capsys):
    crops = crops_of(4)
    s0 = np.ones((8, 16, 16), dtype=np.uint8)
    truncated = np.ones((4, 3, 8), dtype=np.uint8)  # 8 nm level of s0 should be 4 × 8 × 8
    crops["crop2"]["ecs"] = at(
        2, ([s0, truncated], [(4.0,) * 3, (8.0,) * 3], [(18.0,) * 3, (20.0,) * 3], SEMANTIC)
    )
    crops["crop2"]["pm"] = at(2, two_levels(np.zeros_like(s0)))
    store = make_store("ds", EM, crops)
    line = refused(tmp_path, out, capsys)
    assert f"{store}/{LABELS}/crop2/ecs/s1: shape [4, 3, 8] is wrong" in line
    assert "needs shape [4, 8, 8]" in line and "fix the scale" not in line


def test_instance_arrays_hold_any_id(make_store, tmp_path, capsys):
    crops = crops_of(4)
    ids = np.arange(256, dtype=np.uint16).reshape(4, 8, 8)
    crops["crop0"]["nuc"] = ([ids], [(8.0,) * 3], [(20.0,) * 3], INSTANCE)
    make_store("ds", EM, crops)
    out = tmp_path / "split.csv"
    code, err = datasplit(["--root", str(tmp_path / "data"), "--out", str(out)], capsys)
    assert code == 0 and "outside the encoding" not in err, err


def test_the_demo_data_passes_every_check(tmp_path, capsys):
    make_demo_data(tmp_path / "demo", seed=0, size="small")
    out = tmp_path / "split.csv"
    code, err = datasplit(
        ["--root", str(tmp_path / "demo"), "--out", str(out), "--resolution-nm", "8"], capsys
    )
    assert code == 0, err
    assert "outside the encoding" not in err and "skipped" not in err
    assert "binary mask" not in err
    again = tmp_path / "again.csv"
    code, err = datasplit(
        ["--from-csv", str(out), "--out", str(again), "--resolution-nm", "8"], capsys
    )
    assert code == 0, err
    assert again.read_text() == out.read_text()


def test_too_few_crops_for_a_test_split_is_said_with_the_key_to_change(
    make_store, tmp_path, out, capsys
):
    make_store("ds", EM, crops_of(2))  # two crops: both stay in train
    code, err = datasplit(["--root", str(tmp_path / "data"), "--out", str(out)], capsys)
    assert code == 2 and out.read_text() == "earlier\n"
    assert error_lines(err) == [
        "no validate crops among the 2 found: raise --validate-fraction "
        "(data.validate_fraction), or add crops",
        "no test crops among the 2 found: raise --test-fraction (data.test_fraction), or add crops",
    ]


# ------------------------------------------------------------------ issue 35: bad input


def test_a_datasplit_csv_saved_with_a_byte_order_mark_is_read(make_store, tmp_path, out, capsys):
    """A spreadsheet's "CSV UTF-8" starts with a byte-order mark (EF BB BF): read, not refused
    as split '\\ufeff"train"'."""
    from cellseg.config.resources import count_test_crops

    store = make_store("ds", EM, crops_of(3))
    csv = tmp_path / "user.csv"
    text = (
        row("train", store, "crop0") + row("validate", store, "crop1") + row("test", store, "crop2")
    )
    csv.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    code, err = datasplit(["--from-csv", str(csv), "--out", str(out)], capsys)
    assert code == 0 and err == "", err
    assert out.read_text().splitlines()[0] == (
        f'"train","{store}","recon-1/em/fibsem-uint8","{store}","{LABELS}/crop0/[ecs,pm]"'
    )
    assert [line.split(",")[0] for line in out.read_text().splitlines()] == [
        '"train"', '"validate"', '"test"',
    ]  # fmt: skip
    assert count_test_crops(csv) == 1


def test_a_datasplit_csv_with_windows_paths_is_one_line_for_the_file(
    make_store, tmp_path, out, capsys
):
    """Backslashes leave no ``[classes]`` and no store: one line for the file, not one per row
    and a "no train rows" although every row is marked."""
    store = make_store("ds", EM, crops_of(3))
    windows = "C:" + str(store).replace("/", "\\")
    csv = tmp_path / "user.csv"
    csv.write_text(
        "".join(
            f'"{split}","{windows}","recon-1\\em\\fibsem-uint8","{windows}",'
            f'"recon-1\\labels\\groundtruth\\crop{i}\\[ecs,pm]"\n'
            for i, split in enumerate(("train", "validate", "test"))
        )
    )
    code, err = datasplit(["--from-csv", str(csv), "--out", str(out)], capsys)
    assert code == 2 and out.read_text() == "earlier\n"
    assert error_lines(err) == [
        f"cellseg datasplit: error: {csv}: rows 1–3 (3 of 3) write paths with backslashes "
        f'(Windows), e.g. row 1 column 2 "{windows}"; cellseg reads / as the separator, so they '
        "name no store, crop or [classes]: write the paths with forward slashes (\\ → /), as "
        "they are on the machine that runs cellseg"
    ]
    # one row fixed of three: the other two named, the fixed one read
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join([row("train", store, "crop0").strip(), *lines[1:]]) + "\n")
    code, err = datasplit(["--from-csv", str(csv), "--out", str(out)], capsys)
    (line,) = error_lines(err)
    assert line.startswith(f"cellseg datasplit: error: {csv}: rows 2–3 (2 of 3) write paths")
    assert 'e.g. row 2 column 2 "C:' in line


def float_em_store(tmp_path: Path, em: np.ndarray) -> Path:
    """``ds`` with EM ``em`` (8 nm from 4 nm) and four one-class crops."""
    store = tmp_path / "data" / "ds" / "ds.zarr"
    root = zarr.open_group(str(store), mode="w", zarr_format=2)
    write_multiscale(root, "recon-1/em/fibsem-uint8", [em], [(8.0,) * 3], [(4.0,) * 3])
    for i in range(4):
        levels, voxels, translations, _ = ecs_level(1, i)
        write_multiscale(
            root, f"{LABELS}/crop{i}/ecs", levels, voxels, translations, annotation("ecs")
        )
    return store


def test_float_em_in_0_1_is_refused_naming_its_range_and_em_range(tmp_path, out, capsys):
    """EM exported as float32 in [0, 1] would clip to the bottom of [10.6, 194.1] everywhere."""
    em = np.linspace(0.0, 1.0, EM.size, dtype=np.float32).reshape(EM.shape)
    store = float_em_store(tmp_path, em)
    line = refused(tmp_path, out, capsys)
    assert line == (
        f"cellseg datasplit: error: ds/crop0: {store}/recon-1/em/fibsem-uint8/s0: float EM whose "
        "sampled values (central [16, 32, 32] voxels of s0) lie in [0.000488, 1], 100% of them "
        "outside data.em_range = [10.6, 194.1] (raw 8-bit values), so they would clip to its "
        "bottom and the model would see a blank image; rescale the EM to uint8 (0-255), or set "
        "data.em_range to the EM's own scale (e.g. [0, 1])"
    )
    # with data.em_range on the EM's scale it is read; float EM on the 0-255 scale always is
    args = ["--root", str(tmp_path / "data"), "--out", str(out), "--resolution-nm", "8"]
    code, err = datasplit([*args, "--em-range", "0", "1"], capsys)
    assert code == 0, err
    float_em_store(tmp_path, EM.astype(np.float32))
    code, err = datasplit(args, capsys)
    assert code == 0, err


def test_a_binary_mask_stored_0_255_is_said_with_how_to_re_encode_it(make_store, tmp_path, capsys):
    """255 is the unknown code: a 0/255 mask has no present voxel and its positives vanish."""
    crops = crops_of(4)
    mask = np.zeros((4, 8, 8), dtype=np.uint8)
    mask[:, :, :5] = 255  # 160 of 256 voxels: the mask's "positives"
    two = ([mask, mask[::2, ::2, ::2]], [(8.0,) * 3, (16.0,) * 3], [(20.0,) * 3, (24.0,) * 3])
    crops["crop3"]["ecs"] = at(3, (*two, SEMANTIC))
    store = make_store("ds", EM, crops)
    out = tmp_path / "split.csv"
    args = ["--root", str(tmp_path / "data"), "--out", str(out), "--resolution-nm", "16"]
    code, err = datasplit(args, capsys)
    assert code == 0, err
    assert [line for line in err.splitlines() if "binary mask" in line] == [
        f"ds/crop3: {store}/{LABELS}/crop3/ecs/s1: no voxel is present (1) and 24 of 32 (75%) are "
        "unknown (255), so the class is read as unannotated there; if this is a binary mask "
        "stored 0/255, its positives are lost: re-encode it with positives 1, absent 0 and "
        "unknown 255 only where not annotated"
    ]  # one line for the class, though two of its levels are read
    assert "crop3" in out.read_text()
