"""Snakemake rule train: run cellseg's trainer for one run (thin wrapper)."""

import sys

from cellseg.errors import CellsegError
from cellseg.training.launch import launch_training
from cellseg.training.settings import Run, run_config

with open(snakemake.log[0], "a") as log:  # noqa: F821
    try:
        # the run's variant and seed are folded into the config the job reads (its
        # workflow_config.yaml), under the plain {model}_{dim} key
        run = Run.parse(snakemake.wildcards.run)  # noqa: F821
        status = launch_training(
            run_config(snakemake.config, run),  # noqa: F821
            run.model_key,
            snakemake.params.run_dir,  # noqa: F821
            snakemake.input.datasplit,  # noqa: F821
            snakemake.input.class_frequencies,  # noqa: F821
            runtime_min=snakemake.resources.runtime,  # noqa: F821
            log=log,
        )
    except CellsegError as error:  # one line in the job's log, as the command line prints it
        print(f"cellseg: error: {error}", file=log)
        status = 1
sys.exit(status)
