"""Snakemake rule train: run cellseg's trainer for one model (thin wrapper)."""

import sys

from cellseg.errors import CellsegError
from cellseg.training.launch import launch_training

with open(snakemake.log[0], "a") as log:  # noqa: F821
    try:
        status = launch_training(
            snakemake.config,  # noqa: F821
            f"{snakemake.wildcards.model}_{snakemake.wildcards.dim}",  # noqa: F821
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
