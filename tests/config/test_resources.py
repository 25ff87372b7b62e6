"""What each job asks for (cellseg.config.resources), checked against hand-computed requests."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from cellseg.config.resources import (
    batch_mb,
    check_training_fits,
    class_frequency_resources,
    count_test_crops,
    evaluation_resources,
    figure_resources,
    host_memory_formula,
    job_memory_limit_mb,
    ranks_use_cuda,
    training_host_memory_mb,
    training_resources,
)
from cellseg.config.settings import resolve_settings
from cellseg.errors import CellsegError

REPO = Path(__file__).resolve().parents[2]
BASE = yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def config_with(**models: dict) -> dict:
    config = copy.deepcopy(BASE)
    config["models"] = models
    return config


def test_a_gpu_model_trains_and_evaluates_on_the_gpu_partition():
    config = config_with(unet_3d={"gpus": 2, "mem_mb": 9000, "runtime_min": 600})
    settings = resolve_settings(config, "unet_3d")
    train = training_resources(config, settings)
    assert (train.gpus, train.mem_mb, train.runtime_min) == (2, 9000, 600)
    assert (train.partition, train.qos) == ("l40-gpu", "gpu_access")
    rule = config["resources"]["evaluate"]
    evaluate = evaluation_resources(config, settings, test_crops=7)
    assert evaluate.gpus == 1 and evaluate.partition == "l40-gpu"
    assert evaluate.runtime_min == rule["startup_min"] + 7 * rule["minutes_per_crop"]
    assert evaluate.mem_mb == rule["mem_mb"] and evaluate.cpus_per_task == rule["cpus_per_task"]
    # a retry after an out-of-memory kill or a time limit asks for twice as much
    retry = evaluation_resources(config, settings, test_crops=7, attempt=2)
    assert retry.mem_mb == 2 * rule["mem_mb"]
    assert retry.runtime_min == 2 * evaluate.runtime_min


def test_a_cpu_model_never_lands_on_the_gpu_partition():
    config = config_with(resnet_2d={"gpus": 0})
    settings = resolve_settings(config, "resnet_2d")
    jobs = [
        training_resources(config, settings),
        evaluation_resources(config, settings, test_crops=3),
        figure_resources(config),
        class_frequency_resources(config),
    ]
    assert config["resources"]["evaluate"]["gpus"] == 1  # asked for, but the model is CPU-only
    for job in jobs:
        assert (job.gpus, job.partition, job.qos) == (0, "general", "normal")


def test_the_figures_of_a_gpu_model_ask_for_no_gpu():
    """visualize draws the slices evaluation kept (cellseg.figure_slices): no model runs."""
    config = config_with(resnet_2d={"gpus": 2})
    assert evaluation_resources(config, resolve_settings(config, "resnet_2d"), 3).gpus == 1
    figures = figure_resources(config)
    assert (figures.gpus, figures.partition, figures.qos) == (0, "general", "normal")
    assert figures.mem_mb == config["resources"]["visualize"]["mem_mb"]
    assert figure_resources(config, attempt=2).mem_mb == 2 * figures.mem_mb


def test_test_crops_are_counted_from_the_datasplit(tmp_path):
    datasplit = tmp_path / "datasplit.csv"
    rows = ["train", "test", "validate", "test", "test"]
    datasplit.write_text(
        "".join(f"{split},a.zarr,em,a.zarr,crop{i}/[mito]\n" for i, split in enumerate(rows))
    )
    assert count_test_crops(datasplit) == 3


def seed_like(**overrides) -> tuple[dict, object]:
    entry = {
        "gpus": 4,
        "num_workers": 8,
        "cache_mb": 2048,
        "mem_mb": 64000,
        "cpus_per_task": 32,
        "patch_shape": [16, 64, 64],
        "batch_per_gpu": 1,
    }
    config = config_with(swin_3d=entry | overrides)
    return config, resolve_settings(config, "swin_3d")


def test_host_memory_estimate_counts_every_process_cache_and_batch():
    config, settings = seed_like(patch_shape=[32, 256, 256], batch_per_gpu=2)
    host = config["resources"]["host_memory"]
    # one batch: 2 patches x 32*256*256 voxels x (4 bytes of image + 14 of uint8 targets) = 72 MiB
    assert batch_mb(settings) == 72
    # 4 ranks, each: 9 caches, its base and CUDA's, 8 workers' bases, 8 x 2 prefetched + 2 batches
    by_hand = 4 * (9 * 2048 + host["rank_mb"] + host["cuda_mb"] + 8 * host["worker_mb"] + 18 * 72)
    assert training_host_memory_mb(config, settings, uses_cuda=True) == pytest.approx(by_hand)
    without_cuda = by_hand - 4 * host["cuda_mb"]
    assert training_host_memory_mb(config, settings) == pytest.approx(without_cuda)


def test_a_training_job_whose_caches_exceed_its_memory_is_refused():
    # the case: 4 ranks x 9 processes x 2 GB of cache is 72 GiB against 64000 MB
    config, settings = seed_like(num_workers=7)
    with pytest.raises(CellsegError, match=r"models\.swin_3d: .* exceeds models\.swin_3d\.mem_mb"):
        check_training_fits(config, settings, environ={})
    # under SLURM its --mem is the limit, whatever mem_mb says
    config, settings = seed_like(num_workers=7, cache_mb=512)
    check_training_fits(config, settings, environ={})
    with pytest.raises(CellsegError, match="SLURM's --mem = 20000 MB"):
        check_training_fits(config, settings, environ={"SLURM_MEM_PER_NODE": "20000"})


def test_the_refusal_shows_every_term_of_the_estimate():
    config, settings = seed_like(num_workers=7, patch_shape=[32, 256, 256], batch_per_gpu=2)
    host = config["resources"]["host_memory"]
    for uses_cuda in (False, True):
        formula = host_memory_formula(config, settings, uses_cuda)
        # the terms as printed, summed by hand, are the estimate
        cuda = host["cuda_mb"] if uses_cuda else 0
        by_hand = 4 * (8 * 2048 + host["rank_mb"] + cuda + 7 * host["worker_mb"] + 16 * 72)
        assert training_host_memory_mb(config, settings, uses_cuda) == pytest.approx(by_hand)
        assert formula == (
            f"ranks 4 × ((num_workers 7 + 1) × cache_mb 2048 + rank_mb {host['rank_mb']}"
            + (f" + cuda_mb {cuda}" if uses_cuda else "")
            + f" + num_workers × worker_mb {host['worker_mb']} + 16 batches × 72 MB)"
        )
        with pytest.raises(CellsegError) as error:
            check_training_fits(config, settings, environ={}, uses_cuda=uses_cuda)
        assert f"an estimated {by_hand:.0f} MB of host memory ({formula})" in str(error.value)


def test_a_run_on_cpu_rehearsal_on_a_gpu_node_counts_no_cuda_context():
    _, settings = seed_like()
    assert ranks_use_cuda(settings, cuda_available=True)
    assert not ranks_use_cuda(settings, cuda_available=False)
    assert not ranks_use_cuda(replace(settings, run_on_cpu=True), cuda_available=True)
    assert not ranks_use_cuda(replace(settings, gpus=0), cuda_available=True)


def test_more_processes_than_cpus_is_a_warning():
    config, settings = seed_like(cache_mb=256)  # 4 x (8 + 1) = 36 processes on 32 CPUs
    warning = check_training_fits(config, settings, environ={})
    assert "36 processes" in warning and "cpus_per_task = 32" in warning
    assert (
        check_training_fits(config, seed_like(cache_mb=256, num_workers=7)[1], environ={}) is None
    )
    config["resources"]["host_memory"]["check"] = False
    assert check_training_fits(config, settings, environ={}) is None


def test_slurm_memory_limit_is_read_from_the_environment():
    assert job_memory_limit_mb({}) is None
    assert job_memory_limit_mb({"SLURM_MEM_PER_NODE": "64000"}) == 64000
    assert job_memory_limit_mb({"SLURM_MEM_PER_CPU": "2000", "SLURM_CPUS_ON_NODE": "8"}) == 16000


def test_every_seed_model_fits_its_own_memory_request_with_cuda():
    seed = yaml.safe_load((REPO / "config" / "experiments" / "l40s_comparison.yaml").read_text())
    config = copy.deepcopy(BASE)
    for section in ("training", "resources"):
        for key, value in seed[section].items():
            config[section][key] = (
                config[section].get(key, {}) | value if isinstance(value, dict) else value
            )
    config["models"] = seed["models"]
    for key in seed["models"]:
        settings = resolve_settings(config, key)
        # no warning either: every process has its CPU
        assert check_training_fits(config, settings, environ={}, uses_cuda=True) is None, key
        estimate = training_host_memory_mb(config, settings, uses_cuda=True)
        assert estimate <= settings.mem_mb <= 1.25 * estimate + 1000, key
