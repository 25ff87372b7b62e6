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
    threads: lambda wildcards: model_settings(wildcards).cpus_per_task
    resources:
        gpu=lambda wildcards: model_settings(wildcards).gpus,
        mem_mb=lambda wildcards: model_settings(wildcards).mem_mb,
        runtime=lambda wildcards: model_settings(wildcards).runtime_min,
        cpus_per_task=lambda wildcards: model_settings(wildcards).cpus_per_task,
    params:
        run_dir="results/models/{model}_{dim}",
        # the resolved settings: editing one model's entry reruns only that model
        settings=lambda wildcards: model_settings(wildcards).result_dict(),
    script:
        "../scripts/train.py"
