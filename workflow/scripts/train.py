"""Snakemake rule train: run cellseg's trainer for one run (thin wrapper)."""

import sys
from pathlib import Path

from cellseg.config.settings import Run, run_config
from cellseg.joblog import job_log
from cellseg.training.launch import launch_training

# stderr goes to the job's log, which ends with the error if the job fails; the training
# process itself writes into the same log (and ends it with its own one line)
with job_log(snakemake.log[0]) as log:  # noqa: F821
    # the run's variant and seed are folded into the config the job reads (its
    # workflow_config.yaml), under the plain {model}_{dim} key
    run = Run.parse(snakemake.wildcards.run)  # noqa: F821
    # the run's preflight verdict (an input when preflight.enabled): the local gate before this
    # job already refused a no-go; the go (or the no-go passed with enforce false) is logged
    verdict = getattr(snakemake.input, "preflight_verdict", None)  # noqa: F821
    if verdict is not None:
        print(Path(verdict).read_text().strip(), file=log, flush=True)
    status = launch_training(
        run_config(snakemake.config, run),  # noqa: F821
        run.model_key,
        snakemake.params.run_dir,  # noqa: F821
        snakemake.input.datasplit,  # noqa: F821
        snakemake.input.class_frequencies,  # noqa: F821
        runtime_min=snakemake.resources.runtime,  # noqa: F821
        log=log,
    )
sys.exit(status)
