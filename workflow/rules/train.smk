# Training stage: one job per run, {model}_{dim}[~{variant}][~r{k}] (common.smk RUNS).


rule train:
    input:
        # the run's go / no-go when preflight.enabled (preflight.smk)
        unpack(train_preflight),
        # the weights the run starts from, when init names a file
        unpack(train_init),
        datasplit=rules.datasplit.output[0],
        class_frequencies=rules.class_frequencies.output[0],
    output:
        best="results/models/{run}/best.pt",
        history="results/models/{run}/history.csv",
        summary="results/models/{run}/train_summary.json",
    log:
        "logs/train/{run}.log",
    benchmark:
        "benchmarks/train/{run}.tsv"
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: train_job(wildcards).cpus_per_task
    resources:
        # from the run's settings (cellseg.config.resources): a 0-GPU run is queued on the CPU
        # partition; a local run asking for more GPUs than the machine has stops the plan
        **job_resources(train_job, gpu=train_gpus),
    params:
        run_dir="results/models/{run}",
        # the hash of the resolved settings (cellseg.config.settings): editing one model's
        # entry reruns only that model, and a rerun's reason is one short line, not the
        # settings printed twice
        settings=lambda wildcards: model_settings(wildcards).config_hash(),
    script:
        "../scripts/train.py"
