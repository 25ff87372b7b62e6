"""Snakemake rule resolved_config: record the layered config and every model's settings (thin
wrapper)."""

import sys

from cellseg.config import write_resolved_config

with open(snakemake.log[0], "a") as log:  # noqa: F821
    sys.stderr = log
    write_resolved_config(
        snakemake.params.config,  # noqa: F821
        snakemake.input.layers,  # noqa: F821
        snakemake.output[0],  # noqa: F821
    )
