"""``init``: where a run's weights start (scratch, a checkpoint file, ImageNet)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from cellseg.errors import CellsegError
from cellseg.losses import BalancedSoftmaxPartialTverskyLoss
from cellseg.models import build_model
from cellseg.models.margin import crop_margin
from cellseg.training import Trainer, resolve_settings
from cellseg.training.init import initialize_weights, load_matching, source_state
from checkpoint_builders import cosem_weights_file


def cellseg_file(path: Path, model: torch.nn.Module, name: str, dim: str) -> Path:
    """``model``'s weights in the format of a cellseg run's best.pt."""
    torch.save(
        {
            "format": "cellseg-model-1",
            "model": model.state_dict(),
            "settings": {"model": name, "dim": dim},
        },
        path,
    )
    return path


def test_scratch_keeps_the_config_hash_and_a_checkpoint_changes_it(tiny_config):
    before = resolve_settings(tiny_config, "unet_2d")
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"]["init"] = "scratch"
    assert resolve_settings(config, "unet_2d").config_hash() == before.config_hash()
    assert "init" not in resolve_settings(config, "unet_2d").result_dict()
    config["models"]["unet_2d"] = {"init": {"checkpoint": "weights/a.pt"}}
    settings = resolve_settings(config, "unet_2d")
    assert settings.init_checkpoint == "weights/a.pt"
    assert settings.config_hash() != before.config_hash()
    # a study variant sets it like any training key
    config["models"]["unet_2d"] = {}
    config["variants"] = {"pretrained": {"training": {"init": {"checkpoint": "weights/b.pt"}}}}
    assert resolve_settings(config, "unet_2d~pretrained~r1").init_checkpoint == "weights/b.pt"
    config["models"]["unet_2d"] = {"init": "pretrained"}
    with pytest.raises(CellsegError) as info:
        resolve_settings(config, "unet_2d")
    assert "\n" not in str(info.value) and "unet_2d" in str(info.value)
    assert "scratch, imagenet or {checkpoint: PATH}" in str(info.value)


def test_matching_tensors_load_and_a_head_for_other_classes_is_reinitialised(tmp_path):
    torch.manual_seed(0)
    trained = build_model("unet", "2d", preset="demo", out_channels=3)
    path = cellseg_file(tmp_path / "best.pt", trained, "unet", "2d")
    torch.manual_seed(1)
    network = build_model("unet", "2d", preset="demo")  # 14 classes
    fresh = {k: v.clone() for k, v in network.state_dict().items()}
    report = initialize_weights(network, {"checkpoint": str(path)}, "test")
    assert report is not None
    head = {"net.final_conv.weight", "net.final_conv.bias"}
    assert {name.split(" ")[0] for name in report.reinitialised} == head
    assert report.ignored == [] and 0.5 < report.loaded_fraction < 1
    source = trained.state_dict()
    for name, tensor in network.state_dict().items():
        expected = fresh[name] if name in head else source[name]
        assert torch.equal(tensor, expected), name
    log = report.describe()
    assert log.splitlines()[0].startswith(f"init from {path}: {len(source) - 2} tensors loaded")
    assert (
        "re-initialised: net.final_conv.weight (source (3, 8, 1, 1), network (14, 8, 1, 1))" in log
    )
    # a bare library state dict (no net. prefix) with one extra tensor: the extra one is ignored
    bare = {k.removeprefix("net."): v for k, v in source.items()} | {"extra.weight": torch.zeros(2)}
    torch.save(bare, tmp_path / "bare.pt")
    state, skip = source_state(tmp_path / "bare.pt", "unet_2d", "test")
    assert skip == {}
    report = load_matching(network, state, "bare")
    assert report.ignored == ["net.extra.weight"] and len(report.loaded) == len(source) - 2


def test_a_missing_file_is_one_line_naming_the_key_and_the_fix(tmp_path):
    network = build_model("unet", "2d", preset="demo")
    with pytest.raises(CellsegError) as info:
        initialize_weights(network, {"checkpoint": str(tmp_path / "nope.pt")}, "config: unet_2d")
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("config: unet_2d: init.checkpoint ") and "init: scratch" in message


def test_another_architecture_is_one_line(tmp_path):
    network = build_model("unet", "2d", preset="demo")
    resnet = build_model("resnet", "2d", preset="demo")
    # a cellseg run of another model, by its recorded name
    path = cellseg_file(tmp_path / "best.pt", resnet, "resnet", "2d")
    with pytest.raises(CellsegError) as info:
        initialize_weights(network, {"checkpoint": str(path)}, "test")
    assert "\n" not in str(info.value)
    assert "is a resnet_2d run and this run trains unet_2d" in str(info.value)
    # a bare state dict of another architecture, by what matches
    torch.save(resnet.state_dict(), tmp_path / "resnet.pt")
    with pytest.raises(CellsegError) as info:
        initialize_weights(network, {"checkpoint": str(tmp_path / "resnet.pt")}, "test")
    assert "\n" not in str(info.value) and "another architecture" in str(info.value)
    # a file that holds no state dict
    torch.save({"bad": "not tensors"}, tmp_path / "junk.pt")
    with pytest.raises(CellsegError, match="holds no state dict"):
        initialize_weights(network, {"checkpoint": str(tmp_path / "junk.pt")}, "test")


def test_imagenet_offline_and_on_a_model_without_timm_encoder_are_one_line(offline_hub):
    with pytest.raises(CellsegError) as info:
        initialize_weights(build_model("resnet", "2d", preset="demo"), "imagenet", "test")
    message = str(info.value)
    assert "\n" not in message
    assert "init: imagenet" in message and "resnet18" in message and "init: scratch" in message
    with pytest.raises(CellsegError) as info:
        initialize_weights(build_model("unet", "3d", preset="demo"), "imagenet", "test")
    assert "\n" not in str(info.value) and "unet_3d has none" in str(info.value)


def test_a_run_starts_from_the_file_and_a_changed_file_trains_anew(
    tiny_config, tiny_data, tmp_path
):
    torch.manual_seed(3)
    start = build_model("unet", "2d", preset="demo")
    init_file = cellseg_file(tmp_path / "start.pt", start, "unet", "2d")
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"]["max_epochs"] = 1
    config["models"]["unet_2d"] = {"init": {"checkpoint": str(init_file)}}
    settings = resolve_settings(config, "unet_2d")
    run_dir = tmp_path / "run"
    trainer = Trainer(settings, run_dir, tiny_data["datasplit"], tiny_data["class_frequencies"])
    trainer.initialize()
    trainer.on_train_start()  # a fresh start: the weights come from the file
    trainer.close_writer()
    # every tensor, the output bias included (a loaded head keeps its bias, not the prior)
    for name, tensor in trainer.network.state_dict().items():
        assert torch.equal(tensor, start.state_dict()[name]), name
    assert trainer.run() == 0
    log = (run_dir / "train.log").read_text()
    assert f"init from {init_file}: " in log and "0 re-initialised, 0 ignored" in log
    # another file at the same path (the workflow reruns the job): not resumed, trained anew
    torch.manual_seed(4)
    cellseg_file(init_file, build_model("unet", "2d", preset="demo"), "unet", "2d")
    again = Trainer(settings, run_dir, tiny_data["datasplit"], tiny_data["class_frequencies"])
    assert again.run() == 0
    log = (run_dir / "train.log").read_text()
    assert f"init.checkpoint {init_file} has changed" in log
    assert "resumed from" not in log


def test_a_valid_convolution_model_trains_on_targets_cropped_to_its_output(
    tiny_config, tiny_data, tmp_path, monkeypatch: pytest.MonkeyPatch
):
    """cosem_3d (valid convolutions, output = input - 2 x margin) trains and validates on CPU:
    every loss sees logits and targets of the output's shape, the target's centre."""
    seen: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    forward = BalancedSoftmaxPartialTverskyLoss.forward

    def recording(self, logits, target):
        seen.append((tuple(logits.shape), tuple(target.shape)))
        return forward(self, logits, target)

    monkeypatch.setattr(BalancedSoftmaxPartialTverskyLoss, "forward", recording)
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"].update(max_epochs=1, validation_patches_per_crop=1)
    config["models"] = {"cosem_3d": {"patch_shape": [24, 72, 72], "iterations_per_epoch": 2}}
    trainer = Trainer(
        resolve_settings(config, "cosem_3d"),
        tmp_path,
        tiny_data["datasplit"],
        tiny_data["class_frequencies"],
    )
    assert trainer.run() == 0
    assert trainer.margin == (8, 10, 10)
    output = (14, 8, 52, 52)
    assert len(seen) == 3  # 2 training steps, 1 validation batch
    assert all(logits[1:] == target[1:] == output for logits, target in seen), seen
    history = pd.read_csv(tmp_path / "history.csv")
    assert history["train_loss"].notna().all() and history["val_mean_dice"].between(0, 1).all()


def test_crop_margin_takes_the_centre():
    x = torch.arange(2 * 10 * 12, dtype=torch.float32).reshape(1, 2, 10, 12)
    cropped = crop_margin(x, (2, 3))
    assert cropped.shape == (1, 2, 6, 6)
    assert torch.equal(cropped, x[:, :, 2:8, 3:9])
    assert crop_margin(x, (0, 0)) is x


def test_a_cosem_start_keeps_the_prior_on_its_new_head(tiny_config, tiny_data, tmp_path):
    """Trainer start from a COSEM file: the backbone is the file's, the head (COSEM's classes)
    re-initialised with the prior output bias (output_bias_init: prior)."""
    torch.manual_seed(0)
    published = build_model("cosem", "3d", preset="demo").net
    path = cosem_weights_file(tmp_path / "setup.pth", published)
    config = copy.deepcopy(tiny_config)
    datasplit, frequencies = tiny_data["datasplit"], tiny_data["class_frequencies"]
    config["models"] = {
        "cosem_3d": {"patch_shape": [24, 72, 72], "init": {"checkpoint": str(path)}}
    }
    trainer = Trainer(
        resolve_settings(config, "cosem_3d"), tmp_path / "run", datasplit, frequencies
    )
    trainer.initialize()
    trainer.on_train_start()
    trainer.close_writer()
    net = trainer.network.net
    assert torch.equal(net.prediction_head.bias, trainer.prior_output_bias())
    for name, tensor in published.state_dict().items():
        if not name.startswith("prediction_head."):
            assert torch.equal(net.state_dict()[name], tensor), name
    assert "COSEM's classes" in (tmp_path / "run" / "train.log").read_text()


def test_an_imagenet_start_reports_its_share_and_warns_when_it_is_scratch_in_effect(
    tiny_config, tiny_data, tmp_path, monkeypatch
):
    # timm's encoder built as init: imagenet builds it, its weights random instead of
    # downloaded (this machine has no network): what loads, and how much, is the same
    from cellseg.reporting import summarize, summary_markdown
    from cellseg.training import init as init_module
    from test_reporting import metrics_table

    build = init_module.create_timm_unet
    monkeypatch.setattr(
        init_module,
        "create_timm_unet",
        lambda *args, **kwargs: build(*args, **(kwargs | {"pretrained": False})),
    )
    config = copy.deepcopy(tiny_config)
    config["training"]["defaults"].update(max_epochs=1)
    config["training"]["2d"].update(patch_shape=[64, 64], iterations_per_epoch=1)
    config["models"] = {"resnet_2d": {"preset": "seed", "init": "imagenet"}}
    settings = resolve_settings(config, "resnet_2d")
    run = tmp_path / "resnet_2d"
    Trainer(settings, run, tiny_data["datasplit"], tiny_data["class_frequencies"]).run()
    log = (run / "train.log").read_text()
    # the seed ResNet keeps only its stem's weights: 0.04 % of its parameters
    assert "tensors loaded (0.04% of the parameters)" in log
    assert "warning: init from imagenet: timm resnet18 loads 0.04% of resnet_2d's parameters" in log
    assert "below 25%: the run starts essentially from scratch" in log
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["init"] == "imagenet" and summary["starts_pretrained"] is False
    assert summary["init_loaded_fraction"] == pytest.approx(0.000445, abs=5e-6)
    # the summary says which models really start pretrained
    metrics = tmp_path / "metrics.csv"
    metrics_table("resnet_2d", np.full((3, 3), 0.5)).to_csv(metrics, index=False)
    result = summarize(
        {"resnet_2d": metrics},
        {"resnet_2d": run / "train_summary.json"},
        tiny_data["class_frequencies"],
        expected=["resnet_2d"],
    )
    row = result.table.set_index("model").loc["resnet_2d"]
    assert row["init_loaded_fraction"] == pytest.approx(0.000445, abs=5e-6)
    text = summary_markdown(result)
    assert (
        "- `resnet_2d`: init imagenet, 0.04% of the parameters loaded: below the pretrained "
        "share: starts essentially from scratch" in text
    )
