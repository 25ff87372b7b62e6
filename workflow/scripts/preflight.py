"""Snakemake rule preflight_run: one run's preflight on its training job's node (thin wrapper)."""

import sys

from cellseg.joblog import job_log
from cellseg.training.preflight import launch_preflight

# stderr goes to the job's log; the measuring processes write into the same log
with job_log(snakemake.log[0]) as log:  # noqa: F821
    status = launch_preflight(
        snakemake.config,  # noqa: F821
        snakemake.wildcards.run,  # noqa: F821
        snakemake.input.datasplit,  # noqa: F821
        snakemake.input.class_frequencies,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        retries=snakemake.params.retries,  # noqa: F821
        log=log,
    )
sys.exit(status)
