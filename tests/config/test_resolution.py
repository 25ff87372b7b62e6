"""``data.resolution_nm``: one number (isotropic, as always) or ``[z, y, x]`` nm (cellseg.voxels).

An isotropic configuration keeps today's settings and hashes exactly (the demo's checkpoints,
results and ``results/config.resolved.yaml`` unchanged); a bad value is one line naming the key
and the fix, before any job."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import yaml

from cellseg.config.layers import check_config, read_layer, resolved_config_document
from cellseg.config.settings import resolve_settings
from cellseg.errors import CellsegError
from cellseg.voxels import as_vec3, compact, format_resolution, parse_resolution

REPO = Path(__file__).resolve().parents[2]
BASE = read_layer(REPO / "config" / "config.yaml")
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"

# the demo's config hashes before resolution_nm took three values (computed at 6b715cf): the
# checkpoints' identity; a change here retrains every model of every existing results/
DEMO_HASHES = {
    "unet_2d": "84784dcaac569edc",
    "resnet_2d": "7d7b18850eddf079",
    "swin_2d": "990cc9861dd8afca",
    "vit_2d": "88f7a3d5f602a810",
    "unet_3d": "2979b46d86dc1b11",
    "resnet_3d": "445cbbb2795d8d92",
    "swin_3d": "3185c6cae425bf51",
    "vit_3d": "3d466273ec0886e5",
}
DEMO_RESOLVED_SHA = "99e131ad3c94d2d6"
"""sha256 (16 hex) of the base config's resolved document as results/config.resolved.yaml writes
it, at 6b715cf, less the keys added since (:data:`KEYS_ADDED_SINCE`,
:data:`RUN_KEYS_ADDED_SINCE`)."""
KEYS_ADDED_SINCE = [("config", "predict", "groups")]
"""Keys the config gained after 6b715cf: new keys add lines to the resolved document (no model's
hash changes, nothing retrains); the pin is of what was there."""
RUN_KEYS_ADDED_SINCE = ["inject_step_delay_s"]
"""Settings every run gained after 6b715cf (each run's entry under ``models``), all outside the
config hash: ``inject_step_delay_s``, a fault injection for the SLURM time-limit test."""
KEYS_REMOVED_SINCE = [(("config", "resources", "visualize"), "gpus", 1)]
"""Keys the config lost after 6b715cf, with their value then (each was its section's first key):
``resources.visualize.gpus`` when the figures stopped running a model (they draw the slices
evaluation kept, cellseg.figure_slices); no model's hash reads them."""


def with_resolution(value) -> dict:
    return {**BASE, "data": {**BASE["data"], "resolution_nm": value}}


def test_the_demo_keeps_its_config_hashes_and_resolved_config():
    assert {key: resolve_settings(BASE, key).config_hash() for key in BASE["models"]} == DEMO_HASHES
    document = resolved_config_document(BASE, ["config/config.yaml"])
    for *parents, key in KEYS_ADDED_SINCE:
        section = document
        for name in parents:
            section = section[name]
        del section[key]
    for run in document["models"].values():
        for key in RUN_KEYS_ADDED_SINCE:
            del run[key]
    for (*parents, name), key, value in KEYS_REMOVED_SINCE:
        section = document
        for parent in parents:
            section = section[parent]
        assert key not in section[name]
        section[name] = {key: value, **section[name]}
    text = yaml.safe_dump(document, sort_keys=False)
    assert hashlib.sha256(text.encode()).hexdigest()[:16] == DEMO_RESOLVED_SHA


def test_three_equal_values_are_the_number_and_three_others_a_new_model():
    for spelling in (8, 8.0, [8, 8, 8]):
        settings = resolve_settings(with_resolution(spelling), "unet_2d")
        assert settings.resolution_nm == 8.0 and isinstance(settings.resolution_nm, float)
        assert settings.config_hash() == DEMO_HASHES["unet_2d"]
    section = resolve_settings(with_resolution([50, 8, 8]), "unet_3d")
    assert section.resolution_nm == (50.0, 8.0, 8.0) and section.voxel_nm == (50.0, 8.0, 8.0)
    assert section.config_hash() != DEMO_HASHES["unet_3d"]


def test_spellings():
    assert as_vec3(8) == (8.0, 8.0, 8.0) and as_vec3([50, 8, 8]) == (50.0, 8.0, 8.0)
    assert compact([8, 8, 8]) == 8.0 and compact((50, 8, 8)) == (50.0, 8.0, 8.0)
    assert format_resolution(8.0) == "8.0" and format_resolution(8.0, "g") == "8"
    assert format_resolution([50, 8, 8]) == "[50, 8, 8]"
    assert parse_resolution(10, "x") == 10.0 and parse_resolution([50, 8.0, 8], "x") == (50, 8, 8)


@pytest.mark.parametrize(
    "value", [[50, 8], [50, 8, 8, 8], [50, 0, 8], [-8], "8", True, [50, "8", 8]]
)
def test_a_bad_resolution_is_one_line_naming_the_key_and_the_fix(value):
    with pytest.raises(CellsegError) as error:
        check_config(with_resolution(value), SCHEMA, ["config/my.yaml"])
    line = str(error.value)
    assert "\n" not in line
    assert line.startswith("config/my.yaml: data.resolution_nm: ")
    assert "[z, y, x] nm, e.g. [50, 8, 8]" in line


def test_the_schema_takes_both_spellings():
    for value in (8, [50, 8, 8]):
        check_config(with_resolution(value), SCHEMA, ["config/config.yaml"])
