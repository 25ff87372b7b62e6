# Prediction stage: whole datasets to OME-Zarr (not part of the default target: `predict_all`).
#
# Per run × dataset ({run}: a model key, or a study's variant/replicate run, as under
# results/models): predict_init creates the store (seconds, local), `predict.jobs`
# predict_blocks jobs each predict one contiguous range of its blocks into that store (disjoint
# chunks, resumable: finished blocks are skipped), then predict_pyramid writes the downsampled
# levels and moves the store to its final path. The number of blocks is only known from the EM's
# shape, so the jobs split the blocks among themselves at run time (cellseg.prediction); the
# helpers are cellseg.prediction_plan.prediction_* (paths from the config) and common.smk's
# predict_all_targets.

from cellseg.prediction_plan import prediction_em, prediction_roi


rule predict_all:
    input:
        predict_all_targets,


rule predict_init:
    input:
        checkpoint="results/models/{run}/best.pt",
        demo=lambda wildcards: DEMO_DATA if config["data"]["demo"]["enabled"] else [],
    output:
        "results/predictions/{run}/.work/{dataset}.zarr/.cellseg/init.json",
    log:
        "logs/predict/{run}/{dataset}.init.log",
    wildcard_constraints:
        dataset="[^/]+",
    conda:
        "../envs/cellseg.yaml"
    params:
        stage="init",
        # the store the jobs share: .work/{dataset}.zarr
        work=lambda wildcards, output: str(Path(output[0]).parents[1]),
        em=lambda wildcards: prediction_em(config, wildcards.dataset, DEMO_DATA),
        roi=lambda wildcards: prediction_roi(config, wildcards.dataset),
        predict=config["predict"],
        inference=config["inference"],
    script:
        "../scripts/predict.py"


rule predict_blocks:
    input:
        checkpoint="results/models/{run}/best.pt",
        demo=lambda wildcards: DEMO_DATA if config["data"]["demo"]["enabled"] else [],
        init=rules.predict_init.output[0],
    output:
        "results/predictions/{run}/.work/{dataset}.zarr/.cellseg/parts/{part}.json",
    log:
        "logs/predict/{run}/{dataset}.part{part}.log",
    benchmark:
        "benchmarks/predict/{run}/{dataset}.part{part}.tsv"
    wildcard_constraints:
        dataset="[^/]+",
        part="[0-9]+",
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: config["predict"]["resources"]["cpus_per_task"]
    resources:
        # predict.resources (cellseg.config.resources): one GPU for a model trained on GPUs
        **job_resources(predict_blocks_job),
    params:
        stage="blocks",
        work=lambda wildcards, output: str(Path(output[0]).parents[2]),
        em=lambda wildcards: prediction_em(config, wildcards.dataset, DEMO_DATA),
        roi=lambda wildcards: prediction_roi(config, wildcards.dataset),
        predict=config["predict"],
        inference=config["inference"],
    script:
        "../scripts/predict.py"


rule predict_pyramid:
    input:
        checkpoint="results/models/{run}/best.pt",
        demo=lambda wildcards: DEMO_DATA if config["data"]["demo"]["enabled"] else [],
        parts=expand(
            "results/predictions/{{run}}/.work/{{dataset}}.zarr/.cellseg/parts/{part}.json",
            part=range(config["predict"]["jobs"]),
        ),
    output:
        directory("results/predictions/{run}/{dataset}.zarr"),
    log:
        "logs/predict/{run}/{dataset}.pyramid.log",
    benchmark:
        "benchmarks/predict/{run}/{dataset}.pyramid.tsv"
    wildcard_constraints:
        dataset="[^/]+",
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: config["predict"]["pyramid_resources"]["cpus_per_task"]
    resources:
        # predict.pyramid_resources (cellseg.config.resources): CPU partition
        **job_resources(predict_pyramid_job, gpu=None),
    params:
        stage="pyramid",
        work=lambda wildcards, input: str(Path(input.parts[0]).parents[2]),
        em=lambda wildcards: prediction_em(config, wildcards.dataset, DEMO_DATA),
        roi=lambda wildcards: prediction_roi(config, wildcards.dataset),
        predict=config["predict"],
        inference=config["inference"],
    script:
        "../scripts/predict.py"
