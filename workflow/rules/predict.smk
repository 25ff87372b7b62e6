# Prediction stage: whole datasets to OME-Zarr (not part of the default target: `predict_all`).
#
# Per model × dataset: predict_init creates the store (seconds, local), `predict.jobs`
# predict_blocks jobs each predict one contiguous range of its blocks into that store (disjoint
# chunks, resumable: finished blocks are skipped), then predict_pyramid writes the downsampled
# levels and moves the store to its final path. The number of blocks is only known from the EM's
# shape, so the jobs split the blocks among themselves at run time (cellseg.prediction).

import csv

from cellseg.resources import prediction_resources

PREDICTION = "results/predictions/{model}_{dim}/{dataset}.zarr"
PREDICTION_WORK = "results/predictions/{model}_{dim}/.work/{dataset}.zarr"


def predict_models():
    """The models of predict.models; "best" is the top-ranked model of results/summary.csv."""
    models = config["predict"]["models"]
    if models != "best":
        unknown = [key for key in models if key not in MODELS]
        if unknown:
            raise CellsegError(
                f"predict.models: {unknown[0]} is not among the configured models "
                f"({', '.join(MODELS)}); list trained models or use best"
            )
        return list(models)
    summary = Path("results/summary.csv")
    if not summary.is_file():
        raise CellsegError(
            "predict.models: best needs results/summary.csv; run the comparison first "
            "(snakemake) or list the models"
        )
    with open(summary, newline="") as handle:
        ranked = [r for r in csv.DictReader(handle) if r.get("rank") not in (None, "", "nan")]
    if not ranked:
        raise CellsegError(f"{summary}: no ranked model; list predict.models instead")
    return [min(ranked, key=lambda r: float(r["rank"]))["model"]]


def _stores(root):
    return sorted(p for p in Path(root).glob("*/*.zarr") if p.stem == p.parent.name)


def predict_datasets():
    """predict.datasets, or every dataset of the data roots (the demo's when it is on)."""
    if config["predict"]["datasets"]:
        return list(config["predict"]["datasets"])
    if config["data"]["demo"]["enabled"]:
        from cellseg.data.demo import SIZES

        return [name for name, _ in SIZES[config["data"]["demo"]["size"]].datasets]
    return [p.stem for root in config["data"]["roots"] for p in _stores(root)]


def predict_em(wildcards):
    """STORE.zarr/GROUP of a dataset's EM."""
    dataset, group = wildcards.dataset, config["predict"]["em_group"]
    if config["data"]["demo"]["enabled"]:
        return f"{DEMO_DATA}/{dataset}/{dataset}.zarr/{group}"
    for root in config["data"]["roots"]:
        store = Path(root) / dataset / f"{dataset}.zarr"
        if store.is_dir():
            return f"{store}/{group}"
    raise CellsegError(
        f"predict.datasets: {dataset!r} is in no data root ({', '.join(map(str, config['data']['roots']))}); "
        "expected {root}/{dataset}/{dataset}.zarr"
    )


def predict_roi(wildcards):
    """The dataset's ROI string (nm), or '' for the whole volume."""
    roi = config["predict"]["roi"]
    if isinstance(roi, dict):
        roi = roi.get(wildcards.dataset)
    return roi or ""


def predict_inputs(wildcards):
    """The model's best.pt, and the demo data when the demo is on."""
    inputs = {"checkpoint": f"results/models/{wildcards.model}_{wildcards.dim}/best.pt"}
    if config["data"]["demo"]["enabled"]:
        inputs["demo"] = DEMO_DATA
    return inputs


def predict_job(wildcards, attempt, pyramid=False):
    """What a predict_blocks (or predict_pyramid) job asks for (cellseg.resources)."""
    return prediction_resources(config, model_settings(wildcards), attempt, pyramid)


def get_predictions():
    """Every configured model × dataset prediction."""
    return [
        PREDICTION.format(model=model, dim=dim, dataset=dataset)
        for model, dim in (key.rsplit("_", 1) for key in predict_models())
        for dataset in predict_datasets()
    ]


rule predict_all:
    input:
        lambda wildcards: get_predictions(),


rule predict_init:
    input:
        unpack(predict_inputs),
    output:
        PREDICTION_WORK + "/.cellseg/init.json",
    wildcard_constraints:
        dataset="[^/]+",
    log:
        "logs/predict/{model}_{dim}/{dataset}.init.log",
    conda:
        "../envs/cellseg.yaml"
    params:
        stage="init",
        work=PREDICTION_WORK,
        em=predict_em,
        roi=predict_roi,
        predict=config["predict"],
    script:
        "../scripts/predict.py"


rule predict_blocks:
    input:
        unpack(predict_inputs),
        init=rules.predict_init.output[0],
    output:
        PREDICTION_WORK + "/.cellseg/parts/{part}.json",
    wildcard_constraints:
        dataset="[^/]+",
        part="[0-9]+",
    log:
        "logs/predict/{model}_{dim}/{dataset}.part{part}.log",
    benchmark:
        "benchmarks/predict/{model}_{dim}/{dataset}.part{part}.tsv"
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: predict_job(wildcards, 1).cpus_per_task
    resources:
        # predict.resources (cellseg.resources): one GPU for a model trained on GPUs
        gpu=lambda wildcards, attempt: predict_job(wildcards, attempt).gpus,
        mem_mb=lambda wildcards, attempt: predict_job(wildcards, attempt).mem_mb,
        runtime=lambda wildcards, attempt: predict_job(wildcards, attempt).runtime_min,
        cpus_per_task=lambda wildcards, attempt: predict_job(
            wildcards, attempt
        ).cpus_per_task,
        slurm_partition=lambda wildcards, attempt: predict_job(
            wildcards, attempt
        ).partition,
        qos=lambda wildcards, attempt: predict_job(wildcards, attempt).qos,
    params:
        stage="blocks",
        work=PREDICTION_WORK,
        em=predict_em,
        roi=predict_roi,
        predict=config["predict"],
    script:
        "../scripts/predict.py"


rule predict_pyramid:
    input:
        unpack(predict_inputs),
        parts=expand(
            PREDICTION_WORK + "/.cellseg/parts/{part}.json",
            part=range(config["predict"]["jobs"]),
            allow_missing=True,
        ),
    output:
        directory(PREDICTION),
    wildcard_constraints:
        dataset="[^/]+",
    log:
        "logs/predict/{model}_{dim}/{dataset}.pyramid.log",
    benchmark:
        "benchmarks/predict/{model}_{dim}/{dataset}.pyramid.tsv"
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: predict_job(wildcards, 1, True).cpus_per_task
    resources:
        # predict.pyramid_resources: CPU partition
        mem_mb=lambda wildcards, attempt: predict_job(wildcards, attempt, True).mem_mb,
        runtime=lambda wildcards, attempt: predict_job(
            wildcards, attempt, True
        ).runtime_min,
        cpus_per_task=lambda wildcards, attempt: predict_job(
            wildcards, attempt, True
        ).cpus_per_task,
        slurm_partition=lambda wildcards, attempt: predict_job(
            wildcards, attempt, True
        ).partition,
        qos=lambda wildcards, attempt: predict_job(wildcards, attempt, True).qos,
    params:
        stage="pyramid",
        work=PREDICTION_WORK,
        em=predict_em,
        roi=predict_roi,
        predict=config["predict"],
    script:
        "../scripts/predict.py"
