# Figures and the comparison: per-model figures, then summary.csv / summary.md / figures.


rule visualize:
    input:
        checkpoint=rules.train.output.best,
        history=rules.train.output.history,
        datasplit=rules.datasplit.output[0],
    output:
        samples=report(
            "results/figures/{model}_{dim}/samples.png",
            caption="../report/samples.rst",
            category="Models",
            subcategory="{model}_{dim}",
            labels={"model": "{model}", "dim": "{dim}", "figure": "test crops"},
        ),
        curves=report(
            "results/figures/{model}_{dim}/training_curves.png",
            caption="../report/training_curves.rst",
            category="Models",
            subcategory="{model}_{dim}",
            labels={"model": "{model}", "dim": "{dim}", "figure": "training curves"},
        ),
    log:
        "logs/visualize/{model}_{dim}.log",
    benchmark:
        "benchmarks/visualize/{model}_{dim}.tsv"
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: config["resources"]["visualize"]["cpus_per_task"]
    resources:
        # resources.visualize (cellseg.resources)
        gpu=lambda wildcards, attempt: visualize_job(wildcards, attempt).gpus,
        mem_mb=lambda wildcards, attempt: visualize_job(wildcards, attempt).mem_mb,
        runtime=lambda wildcards, attempt: visualize_job(wildcards, attempt).runtime_min,
        cpus_per_task=lambda wildcards, attempt: visualize_job(
            wildcards, attempt
        ).cpus_per_task,
        slurm_partition=lambda wildcards, attempt: visualize_job(
            wildcards, attempt
        ).partition,
        qos=lambda wildcards, attempt: visualize_job(wildcards, attempt).qos,
    params:
        evaluation=config["evaluation"],
    script:
        "../scripts/visualize.py"


rule summary:
    input:
        metrics=expand("results/metrics/{key}.csv", key=MODELS),
        train_summaries=expand("results/models/{key}/train_summary.json", key=MODELS),
        class_frequencies=rules.class_frequencies.output[0],
    output:
        csv=report(
            "results/summary.csv",
            caption="../report/summary_csv.rst",
            category="Summary",
            labels={"table": "summary.csv"},
        ),
        costs=report(
            "results/costs.csv",
            caption="../report/costs_csv.rst",
            category="Summary",
            labels={"table": "costs.csv"},
        ),
        md=report(
            "results/summary.md",
            caption="../report/summary_md.rst",
            category="Summary",
            labels={"table": "summary.md"},
        ),
        heatmap=report(
            "results/figures/summary/dice_heatmap.png",
            caption="../report/dice_heatmap.rst",
            category="Summary",
            labels={"figure": "per-class Dice"},
        ),
        mean_dice=report(
            "results/figures/summary/mean_dice.png",
            caption="../report/mean_dice.rst",
            category="Summary",
            labels={"figure": "mean Dice with CI"},
        ),
        pareto=report(
            "results/figures/summary/pareto.png",
            caption="../report/pareto.rst",
            category="Summary",
            labels={"figure": "Dice vs cost"},
        ),
        dims=report(
            "results/figures/summary/dim_comparison.png",
            caption="../report/dim_comparison.rst",
            category="Summary",
            labels={"figure": "2D vs 3D"},
        ),
    log:
        "logs/summary.log",
    benchmark:
        "benchmarks/summary.tsv"
    conda:
        "../envs/cellseg.yaml"
    params:
        models=MODELS,
        evaluation=config["evaluation"],
    script:
        "../scripts/summary.py"


rule resolved_config:
    input:
        # the config files themselves, so that editing a preset refreshes this record even
        # under `rerun-triggers: mtime`
        layers=CONFIG_LAYERS,
    output:
        "results/config.resolved.yaml",
    log:
        "logs/resolved_config.log",
    conda:
        "../envs/cellseg.yaml"
    params:
        config=config,
    script:
        "../scripts/resolved_config.py"
