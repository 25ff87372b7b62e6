# Config validation and the helpers every stage uses.

from pathlib import Path

import copy
import os
import sys

import yaml
from snakemake.utils import update_config, validate

# The workflow runs the package next to it (src/), installed or not: this process imports it
# below, and jobs find it through PYTHONPATH, which local jobs and SLURM jobs (sbatch exports
# the environment) inherit. A `--sdm conda` job environment holds only the dependencies.
CELLSEG_SRC = str(Path(workflow.basedir) / "src")
if Path(CELLSEG_SRC, "cellseg").is_dir():
    sys.path.insert(0, CELLSEG_SRC)
    _pythonpath = os.environ.get("PYTHONPATH", "").split(os.pathsep)
    if _pythonpath[0] != CELLSEG_SRC:
        os.environ.update(
            PYTHONPATH=os.pathsep.join(filter(None, [CELLSEG_SRC, *_pythonpath]))
        )

from cellseg.config import check_config
from cellseg.errors import CellsegError
from cellseg.training.settings import resolve_settings

# config/config.yaml is always the base; a --configfile (an experiment preset) overlays it, so
# a preset holds only what differs. Its `models`, when given, replaces the base list: that is
# how a preset chooses which models to compare.
_base = yaml.safe_load(open(workflow.source_path("../../config/config.yaml")))
_overlay = copy.deepcopy(dict(config))
config.clear()
update_config(_base, _overlay)
if "models" in _overlay:
    _base["models"] = _overlay["models"]
config.update(_base)

# one line naming the file and the key, before any job; then snakemake's validate fills defaults
try:
    check_config(
        config,
        workflow.source_path("../schemas/config.schema.yaml"),
        workflow.configfiles,
    )
except CellsegError as error:
    sys.exit(f"cellseg: config error: {error}")
validate(config, schema="../schemas/config.schema.yaml")


DEMO_DATA = "results/demo_data"


def data_roots():
    """The CellMap data roots the datasplit is made from."""
    if config["data"]["demo"]["enabled"]:
        return [DEMO_DATA]
    return config["data"]["roots"]


def datasplit_inputs(wildcards):
    """The datasplit rule depends on the demo data when the demo is on, else on nothing it
    can track (external stores are not Snakemake outputs)."""
    return {"demo": DEMO_DATA} if config["data"]["demo"]["enabled"] else {}


MODELS = list(config["models"])


wildcard_constraints:
    model="[a-z][a-z0-9]*",
    dim="2d|3d",


def model_settings(wildcards):
    """The resolved training settings of model {model}_{dim}."""
    return resolve_settings(config, f"{wildcards.model}_{wildcards.dim}")


def get_final_output():
    """The comparison (summary table, report and figures) and every model's figures."""
    model, dim = zip(*(key.rsplit("_", 1) for key in MODELS))
    return [
        *rules.summary.output,
        *expand(rules.visualize.output, zip, model=model, dim=dim),
    ]
