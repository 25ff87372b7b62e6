# Training stage: one job per run, {model}_{dim}[~{variant}][~r{k}] (common.smk RUNS).


def train_init(wildcards):
    """The run's weights file when its init is {checkpoint: PATH}: an input, so that another file
    there retrains the run (cellseg.training.init). A missing file that no rule makes (one
    outside results/) stops the plan with one line naming the key and the fix."""
    path = model_settings(wildcards).init_checkpoint
    if path is None:
        return {}
    if not path.startswith("results/") and not Path(path).is_file():
        sys.exit(
            f"cellseg: config error: {CONFIG_SOURCE}: {wildcards.run}: init.checkpoint {path} "
            "does not exist; put the weights file there (docs/training.md, 'Where the weights "
            "start') or set init: scratch"
        )
    return {"init": path}


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
