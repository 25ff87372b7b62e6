"""Snakemake rules predict_init / predict_blocks / predict_pyramid: one stage of a dataset's
prediction (thin wrapper around cellseg.prediction.predict_volume)."""

from cellseg.io import write_json_atomic
from cellseg.joblog import job_log
from cellseg.prediction import finish_to, predict_volume
from cellseg.prediction_geometry import PredictionSettings
from cellseg.prediction_plan import parse_roi

params = snakemake.params  # noqa: F821
# stderr goes to the job's log, which ends with the error if the job fails
with job_log(snakemake.log[0]) as log:  # noqa: F821
    section = dict(params.predict)
    if params.stage != "blocks":
        section["device"] = "cpu"  # init and pyramid never run the network
    part = int(snakemake.wildcards.get("part", 0))  # noqa: F821
    run = predict_volume(
        snakemake.input.checkpoint,  # noqa: F821
        params.em,
        params.work,
        PredictionSettings.from_config(section, params.inference),
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
