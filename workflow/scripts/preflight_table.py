"""Snakemake rule preflight: every run's preflight in one table, results/preflight.md."""

from cellseg.joblog import job_log
from cellseg.training.preflight_table import write_table

with job_log(snakemake.log[0]):  # noqa: F821
    write_table(list(snakemake.input), snakemake.output[0])  # noqa: F821
