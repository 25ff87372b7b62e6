# Training stage: one job per configured model.


rule train:
    input:
        datasplit=rules.datasplit.output[0],
        class_frequencies=rules.class_frequencies.output[0],
    output:
        best="results/models/{model}_{dim}/best.pt",
        history="results/models/{model}_{dim}/history.csv",
        summary="results/models/{model}_{dim}/train_summary.json",
    log:
        "logs/train/{model}_{dim}.log",
    benchmark:
        "benchmarks/train/{model}_{dim}.tsv"
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: train_job(wildcards).cpus_per_task
    resources:
        # from the model's settings (cellseg.resources): a 0-GPU model is queued on the CPU
        # partition
        gpu=lambda wildcards: train_job(wildcards).gpus,
        mem_mb=lambda wildcards: train_job(wildcards).mem_mb,
        runtime=lambda wildcards: train_job(wildcards).runtime_min,
        cpus_per_task=lambda wildcards: train_job(wildcards).cpus_per_task,
        slurm_partition=lambda wildcards: train_job(wildcards).partition,
        qos=lambda wildcards: train_job(wildcards).qos,
    params:
        run_dir="results/models/{model}_{dim}",
        # the resolved settings: editing one model's entry reruns only that model
        settings=lambda wildcards: model_settings(wildcards).result_dict(),
    script:
        "../scripts/train.py"
