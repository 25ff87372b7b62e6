"""Snakemake rule resolved_config: record the layered config and every model's settings (thin
wrapper)."""

from cellseg.config.layers import write_resolved_config
from cellseg.joblog import job_log

# stderr goes to the job's log, which ends with the error if the job fails
with job_log(snakemake.log[0]):  # noqa: F821
    write_resolved_config(
        snakemake.config,  # noqa: F821  (the layered config; params.config is its digest)
        snakemake.input.layers,  # noqa: F821
        snakemake.output[0],  # noqa: F821
    )
