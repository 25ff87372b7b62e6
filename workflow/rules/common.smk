# Config validation and the helpers every stage uses.

from pathlib import Path

import json
import os
import shlex
import sys

from snakemake.utils import validate

# the package is importable (and exported to jobs) since workflow/rules/package.smk
from cellseg.config.layers import (
    check_config,
    config_digest,
    layered_config,
    read_layer,
)
from cellseg.errors import CellsegError
from cellseg.io import write_text_atomic
from cellseg.config.resources import (
    check_local_gpus,
    class_frequency_resources,
    count_test_crops,
    evaluation_resources,
    figure_resources,
    prediction_resources,
    training_resources,
    visible_gpu_count,
)
from cellseg.training.preflight_verdict import PreflightConfig, preflight_key
from cellseg.config.settings import check_variant_name, resolve_settings, runs
from cellseg.voxels import cli_value

# Snakemake has already merged every --configfile and --config into `config` on top of
# config/config.yaml, key by key, so the base's per-model entries would survive into every
# preset. Rebuild it from the layers instead (cellseg.config): the base, each --configfile in
# order, then --config; a layer's `models` replaces the list. Jobs are started with the same
# --configfiles and --config, so they rebuild the same config.
CONFIG_LAYERS = [
    *([] if workflow.config_settings.replace_workflow_config else [BASE_CONFIG]),
    *map(Path, workflow.config_settings.configfiles),
]
# what a config error names as its source
CONFIG_SOURCE = ", ".join(map(str, CONFIG_LAYERS))
try:
    _resolved = layered_config(
        read_layer(CONFIG_LAYERS[0]) if CONFIG_LAYERS else {},
        [read_layer(path) for path in CONFIG_LAYERS[1:]],
        dict(workflow.config_settings.config),
    )
except CellsegError as error:
    sys.exit(f"cellseg: config error: {error}")
config.clear()
config.update(_resolved)

# one line naming the file and the key, before any job; then snakemake's validate fills defaults
try:
    check_config(
        config,
        workflow.source_path("../schemas/config.schema.yaml"),
        [str(path) for path in CONFIG_LAYERS],
    )
except CellsegError as error:
    sys.exit(f"cellseg: config error: {error}")
validate(config, schema="../schemas/config.schema.yaml")


DEMO_DATA = "results/demo_data"


IMPORTED_DATA = "results/imported"
# data.imports by mapping file name (check_config refuses two of one name)
IMPORTS = {Path(entry["mapping"]).stem: entry for entry in config["data"]["imports"]}


def imported_roots():
    """The data roots rule import_em writes, one per data.imports mapping file."""
    return [f"{IMPORTED_DATA}/{name}" for name in IMPORTS]


def data_roots():
    """The CellMap data roots the datasplit is made from."""
    if config["data"]["demo"]["enabled"]:
        return [DEMO_DATA]
    return config["data"]["roots"] + imported_roots()


# What the split is made from and how, rewritten only when it changes: the profiles' rerun
# trigger is the files' mtime alone, so without it an edit of data.imports, data.roots or a
# split setting would leave an existing results/datasplit.csv (and every model) as it was
DATASPLIT_SETTINGS = "results/datasplit.settings.json"
_SPLIT_KEYS = (
    "roots", "imports", "datasplit_csv", "resolution_nm", "em_range", "validate_fraction",
    "test_fraction", "split_seed", "split_margin_nm", "split_by",
)  # fmt: skip
if workflow.is_main_process:
    _split_settings = {key: config["data"][key] for key in _SPLIT_KEYS}
    _split_settings["demo_enabled"] = config["data"]["demo"]["enabled"]
    _split_text = json.dumps(_split_settings, indent=1, sort_keys=True) + "\n"
    if not Path(DATASPLIT_SETTINGS).is_file() or (
        Path(DATASPLIT_SETTINGS).read_text() != _split_text
    ):
        try:
            write_text_atomic(DATASPLIT_SETTINGS, _split_text)
        except (CellsegError, OSError) as error:
            # a full or read-only results/ must not stop jobs that never split (the record of
            # the resolved config says so itself); a datasplit that needs it finds it missing
            print(f"cellseg: warning: {error}", file=sys.stderr)


def datasplit_inputs(wildcards):
    """The datasplit rule's tracked inputs: the user's datasplit CSV when there is one (an edit
    re-plans the split and all that depends on it), the demo data when the demo is on; data
    roots are not tracked (external stores are not Snakemake outputs)."""
    inputs = {"settings": DATASPLIT_SETTINGS}
    if config["data"]["datasplit_csv"]:
        inputs["csv"] = str(config["data"]["datasplit_csv"])
    if config["data"]["demo"]["enabled"]:
        inputs["demo"] = DEMO_DATA
    for name, root in zip(IMPORTS, imported_roots()):
        inputs[f"imported_{name}"] = root
    return inputs


MODELS = list(config["models"])

# Every training job: models x variants x replicates (cellseg.config.settings.Run). A run is
# named {model}_{dim}[~{variant}][~r{k}]; the variant-free replicate 0 keeps {model}_{dim}, so
# the default config's paths are today's and adding replicates or variants retrains nothing.
try:
    for _variant in config["variants"]:
        check_variant_name(_variant, CONFIG_SOURCE)
    _runs = runs(config, CONFIG_SOURCE)
except CellsegError as error:
    sys.exit(f"cellseg: config error: {error}")
RUNS = [run.name for run in _runs]
# A local run starts no more GPU jobs at once than this machine has GPUs (on a cluster, SLURM
# does that); `--resources gpu=N` sets another bound. With no GPU visible nothing is bounded:
# a job asking for one says at its start why it cannot use CUDA (or runs on CPU by run_on_cpu).
LOCAL_GPUS = 0
if (
    workflow.local_exec
    and workflow.is_main_process
    and "gpu" not in workflow.global_resources
):
    LOCAL_GPUS = visible_gpu_count()
    if LOCAL_GPUS:
        workflow.register_resource("gpu", LOCAL_GPUS)

# per-run figures for replicate 0 of each model and variant (any run's on request)
FIGURE_RUNS = [run.name for run in _runs if run.replicate == 0]
# the study summary (variants ranked, seeds aggregated) when there is more than one run per model
STUDY = bool(config["variants"]) or config["replicates"] > 1


wildcard_constraints:
    model="[a-z][a-z0-9]*",
    dim="2d|3d",
    run="[a-z][a-z0-9]*_(2d|3d)(~[A-Za-z][A-Za-z0-9.+-]*)*",


_SETTINGS = {}


def model_settings(wildcards):
    """The resolved training settings of run {run} (or model {model}_{dim}), resolved once per
    run: every resource, param and thread count of a job reads the same object."""
    run = getattr(wildcards, "run", None) or f"{wildcards.model}_{wildcards.dim}"
    if run not in _SETTINGS:
        _SETTINGS[run] = resolve_settings(config, run)
    return _SETTINGS[run]


# Snakemake resource name -> field of cellseg.config.resources.JobResources
_RESOURCE_FIELDS = {
    "gpu": "gpus",
    "mem_mb": "mem_mb",
    "runtime": "runtime_min",
    "cpus_per_task": "cpus_per_task",
    "slurm_partition": "partition",
    "qos": "qos",
}


def _resource(request, field):
    def resource(wildcards, attempt):
        return getattr(request(wildcards, attempt), field)

    return resource


def job_resources(request, **overrides):
    """A rule's ``resources:`` (``**job_resources(...)``) from one request function,
    ``request(wildcards, attempt) -> cellseg.config.resources.JobResources``: gpu, mem_mb, runtime,
    cpus_per_task, slurm_partition and qos all read the one request of the job and attempt,
    so no rule repeats six lambdas. ``overrides`` replace single keys (a CPU-only rule leaves
    out gpu with ``gpu=None``; the evaluate rule's runtime reads the datasplit)."""
    resources = {
        name: _resource(request, field) for name, field in _RESOURCE_FIELDS.items()
    }
    resources.update(overrides)
    return {name: value for name, value in resources.items() if value is not None}


def train_job(wildcards, attempt=1):
    """What a train job asks for (cellseg.config.resources); the same on every attempt."""
    return training_resources(config, model_settings(wildcards))


def train_init(wildcards):
    """The run's weights file when its init is {checkpoint: PATH}: an input, so that another file
    there retrains the run (cellseg.training.init). A missing file that no rule makes (one
    outside results/) stops the plan with one line naming the key and the fix."""
    path = model_settings(wildcards).init_checkpoint
    if path is None:
        return {}
    if not path.startswith("results/") and not Path(path).is_file():
        sys.exit(
            f"cellseg: config error: {CONFIG_SOURCE}: {wildcards.run}: init.checkpoint {path} "
            "does not exist; put the weights file there (docs/training.md, 'Where the weights "
            "start') or set init: scratch"
        )
    return {"init": path}


def train_gpus(wildcards):
    """The GPUs a train job asks for; a local run asking for more than this machine has is
    refused when the job is planned, with one line naming the key (cellseg.config.resources).
    """
    check_local_gpus(model_settings(wildcards), LOCAL_GPUS)
    return train_job(wildcards).gpus


def evaluate_job(wildcards, attempt, datasplit=None):
    """What an evaluate job asks for; its runtime grows with the datasplit's test crops (a dry
    run before the datasplit exists shows that one as <TBD>)."""
    test_crops = 0 if datasplit is None else count_test_crops(datasplit)
    return evaluation_resources(config, model_settings(wildcards), test_crops, attempt)


def evaluate_runtime(wildcards, input, attempt):
    """An evaluate job's minutes: start-up plus a measured time per test crop."""
    return evaluate_job(wildcards, attempt, input.datasplit).runtime_min


def visualize_job(wildcards, attempt):
    """What a visualize job asks for."""
    return figure_resources(config, attempt)


def class_frequencies_job(wildcards, attempt):
    """What the class_frequencies job asks for."""
    return class_frequency_resources(config, attempt)


def predict_blocks_job(wildcards, attempt):
    """What a predict_blocks job asks for (predict.resources)."""
    return prediction_resources(config, model_settings(wildcards), attempt)


def predict_pyramid_job(wildcards, attempt):
    """What a predict_pyramid job asks for (predict.pyramid_resources: CPU partition)."""
    return prediction_resources(
        config, model_settings(wildcards), attempt, pyramid=True
    )


def get_final_output():
    """The comparison (summary table, report and figures), each model's and variant's figures,
    for a study (variants or replicates) the study summary and, with preflight.enabled, the
    preflight table."""
    return [
        *rules.resolved_config.output,
        *rules.summary.output,
        *expand(rules.visualize.output, run=FIGURE_RUNS),
        *(rules.study.output if STUDY else []),
        *(rules.preflight_table.output if config["preflight"]["enabled"] else []),
    ]


def predict_all_targets(wildcards):
    """Every run x dataset of `predict` (cellseg.prediction_plan), or one line naming the bad
    predict.models entry (checked only when predict_all is planned: another target's config
    may name models this one does not configure, and `best` reads results/summary.csv).
    """
    from cellseg.prediction_plan import prediction_targets

    try:
        return prediction_targets(
            config,
            RUNS,
            MODELS,
            "results/summary.csv",
            DEMO_DATA,
            CONFIG_SOURCE,
        )
    except CellsegError as error:
        sys.exit(f"cellseg: config error: {error}")


# The profile's `retries` (how many jobs a long run may take) as the main Snakemake process knows
# it once it runs the workflow (not yet while it parses this file): a job's own Snakemake runs
# with --retries 0, so the number travels in the environment that local and SLURM jobs
# (sbatch --export=ALL) inherit from the main process.
RETRIES_VARIABLE = "CELLSEG_WORKFLOW_RETRIES"


onstart:
    os.environ[RETRIES_VARIABLE] = str(workflow.execution_settings.retries)


def workflow_retries(wildcards):
    """The profile's retries (RETRIES_VARIABLE in a job, the main process's own setting else)."""
    return int(os.environ.get(RETRIES_VARIABLE, workflow.execution_settings.retries))


def preflight_key_of(run):
    """The key run {run}'s preflight is tied to
    (cellseg.training.preflight_verdict.preflight_key): every setting of the run, the profile's
    retries and the preflight's thresholds."""
    return preflight_key(
        resolve_settings(config, run),
        workflow_retries(None),
        PreflightConfig.from_config(config),
    )


def preflight_path(run, suffix):
    """results/preflight/{run}/{key}.{suffix}: a result and its verdict are named by the key,
    so other settings are other files, which a train job that has to run waits for (the
    preflight measures again whatever the rerun triggers: the profiles' mtime sees no edit of
    the config), while a finished model's train job, not run, asks for none."""
    return f"results/preflight/{run}/{preflight_key_of(run)}.{suffix}"


def train_preflight(wildcards):
    """The train job's preflight verdict (preflight.smk) when preflight.enabled: ancient, so
    that a preflight run again (e.g. `snakemake preflight` after the experiment) never makes a
    finished model out of date under rerun-triggers mtime."""
    if not config["preflight"]["enabled"]:
        return {}
    return {"preflight_verdict": ancient(preflight_path(wildcards.run, "verdict"))}


def preflight_results(wildcards):
    """Every run's preflight result at its key (the table, rule preflight)."""
    return [preflight_path(run, "json") for run in RUNS]
