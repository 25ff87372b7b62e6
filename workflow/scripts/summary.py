"""Snakemake rule summary: compare the models, write summary.csv / .md and figures (thin wrapper)."""

from pathlib import Path

from cellseg.joblog import job_log
from cellseg.reporting import SummarySettings, make_summary

# stderr goes to the job's log, which ends with the error if the job fails
with job_log(snakemake.log[0]):  # noqa: F821
    models = snakemake.params.models  # noqa: F821
    make_summary(
        dict(zip(models, snakemake.input.metrics, strict=True)),  # noqa: F821
        dict(zip(models, snakemake.input.train_summaries, strict=True)),  # noqa: F821
        snakemake.input.class_frequencies,  # noqa: F821
        snakemake.output.csv,  # noqa: F821
        snakemake.output.md,  # noqa: F821
        Path(snakemake.output.heatmap).parent,  # noqa: F821
        settings=SummarySettings.from_config(snakemake.params.evaluation),  # noqa: F821
        costs_path=snakemake.output.costs,  # noqa: F821
    )
