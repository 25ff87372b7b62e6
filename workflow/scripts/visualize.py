"""Snakemake rule visualize: one model's test-crop panels, per-class panels of one test crop and
training curves, drawn from the slices its evaluation kept (thin wrapper)."""

from cellseg.joblog import job_log
from cellseg.reporting.figures import make_model_figures

# stderr goes to the job's log, which ends with the error if the job fails
with job_log(snakemake.log[0]):  # noqa: F821
    make_model_figures(
        snakemake.input.figure_slices,  # noqa: F821
        snakemake.input.history,  # noqa: F821
        snakemake.output.samples,  # noqa: F821
        snakemake.output.curves,  # noqa: F821
        classes_path=snakemake.output.classes,  # noqa: F821
    )
