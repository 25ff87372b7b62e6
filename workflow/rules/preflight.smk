# Preflight stage: one job per run on its training job's node (the same partition, GPUs, CPUs
# and memory) for preflight.runtime_min minutes: go / no-go in results/preflight/{run}.json, every
# run's in results/preflight.md (cellseg.training.preflight). With preflight.enabled each train
# job waits for its run's verdict, a local gate that refuses a no-go unless preflight.enforce is
# false: a no-go run's train job is never queued for a GPU, not even once per retry.


rule preflight_run:
    input:
        datasplit=rules.datasplit.output[0],
        class_frequencies=rules.class_frequencies.output[0],
    output:
        "results/preflight/{run}.json",
    log:
        "logs/preflight_run/{run}.log",
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: train_job(wildcards).cpus_per_task
    resources:
        # the run's train request (cellseg.resources), for minutes instead of days
        **job_resources(train_job, runtime=config["preflight"]["runtime_min"]),
    params:
        retries=workflow_retries,
    script:
        "../scripts/preflight.py"


# a localrule (Snakefile): seconds on the login node; its retries cost nothing
rule preflight_verdict:
    input:
        preflight=rules.preflight_run.output[0],
    output:
        "results/preflight/{run}.verdict",
    log:
        "logs/preflight_verdict/{run}.log",
    conda:
        "../envs/cellseg.yaml"
    params:
        # the settings the train job runs with: a verdict judged on other settings says so
        settings=lambda wildcards: model_settings(wildcards).config_hash(),
    script:
        "../scripts/preflight_verdict.py"


# `snakemake --profile config/profiles/longleaf preflight` runs only the preflights (and the
# datasplit and class frequencies they read)
rule preflight:
    input:
        expand(rules.preflight_run.output[0], run=RUNS),
    output:
        "results/preflight.md",
    log:
        "logs/preflight.log",
    conda:
        "../envs/cellseg.yaml"
    script:
        "../scripts/preflight_table.py"
