"""cellseg.config: how config layers combine (hand-built cases)."""

from __future__ import annotations

import pytest

from cellseg.config.layers import layered_config, merge_layer, read_layer, typed_overrides
from cellseg.errors import CellsegError

BASE = {
    "data": {"demo": {"enabled": True, "size": "default"}, "roots": ["/a"]},
    "training": {"defaults": {"lr": 0.01, "augmentation": {"mirror_x": 0.5, "rotate_xy": 0.5}}},
    "models": {"unet_2d": {"lr": 0.003}, "swin_3d": {"patch_shape": [32, 32, 64]}},
}


def test_mappings_merge_key_by_key_and_lists_replace():
    merged = merge_layer(BASE, {"data": {"demo": {"enabled": False}, "roots": ["/b", "/c"]}})
    assert merged["data"] == {"demo": {"enabled": False, "size": "default"}, "roots": ["/b", "/c"]}
    merged = merge_layer(BASE, {"training": {"defaults": {"augmentation": {"rotate_xy": 1.0}}}})
    assert merged["training"]["defaults"] == {
        "lr": 0.01,
        "augmentation": {"mirror_x": 0.5, "rotate_xy": 1.0},
    }
    assert BASE["training"]["defaults"]["augmentation"]["rotate_xy"] == 0.5  # inputs untouched


def test_a_layers_models_replace_the_list_and_no_entry_survives():
    merged = merge_layer(BASE, {"models": {"swin_3d": {"lr": 5e-5}}})
    assert merged["models"] == {"swin_3d": {"lr": 5e-5}}  # no patch_shape from the base entry
    assert merge_layer(BASE, {"data": {"roots": []}})["models"] == BASE["models"]
    # only the top-level `models` is special: a nested key of that name merges as usual
    nested = merge_layer({"x": {"models": {"a": 1}}}, {"x": {"models": {"b": 2}}})
    assert nested == {"x": {"models": {"a": 1, "b": 2}}}


def test_layers_apply_in_order_then_overrides():
    config = layered_config(
        BASE,
        [{"models": {"vit_2d": {}}}, {"training": {"defaults": {"lr": 0.2}}}],
        {"training": {"defaults": {"lr": "0.3"}}, "models": {"resnet_2d": {"lr": "1e-3"}}},
    )
    assert config["training"]["defaults"]["lr"] == 0.3
    assert config["models"] == {"resnet_2d": {"lr": 0.001}}


@pytest.mark.parametrize(
    ("given", "typed"),
    [
        ("7", 7),
        ("1e-3", 0.001),
        ("2.5", 2.5),
        ("true", True),
        ("null", None),
        ("/data/root", "/data/root"),
        ("unet", "unet"),
        (["1", "x"], [1, "x"]),
        ({"a": {"b": "4"}}, {"a": {"b": 4}}),
    ],
)
def test_nested_command_line_values_are_typed_like_a_config_file(given, typed):
    assert typed_overrides(given) == typed


def test_unreadable_layers_fail_in_one_line_naming_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("models: [unclosed\n")
    with pytest.raises(CellsegError, match=rf"^{bad}: cannot read this config file") as error:
        read_layer(bad)
    assert "\n" not in str(error.value)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("just text\n")
    with pytest.raises(CellsegError, match="mapping at the top level"):
        read_layer(scalar)


def test_a_layer_indented_with_a_tab_names_the_line(tmp_path):
    preset = tmp_path / "preset.yaml"
    preset.write_text("training:\n  defaults:\n\t  lr: 0.01\n")
    with pytest.raises(CellsegError) as error:
        read_layer(preset)
    assert str(error.value) == (
        f"{preset}:3: this line is indented with a tab, but YAML indents with spaces only: "
        "replace the tab with spaces (as many as the line's level needs)"
    )
    # a tab inside a quoted value is text, not indentation
    preset.write_text('note: "a\\tb"\ntraining:\n  defaults: {lr: 0.01}\n')
    assert read_layer(preset)["note"] == "a\tb"
