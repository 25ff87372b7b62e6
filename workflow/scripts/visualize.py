"""Snakemake rule visualize: one model's test-crop panels and training curves (thin wrapper)."""

import sys

from cellseg.evaluation import EvaluationSettings
from cellseg.figures import ModelFigureSettings, make_model_figures

with open(snakemake.log[0], "a") as log:  # noqa: F821
    sys.stderr = log
    make_model_figures(
        snakemake.input.checkpoint,  # noqa: F821
        snakemake.input.history,  # noqa: F821
        snakemake.input.datasplit,  # noqa: F821
        snakemake.output.samples,  # noqa: F821
        snakemake.output.curves,  # noqa: F821
        ModelFigureSettings.from_config(snakemake.params.evaluation),  # noqa: F821
        EvaluationSettings.from_config(snakemake.params.evaluation),  # noqa: F821
    )
