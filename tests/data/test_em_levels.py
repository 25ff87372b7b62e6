"""EM whose ``s0`` was removed from its 'multiscales' (issue 35): the 16 nm ``s1`` is read
upsampled for an 8 nm model, so the console says so in one line naming the array, the level used
and its voxel size, and the fix; the data and the split are left as they are."""

from __future__ import annotations

import numpy as np
import zarr

from cellseg.cli import main
from store_builders import SEMANTIC

EM_GROUP = "recon-1/em/fibsem-uint8"


def crops(count: int) -> dict[str, dict[str, tuple]]:
    """``count`` crops of ecs (1) and pm (0), 4 × 8 × 8 voxels at 8 nm, 96 nm apart along x."""

    def level(value: int, index: int) -> tuple:
        data = np.full((4, 8, 8), value, dtype=np.uint8)
        return [data], [(8.0,) * 3], [(20.0, 20.0, 20.0 + 96.0 * index)], SEMANTIC

    return {f"crop{i}": {"ecs": level(1, i), "pm": level(0, i)} for i in range(count)}


def test_em_read_at_a_level_twice_as_coarse_is_said_once_with_the_unlisted_s0(
    make_store, tmp_path, capsys
):
    em = np.full((16, 32, 64), 100, dtype=np.uint8)  # 8 nm voxels from 0 nm
    store = make_store("ds", em, crops(4))
    group = zarr.open_group(str(store / EM_GROUP), mode="a", zarr_format=2)
    group.create_array("s1", data=em[::2, ::2, ::2].copy(), chunks=(8, 8, 8))
    multiscales = group.attrs["multiscales"]
    s0 = multiscales[0]["datasets"][0]
    s1 = {
        "path": "s1",
        "coordinateTransformations": [
            {"type": "scale", "scale": [16.0] * 3},
            {"type": "translation", "translation": [8.0] * 3},
        ],
    }
    multiscales[0]["datasets"] = [s0, s1]
    group.attrs["multiscales"] = multiscales
    out = tmp_path / "datasplit.csv"
    command = ["datasplit", "--root", str(tmp_path / "data"), "--out", str(out)]
    assert main([*command, "--resolution-nm", "8"]) == 0
    assert "upsampled" not in capsys.readouterr().err  # s0 is read: nothing to say
    written = out.read_text()
    multiscales[0]["datasets"] = [s1]  # s0 removed from the list, its array left in the store
    group.attrs["multiscales"] = multiscales
    out.unlink()
    assert main([*command, "--resolution-nm", "8"]) == 0
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "upsampled" in line]
    # once for the EM that the four crops share, not once per crop
    assert lines == [
        f"{store}/{EM_GROUP}: no level near 8 nm: reading s1 at [16, 16, 16] nm, upsampled 2x "
        "(its detail is interpolated, not read); its group holds s0, which 'multiscales' does "
        "not list: if s0 is the finer level, list it again there (path, scale and translation)"
    ], err
    assert out.read_text() == written  # the same split: nothing left out, nothing changed
    assert (store / EM_GROUP / "s0").is_dir()
