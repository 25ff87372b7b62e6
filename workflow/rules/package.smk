# The cellseg package, importable here and in every job; then the base config read the way
# cellseg reads every config layer, before Snakemake's own `configfile:` loader reads it.

from pathlib import Path

import os
import sys

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

from cellseg.config.layers import read_layer
from cellseg.errors import CellsegError

# Snakemake's loader says only "Config file is not valid JSON or YAML" for a YAML mistake (a
# line indented with a tab): cellseg's reader names the file and the line. (A --configfile is
# loaded by Snakemake before any workflow code runs: scripts/env.sh reads it first with this
# reader, and common.smk reads every layer again with it.)
BASE_CONFIG = Path(workflow.basedir) / "config" / "config.yaml"
if BASE_CONFIG.is_file() and not workflow.config_settings.replace_workflow_config:
    try:
        read_layer(BASE_CONFIG)
    except CellsegError as error:
        sys.exit(f"cellseg: config error: {error}")
