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
        # the slices the visualize rule draws, kept as they were predicted and scored
        # (cellseg.figure_slices)
        figure_slices="results/metrics/{run}.figure_slices.npz",
        # OME-NGFF probabilities for neuroglancer / napari, only when asked for
    log:
        "logs/evaluate/{run}.log",
    benchmark:
        "benchmarks/evaluate/{run}.tsv"
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: config["resources"]["evaluate"]["cpus_per_task"]
    resources:
        # resources.evaluate (cellseg.config.resources): one GPU for a model trained on GPUs, memory
        # from a measured per-crop peak, runtime from a measured per-crop time x test crops
        **job_resources(evaluate_job, runtime=evaluate_runtime),
    params:
        evaluation=config["evaluation"],
        inference=config["inference"],
    script:
        "../scripts/evaluate.py"
