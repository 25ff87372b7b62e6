# Preflight stage: one job per run on its training job's node (the same partition, GPUs, CPUs
# and memory) for preflight.runtime_min minutes: go / no-go in results/preflight/{run}/{key}.json,
# every run's in results/preflight.md (cellseg.training.preflight). {key} is the hash of every
# setting of the run, the profile's retries and the preflight's thresholds (common.smk
# preflight_key_of): another value of any of them is another file, so a train job that has to
# run waits for a preflight of exactly its settings. With preflight.enabled each train job
# waits for its run's verdict, a local gate that refuses a no-go unless preflight.enforce is
# false: a no-go run's train job is never queued for a GPU, not even once per retry.


rule preflight_run:
    input:
        datasplit=rules.datasplit.output[0],
        class_frequencies=rules.class_frequencies.output[0],
    output:
        "results/preflight/{run}/{key}.json",
    log:
        "logs/preflight_run/{run}/{key}.log",
    wildcard_constraints:
        key="[0-9a-f]{16}",
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: train_job(wildcards).cpus_per_task
    resources:
        # the run's train request (cellseg.config.resources), for minutes instead of days
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
        "results/preflight/{run}/{key}.verdict",
    log:
        "logs/preflight_verdict/{run}/{key}.log",
    wildcard_constraints:
        key="[0-9a-f]{16}",
    conda:
        "../envs/cellseg.yaml"
    params:
        retries=workflow_retries,
    script:
        "../scripts/preflight_verdict.py"


# every run's preflight in one table, among the experiment's outputs when preflight.enabled
rule preflight_table:
    input:
        preflight_results,
    output:
        "results/preflight.md",
    log:
        "logs/preflight.log",
    conda:
        "../envs/cellseg.yaml"
    script:
        "../scripts/preflight_table.py"


# `snakemake --profile config/profiles/longleaf preflight` runs only the preflights (and the
# datasplit and class frequencies they read) and the table: no output of its own, so it asks for
# each run's result at its current key whenever it is the target, and an edited run is measured
# again (a rule with an output would be "up to date" under rerun-triggers mtime)
rule preflight:
    input:
        preflight_results,
        rules.preflight_table.output,
