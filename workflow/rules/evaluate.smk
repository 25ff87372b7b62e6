# Evaluation stage: every trained model on the held-out (test) crops.


rule evaluate:
    input:
        checkpoint=rules.train.output.best,
        datasplit=rules.datasplit.output[0],
    output:
        **(
            {"predictions": directory("results/metrics/{run}.zarr")}
            if config["evaluation"]["save_predictions"]
            else {}
        ),
        metrics=report(
            "results/metrics/{run}.csv",
            caption="../report/metrics.rst",
            category="Metrics",
            labels={"run": "{run}", "table": "crop × class"},
        ),
        # OME-NGFF probabilities for neuroglancer / napari, only when asked for
    log:
        "logs/evaluate/{run}.log",
    benchmark:
        "benchmarks/evaluate/{run}.tsv"
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: config["resources"]["evaluate"]["cpus_per_task"]
    resources:
        # resources.evaluate (cellseg.resources): one GPU for a model trained on GPUs, memory
        # from a measured per-crop peak, runtime from a measured per-crop time x test crops
        gpu=lambda wildcards, attempt: evaluate_job(wildcards, attempt).gpus,
        mem_mb=lambda wildcards, attempt: evaluate_job(wildcards, attempt).mem_mb,
        runtime=lambda wildcards, input, attempt: evaluate_job(
            wildcards, attempt, input.datasplit
        ).runtime_min,
        cpus_per_task=lambda wildcards, attempt: evaluate_job(
            wildcards, attempt
        ).cpus_per_task,
        slurm_partition=lambda wildcards, attempt: evaluate_job(
            wildcards, attempt
        ).partition,
        qos=lambda wildcards, attempt: evaluate_job(wildcards, attempt).qos,
    params:
        evaluation=config["evaluation"],
    script:
        "../scripts/evaluate.py"
