# cellseg: train, evaluate and compare segmentation models on CellMap FIB-SEM organelles.
# This file is the table of contents; the rules live in workflow/rules/ by stage.

from snakemake.utils import min_version

min_version("8.20")


# the package, and the base config read as cellseg reads every layer (one line for a mistake)
include: "workflow/rules/package.smk"


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/preflight.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/predict.smk"


# bookkeeping that takes seconds runs where Snakemake runs, never on a GPU node
localrules:
    all,
    demo_data,
    datasplit,
    summary,
    study,
    resolved_config,
    predict_all,
    predict_init,
    preflight,
    preflight_table,
    preflight_verdict,


rule all:
    default_target: True
    input:
        get_final_output(),
