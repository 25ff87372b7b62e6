"""Snakemake rule preflight_verdict: the local gate between a run's preflight and its train job."""

from cellseg.config.settings import resolve_settings
from cellseg.joblog import job_log
from cellseg.training.preflight_verdict import PreflightConfig, write_verdict

# a no-go, or a result of other settings, ends the log with its one line and fails here, before
# the train job is queued
with job_log(snakemake.log[0]) as log:  # noqa: F821
    line = write_verdict(
        snakemake.input.preflight,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        snakemake.config["preflight"]["enforce"],  # noqa: F821
        resolve_settings(snakemake.config, snakemake.wildcards.run),  # noqa: F821
        snakemake.params.retries,  # noqa: F821
        PreflightConfig.from_config(snakemake.config),  # noqa: F821
    )
    print(line, file=log, flush=True)
