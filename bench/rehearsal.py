"""Rehearse the seed experiment on SLURM: the real Longleaf profile, the seed preset, a CPU node.

    bash .ci/install-slurm.sh && bash scripts/env.sh python bench/rehearsal.py [--workdir DIR]

Starts the single-node test SLURM of the tests (tests/slurm/cluster.py: partitions l40-gpu and
general, 4 GPUs declared as gres), writes synthetic data with the real crops' geometry
(``make-demo-data --size realistic``), and runs **the seed experiment itself**
(config/experiments/l40s_comparison.yaml through config/profiles/longleaf, plus only the test
cluster's profile overrides) to the summary, changing only what a 2-CPU, 24 GB machine without a
GPU forces. Every change is printed before the run; everything else is the seed's: ``seed``
architecture presets, patch shapes, ranks = the seed's GPU count as gloo DDP ranks, gradient
accumulation, learning rates, workers, caches, early stopping, evaluation and figures.

Afterwards it prints, per job: the sbatch line, peak memory (Snakemake's benchmark of the job's
process tree, RSS and PSS) against the seed's request, and wall time; and it checks that every
model's resolved settings equal the seed preset's except the printed changes. About 1.5-2
hours on 2 cores; not part of the tests.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

SOURCE = Path(__file__).resolve().parents[1]
# the rehearsal runs a snapshot of the committed tree in WORKDIR/cellseg, so that editing the
# working tree while it runs (an hour) cannot change its jobs halfway
SEED_PRESET = Path("config/experiments/l40s_comparison.yaml")
BASE = Path("config/config.yaml")


def snapshot(destination: Path) -> Path:
    """``git archive HEAD`` of this repository into ``destination`` (replaced)."""
    shutil.rmtree(destination, ignore_errors=True)
    destination.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "HEAD"], cwd=SOURCE, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(destination)], input=archive, check=True)
    return destination


# what a CPU node forces, and why (printed before the run)
TRAINING_CHANGES = {
    "run_on_cpu": (
        True,
        "the test node has no GPU: each model's GPUs run as that many gloo CPU processes "
        "(without it a GPU job stops at start)",
    ),
    "max_epochs": (1, "one epoch: the code path of 200, in minutes"),
    "validation_patches_per_crop": (1, "one validation patch per crop"),
    "runtime_min": (120, "minutes instead of the partition's 11 days"),
    "time_budget_margin_min": (5, "a margin that fits the 120-minute limit"),
    "cpus_per_task": (2, "the test node has 2 CPUs (the seed asks for more)"),
    "num_workers": (
        2,
        "2 loader workers per rank: the seed's 15 per rank, ~0.9 GB each with their caches, "
        "do not fit 24 GB beside the ranks",
    ),
    "mem_mb": (20000, "the test node has ~21 GB; the seed's request is reported against peaks"),
}
DIM_CHANGES = {
    "iterations_per_epoch": (3, "3 micro-batches per rank (one accumulated optimizer step)"),
}
BATCH = (
    1,
    "batch 1 per rank: the seed's batches do not fit 24 GB of host memory in float32 for the 3D "
    "models (docs/models.md, plan-batch: 1-7 GB of activations per sample in bf16) and would take "
    "minutes per micro-batch on 2 cores for the 2D ones",
)
# Three 3D models do not fit the node at the seed's patch even at batch 1: on CPU (float32, no
# bf16 autocast) a unet_3d rank needs ~15 GB of activations, resnet_3d ~9 GB (measured: a first
# rehearsal was killed by the kernel's OOM killer) and swin_3d ~6.5 GB (docs/models.md, plan-batch: 7.6,
# 4.4 and 3.6 GB per sample in bf16) times 2, 2 and 4 ranks. A quarter of the voxels keeps the
# rank count, the DDP path and everything else.
PATCH = {
    "unet_3d": ([32, 128, 128], "2 ranks x ~15 GB of float32 activations at 32x256x256"),
    "resnet_3d": ([32, 128, 128], "2 ranks x ~9 GB of float32 activations at 32x256x256"),
    "swin_3d": ([32, 128, 128], "4 ranks x ~6.5 GB of float32 activations at 32x256x256"),
}
OTHER_CHANGES = {
    ("resources", "host_memory", "check"): (
        False,
        "the start-up memory check compares the seed's estimate with the node's 20 GB",
    ),
    ("resources", "evaluate", "cpus_per_task"): (2, "2 CPUs on the test node"),
    ("resources", "evaluate", "mem_mb"): (20000, "the node's memory; peaks reported"),
    ("resources", "evaluate", "minutes_per_crop"): (
        60,
        "a 400^3 test crop on 2 CPU cores instead of an L40S (3-15 min measured; the seed's 2 "
        "min per crop leave the 3D models little room)",
    ),
    ("resources", "visualize", "cpus_per_task"): (2, "2 CPUs on the test node"),
    ("resources", "visualize", "mem_mb"): (20000, "the node's memory; peaks reported"),
    ("resources", "class_frequencies", "cpus_per_task"): (2, "2 CPUs on the test node"),
    ("evaluation", "min_crops_for_statistics"): (
        2,
        "the rehearsal data has 5 crops (1 test crop); statistics need 6 test crops",
    ),
}


def load_cluster_module():
    spec = importlib.util.spec_from_file_location("cluster", SOURCE / "tests/slurm/cluster.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["cluster"] = module
    spec.loader.exec_module(module)
    return module


def rehearsal_config(data_root: Path, repo: Path) -> tuple[dict, list[str]]:
    """The overlay on ``repo``'s seed preset, and one line per change."""
    seed = yaml.safe_load((repo / SEED_PRESET).read_text())
    changes = [
        "data.roots: the synthetic realistic-geometry data (make-demo-data --size realistic)"
    ]
    overlay: dict = {"data": {"roots": [str(data_root)]}, "training": {"defaults": {}}}
    for key, (value, why) in TRAINING_CHANGES.items():
        overlay["training"]["defaults"][key] = value
        changes.append(f"training.defaults.{key} (and models.*.{key}): {value} ({why})")
    for dim in ("2d", "3d"):
        overlay["training"][dim] = {k: v for k, (v, _) in DIM_CHANGES.items()}
    for key, (value, why) in DIM_CHANGES.items():
        changes.append(f"training.2d/3d.{key}: {value} ({why})")
    models = copy.deepcopy(seed["models"])
    for key, entry in models.items():
        for name in set(entry) & set(TRAINING_CHANGES):  # a model's own request, e.g. mem_mb
            entry[name] = TRAINING_CHANGES[name][0]
        if entry["batch_per_gpu"] != BATCH[0]:
            changes.append(f"models.{key}.batch_per_gpu: {entry['batch_per_gpu']} -> {BATCH[0]}")
            entry["batch_per_gpu"] = BATCH[0]
    changes.append(f"  ({BATCH[1]})")
    for key, (shape, why) in PATCH.items():
        models[key]["patch_shape"] = shape
        changes.append(f"models.{key}.patch_shape: {shape} ({why} do not fit 24 GB)")
    overlay["models"] = models
    for path, (value, why) in OTHER_CHANGES.items():
        section = overlay
        for part in path[:-1]:
            section = section.setdefault(part, {})
        section[path[-1]] = value
        changes.append(f"{'.'.join(path)}: {value} ({why})")
    changes.append("retries: 0 (a failure shows at once; the seed's profile retries twice)")
    return overlay, changes


def benchmark(workdir: Path, rule: str, name: str) -> dict | None:
    """Snakemake's benchmark of a finished job (None for a job that did not finish)."""
    path = workdir / "benchmarks" / rule / f"{name}.tsv"
    if not path.is_file():
        path = workdir / "benchmarks" / f"{rule}.tsv"
    if not path.is_file():
        return None
    row = pd.read_csv(path, sep="\t").iloc[-1]
    return {
        "s": float(row["s"]),
        "max_rss": float(row["max_rss"]),
        "max_pss": float(row["max_pss"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cellseg-rehearsal"))
    parser.add_argument("--keep-cluster", action="store_true", help="leave the SLURM running")
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="only print the report of the run in --workdir (finished or stopped midway)",
    )
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        load_cluster_module()
        logs = sorted((workdir / ".snakemake" / "log").glob("*.snakemake.log"))
        report(workdir, logs[-1].read_text())
        return 0
    repo = snapshot(workdir / "cellseg")
    print(f"running the committed tree (git HEAD) from {repo}")
    cluster_module = load_cluster_module()
    data_root = workdir / "data"
    if not data_root.is_dir():
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cellseg", "make-demo-data", "--size", "realistic",
             "--out", str(data_root)],
            check=True, env=os.environ | {"PYTHONPATH": str(repo / "src")},
        )  # fmt: skip
        print(f"data written in {time.perf_counter() - started:.0f} s")

    overlay, changes = rehearsal_config(data_root, repo)
    overlay_path = workdir / "rehearsal.yaml"
    overlay_path.write_text(yaml.safe_dump(overlay, sort_keys=False))
    print(
        "Changes from the seed experiment (everything else is config/experiments/l40s_comparison.yaml):"
    )
    for line in changes:
        print(f"  {line}")

    # an earlier rehearsal killed midway leaves Snakemake's lock; this directory is ours
    shutil.rmtree(workdir / ".snakemake" / "locks", ignore_errors=True)
    root = cluster_module.BASE_DIR / "rehearsal"
    cluster = cluster_module.load_cluster(root) or cluster_module.start_cluster(root, None)
    try:
        profile = cluster.make_test_profile(
            workdir / "profile",
            {"configfile": [str(repo / SEED_PRESET), str(overlay_path)], "retries": 0},
        )
        environment = cluster.env | {"PYTHONPATH": str(repo / "src")}
        environment["PATH"] = f"{Path(sys.executable).parent}:{environment['PATH']}"
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "-d", str(workdir),
             "--profile", str(profile)],
            cwd=workdir, env=environment, capture_output=True, text=True,
        )  # fmt: skip
        wall = time.perf_counter() - started
        log = result.stdout + result.stderr
        (workdir / "rehearsal.log").write_text(log)
        print(
            f"snakemake exit {result.returncode} after {wall / 60:.1f} min (log: {workdir / 'rehearsal.log'})"
        )
        if result.returncode != 0:
            print(log[-4000:])
            return result.returncode
    finally:
        if not args.keep_cluster:
            cluster_module.stop_cluster(root)

    report(workdir, log)
    return 0


def report(workdir: Path, log: str) -> None:
    """Print the settings check and the per-job table of the run in ``workdir``."""
    repo = workdir / "cellseg"
    sys.path.insert(0, str(repo / "src"))
    from cellseg.config.layers import layered_config, read_layer
    from cellseg.config.settings import resolve_settings

    cluster_module = sys.modules["cluster"]
    calls = cluster_module.sbatch_calls(log)
    seed_config = layered_config(read_layer(repo / BASE), [read_layer(repo / SEED_PRESET)], {})
    resolved = yaml.safe_load((workdir / "results" / "config.resolved.yaml").read_text())
    changed = set(TRAINING_CHANGES) | set(DIM_CHANGES) | {"batch_per_gpu"}
    changed_patch = set(PATCH)
    print("\nResolved settings against the seed preset (only the printed changes may differ):")
    for key, actual in resolved["models"].items():
        expected = resolve_settings(seed_config, key).result_dict()
        allowed = changed | ({"patch_shape"} if key in changed_patch else set())

        def same(a: object, b: object) -> bool:
            # the resolved record also lists the loss keys that do not change training
            if isinstance(a, dict) and isinstance(b, dict):
                return all(a.get(k) == v for k, v in b.items())
            return a == b

        differing = sorted(
            k
            for k in expected
            if k in actual and not same(actual[k], expected[k]) and k not in allowed
        )
        print(f"  {key}: {'equal' if not differing else 'DIFFERS in ' + ', '.join(differing)}")
    print(
        "\n| job | sbatch | wall (s) | peak RSS (MB) | peak PSS (MB) | seed request (MB) | PSS / request |"
    )
    print("|---|---|---:|---:|---:|---:|---:|")
    seed_resources = seed_config["resources"]
    for comment, argv in sorted(calls.items()):
        rule, _, wildcards = comment.partition("_wildcards_")
        name = wildcards or rule
        figures = benchmark(workdir, rule, name)
        if figures is None:
            print(f"| {rule} {name} | – | not finished | | | | |")
            continue
        if rule == "train":
            request = resolve_settings(seed_config, name).mem_mb
        else:
            request = seed_resources[rule]["mem_mb"]
        sbatch = " ".join(
            f"{flag} {value}"
            for flag in ("-p", "--qos", "--gpus", "--cpus-per-task", "--mem", "-t")
            if (value := cluster_module.option(argv, flag)) is not None
        )
        print(
            f"| {rule} {name} | `{sbatch}` | {figures['s']:.0f} | {figures['max_rss']:.0f} | "
            f"{figures['max_pss']:.0f} | {request} | {figures['max_pss'] / request:.2f} |"
        )


if __name__ == "__main__":
    sys.exit(main())
