# Training stage: one job per run, {model}_{dim}[~{variant}][~r{k}] (common.smk RUNS).


rule train:
    input:
        # the run's go / no-go when preflight.enabled (preflight.smk)
        unpack(train_preflight),
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
        # from the model's settings (cellseg.resources): a 0-GPU model is queued on the CPU
        # partition
        gpu=train_gpus,
        mem_mb=lambda wildcards: train_job(wildcards).mem_mb,
        runtime=lambda wildcards: train_job(wildcards).runtime_min,
        cpus_per_task=lambda wildcards: train_job(wildcards).cpus_per_task,
        slurm_partition=lambda wildcards: train_job(wildcards).partition,
        qos=lambda wildcards: train_job(wildcards).qos,
    params:
        run_dir="results/models/{run}",
        # the hash of the resolved settings (cellseg.training.settings): editing one model's
        # entry reruns only that model, and a rerun's reason is one short line, not the
        # settings printed twice
        settings=lambda wildcards: model_settings(wildcards).config_hash(),
    script:
        "../scripts/train.py"
