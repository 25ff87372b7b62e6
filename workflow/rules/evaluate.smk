# Evaluation stage: every trained model on the held-out (test) crops.


rule evaluate:
    input:
        checkpoint=rules.train.output.best,
        datasplit=rules.datasplit.output[0],
    output:
        **(
            {"predictions": directory("results/metrics/{model}_{dim}.zarr")}
            if config["evaluation"]["save_predictions"]
            else {}
        ),
        metrics=report(
            "results/metrics/{model}_{dim}.csv",
            caption="../report/metrics.rst",
            category="Metrics",
            labels={"model": "{model}", "dim": "{dim}", "table": "crop × class"},
        ),
        # OME-NGFF probabilities for neuroglancer / napari, only when asked for
    log:
        "logs/evaluate/{model}_{dim}.log",
    benchmark:
        "benchmarks/evaluate/{model}_{dim}.tsv"
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: model_settings(wildcards).cpus_per_task
    resources:
        # inference of one model on one GPU (0: CPU, as the demo trains)
        gpu=lambda wildcards: min(model_settings(wildcards).gpus, 1),
        mem_mb=lambda wildcards: model_settings(wildcards).mem_mb,
        # a tenth of the training budget, between 1 h and 1 day
        runtime=lambda wildcards: min(
            max(60, model_settings(wildcards).runtime_min // 10), 1440
        ),
    params:
        evaluation=config["evaluation"],
    script:
        "../scripts/evaluate.py"
