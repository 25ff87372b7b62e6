"""Snakemake rules predict_init / predict_blocks / predict_pyramid: one stage of a dataset's
prediction (thin wrapper around cellseg.prediction.predict_volume)."""

import sys

from cellseg.io import write_json_atomic
from cellseg.prediction import PredictionSettings, finish_to, parse_roi, predict_volume

params = snakemake.params  # noqa: F821
with open(snakemake.log[0], "a") as log:  # noqa: F821
    sys.stderr = log
    section = dict(params.predict)
    if params.stage != "blocks":
        section["device"] = "cpu"  # init and pyramid never run the network
    part = int(snakemake.wildcards.get("part", 0))  # noqa: F821
    run = predict_volume(
        snakemake.input.checkpoint,  # noqa: F821
        params.em,
        params.work,
        PredictionSettings.from_config(section),
        parse_roi(params.roi),
        stage=params.stage,
        part=part,
        parts=int(params.predict["jobs"]),
        threads=snakemake.threads,  # noqa: F821
        log=log,
    )
    if params.stage == "pyramid":
        finish_to(params.work, snakemake.output[0])  # noqa: F821
    else:
        write_json_atomic(
            snakemake.output[0],  # noqa: F821
            {
                "stage": params.stage,
                "part": part,
                "blocks_done": run.blocks_done,
                "blocks_skipped": run.blocks_skipped,
                "blocks": run.plan.n_blocks,
            },
        )
