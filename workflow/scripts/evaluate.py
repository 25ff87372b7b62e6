"""Snakemake rule evaluate: score one model on the held-out crops and keep the slices its figures
draw (thin wrapper)."""

from cellseg.evaluation import EvaluationSettings, evaluate_checkpoint
from cellseg.figure_slices import ModelFigureSettings
from cellseg.joblog import job_log

# stderr goes to the job's log, which ends with the error if the job fails
with job_log(snakemake.log[0]) as log:  # noqa: F821
    evaluate_checkpoint(
        snakemake.input.checkpoint,  # noqa: F821
        snakemake.input.datasplit,  # noqa: F821
        snakemake.output.metrics,  # noqa: F821
        EvaluationSettings.from_config(
            snakemake.params.evaluation,  # noqa: F821
            snakemake.params.inference,  # noqa: F821
        ),
        predictions_path=snakemake.output.get("predictions"),  # noqa: F821
        log=log,
        threads=snakemake.threads,  # noqa: F821
        figure_slices_path=snakemake.output.figure_slices,  # noqa: F821
        figure_settings=ModelFigureSettings.from_config(snakemake.params.evaluation),  # noqa: F821
    )
