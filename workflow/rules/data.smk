# Data stage: demo data → datasplit → class frequencies.


rule demo_data:
    output:
        directory(DEMO_DATA),
    log:
        "logs/demo_data.log",
    conda:
        "../envs/cellseg.yaml"
    # its datasets are written at once, one process each (the same bytes): what runs before the
    # datasplit runs alone, so it may take the cores Snakemake has (it caps this at --cores)
    threads: 4
    params:
        seed=config["data"]["demo"]["seed"],
        size=config["data"]["demo"]["size"],
    shell:
        "python -m cellseg make-demo-data --out {output:q} --seed {params.seed} --size {params.size}"
        " --workers {threads} > {log:q} 2>&1"


rule import_em:
    input:
        # an edit of the mapping file re-imports (and re-plans everything after it)
        mapping=lambda wildcards: IMPORTS[wildcards.mapping]["mapping"],
    output:
        directory(f"{IMPORTED_DATA}/{{mapping}}"),
    log:
        "logs/import_em/{mapping}.log",
    conda:
        "../envs/cellseg.yaml"
    params:
        source_root=lambda wildcards: (
            f"--source-root {shlex.quote(str(IMPORTS[wildcards.mapping]['source_root']))}"
            if IMPORTS[wildcards.mapping].get("source_root")
            else ""
        ),
    # tee: a refused mapping says its one line on the console as well as in the log
    shell:
        "python -m cellseg import --mapping {input.mapping:q} {params.source_root}"
        " --out {output:q} 2>&1 | tee {log:q}"


rule datasplit:
    input:
        unpack(datasplit_inputs),
    output:
        "results/datasplit.csv",
    log:
        "logs/datasplit.log",
    conda:
        "../envs/cellseg.yaml"
    params:
        # quoted here: a path may hold spaces or shell characters (the CSV is also an input:
        # an edit re-plans the split)
        source=(
            f"--from-csv {shlex.quote(str(config['data']['datasplit_csv']))}"
            if config["data"]["datasplit_csv"]
            else " ".join(f"--root {shlex.quote(str(root))}" for root in data_roots())
        ),
        validate=config["data"]["validate_fraction"],
        test=config["data"]["test_fraction"],
        seed=config["data"]["split_seed"],
        margin=config["data"]["split_margin_nm"],
        split_by=config["data"]["split_by"],
        # crops with no label level near the models' resolution are left out (logged)
        resolution=cli_value(config["data"]["resolution_nm"]),
        # float EM mostly outside the window the models clip to is refused
        em_range=" ".join(map(str, config["data"]["em_range"])),
    # tee: what was left out or skipped, and why, is said on the console as well as in the log
    shell:
        "python -m cellseg datasplit {params.source} --out {output:q}"
        " --validate-fraction {params.validate} --test-fraction {params.test}"
        " --seed {params.seed} --resolution-nm {params.resolution}"
        " --split-margin-nm {params.margin} --split-by {params.split_by}"
        " --em-range {params.em_range} 2>&1 | tee {log:q}"


rule class_frequencies:
    input:
        datasplit=rules.datasplit.output[0],
    output:
        "results/class_frequencies.json",
    log:
        "logs/class_frequencies.log",
    benchmark:
        "benchmarks/class_frequencies.tsv"
    conda:
        "../envs/cellseg.yaml"
    threads: lambda wildcards: config["resources"]["class_frequencies"]["cpus_per_task"]
    resources:
        # resources.class_frequencies (cellseg.config.resources): CPU partition
        **job_resources(class_frequencies_job, gpu=None),
    params:
        resolution=cli_value(config["data"]["resolution_nm"]),
        allow_missing=(
            "--allow-missing-classes"
            if config["data"]["allow_missing_classes"]
            else ""
        ),
    shell:
        "python -m cellseg class-frequencies --datasplit {input.datasplit:q} --out {output:q}"
        " --resolution-nm {params.resolution} {params.allow_missing} > {log:q} 2>&1"
