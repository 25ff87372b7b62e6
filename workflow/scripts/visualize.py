"""Snakemake rule visualize: one model's test-crop panels, per-class panels of one test crop and
training curves (thin wrapper)."""

from cellseg.evaluation import EvaluationSettings
from cellseg.joblog import job_log
from cellseg.reporting.figures import ModelFigureSettings, make_model_figures

# stderr goes to the job's log, which ends with the error if the job fails
with job_log(snakemake.log[0]):  # noqa: F821
    make_model_figures(
        snakemake.input.checkpoint,  # noqa: F821
        snakemake.input.history,  # noqa: F821
        snakemake.input.datasplit,  # noqa: F821
        snakemake.output.samples,  # noqa: F821
        snakemake.output.curves,  # noqa: F821
        ModelFigureSettings.from_config(snakemake.params.evaluation),  # noqa: F821
        EvaluationSettings.from_config(
            snakemake.params.evaluation,  # noqa: F821
            snakemake.params.inference,  # noqa: F821
        ),
        classes_path=snakemake.output.classes,  # noqa: F821
    )
