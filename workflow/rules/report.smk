# Figures and the comparison: per-model figures, then summary.csv / summary.md / figures.


rule visualize:
    input:
        # what evaluation predicted: no model runs here (cellseg.figure_slices)
        figure_slices=rules.evaluate.output.figure_slices,
        history=rules.train.output.history,
    output:
        samples=report(
            "results/figures/{run}/samples.png",
            caption="../report/samples.rst",
            category="Models",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "test crops"},
        ),
        classes=report(
            "results/figures/{run}/classes.png",
            caption="../report/classes.rst",
            category="Models",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "classes of one test crop"},
        ),
        curves=report(
            "results/figures/{run}/training_curves.png",
            caption="../report/training_curves.rst",
            category="Models",
            subcategory="{run}",
            labels={"run": "{run}", "figure": "training curves"},
        ),
    log:
        "logs/visualize/{run}.log",
    benchmark:
        "benchmarks/visualize/{run}.tsv"
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: config["resources"]["visualize"]["cpus_per_task"]
    resources:
        # resources.visualize (cellseg.config.resources): CPU only, it draws saved slices
        **job_resources(visualize_job),
    script:
        "../scripts/visualize.py"


rule summary:
    input:
        metrics=expand("results/metrics/{run}.csv", run=RUNS),
        train_summaries=expand("results/models/{run}/train_summary.json", run=RUNS),
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
        ranks=report(
            "results/figures/summary/rank_sets.png",
            caption="../report/rank_sets.rst",
            category="Summary",
            labels={"figure": "rank sets"},
        ),
    log:
        "logs/summary.log",
    benchmark:
        "benchmarks/summary.tsv"
    conda:
        "../envs/cellseg.yaml"
    params:
        models=RUNS,
        evaluation=config["evaluation"],
    script:
        "../scripts/summary.py"


rule study:
    input:
        metrics=expand("results/metrics/{run}.csv", run=RUNS),
        # which runs really start from pretrained weights (the share their init loaded)
        train=expand(rules.train.output.summary, run=RUNS),
    output:
        csv=report(
            "results/study.csv",
            caption="../report/study.rst",
            category="Study",
            labels={"table": "study.csv"},
        ),
        md=report(
            "results/study.md",
            caption="../report/study.rst",
            category="Study",
            labels={"table": "study.md"},
        ),
        seeds=report(
            "results/figures/study/seeds.png",
            caption="../report/study.rst",
            category="Study",
            labels={"figure": "per-seed mean Dice"},
        ),
        tau=report(
            "results/figures/study/dice_vs_tau.png",
            caption="../report/study.rst",
            category="Study",
            labels={"figure": "Dice against tau"},
        ),
        alpha=report(
            "results/figures/study/dice_vs_alpha.png",
            caption="../report/study.rst",
            category="Study",
            labels={"figure": "Dice against alpha"},
        ),
    log:
        "logs/study.log",
    benchmark:
        "benchmarks/study.tsv"
    conda:
        "../envs/cellseg.yaml"
    params:
        runs=RUNS,
        variants=config["variants"],
        loss=config["loss"],
        evaluation=config["evaluation"],
    script:
        "../scripts/study.py"


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
        # a digest: the script reads the config itself, and a rerun's reason stays short
        config=config_digest(config),
    script:
        "../scripts/resolved_config.py"
