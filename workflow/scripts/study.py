"""Snakemake rule study: rank variants and aggregate seeds, write study.csv / .md and figures
(thin wrapper)."""

from pathlib import Path

from cellseg.joblog import job_log
from cellseg.reporting import SummarySettings, make_study

# stderr goes to the job's log, which ends with the error if the job fails
with job_log(snakemake.log[0]):  # noqa: F821
    make_study(
        dict(zip(snakemake.params.runs, snakemake.input.metrics, strict=True)),  # noqa: F821
        snakemake.params.variants,  # noqa: F821
        snakemake.params.loss,  # noqa: F821
        snakemake.output.csv,  # noqa: F821
        snakemake.output.md,  # noqa: F821
        Path(snakemake.output.seeds).parent,  # noqa: F821
        settings=SummarySettings.from_config(snakemake.params.evaluation),  # noqa: F821
        train_summaries=dict(zip(snakemake.params.runs, snakemake.input.train, strict=True)),  # noqa: F821
    )
