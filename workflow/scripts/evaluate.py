"""Snakemake rule evaluate: score one model on the held-out crops (thin wrapper)."""

import sys

from cellseg.evaluation import EvaluationSettings, evaluate_checkpoint

with open(snakemake.log[0], "a") as log:  # noqa: F821
    sys.stderr = log
    evaluate_checkpoint(
        snakemake.input.checkpoint,  # noqa: F821
        snakemake.input.datasplit,  # noqa: F821
        snakemake.output.metrics,  # noqa: F821
        EvaluationSettings.from_config(snakemake.params.evaluation),  # noqa: F821
        predictions_path=snakemake.output.get("predictions"),  # noqa: F821
        log=log,
        threads=snakemake.threads,  # noqa: F821
    )
