"""Configuration, one layer of its own (docs/architecture.md, layer 2): how config files layer
and are checked (:mod:`cellseg.config.layers`), one run's training settings resolved from them
(:mod:`cellseg.config.settings`), what each workflow job asks the cluster for
(:mod:`cellseg.config.resources`) and a sub-command's options into its settings
(:mod:`cellseg.config.options`). Nothing here imports torch: the workflow plans its jobs from
these modules while Snakemake builds the DAG."""
