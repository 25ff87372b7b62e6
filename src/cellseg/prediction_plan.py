"""The workflow's view of prediction: which models, datasets, EM groups and ROIs ``predict_all``
covers, from the config (``predict`` section).

Kept apart from :mod:`cellseg.prediction`, which needs torch and zarr: Snakemake plans the DAG in
an environment that may not have them (``--sdm conda``), and the rules import this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellseg.errors import CellsegError

PREDICTION_TARGET = "results/predictions/{model}_{dim}/{dataset}.zarr"
"""A dataset's prediction, as the ``predict_pyramid`` rule writes it."""


def prediction_models(
    section: Mapping[str, Any], configured: Sequence[str], summary: Path | str
) -> list[str]:
    """``predict.models`` as ``{model}_{dim}`` keys; ``best`` is the top-ranked model of
    ``summary`` (``results/summary.csv``).

    Raises:
        CellsegError: a model that is not configured, or ``best`` without a ranked summary.
    """
    import csv

    models = section["models"]
    if models != "best":
        unknown = [key for key in models if key not in configured]
        if unknown:
            raise CellsegError(
                f"predict.models: {unknown[0]} is not among the configured models "
                f"({', '.join(configured)}); list trained models or use best"
            )
        return list(models)
    summary = Path(summary)
    if not summary.is_file():
        raise CellsegError(
            f"predict.models: best needs {summary}; run the comparison first (snakemake) or "
            "list the models"
        )
    with open(summary, newline="") as handle:
        ranked = [r for r in csv.DictReader(handle) if r.get("rank") not in (None, "", "nan")]
    if not ranked:
        raise CellsegError(f"{summary}: no ranked model; list predict.models instead")
    return [min(ranked, key=lambda r: float(r["rank"]))["model"]]


def _dataset_stores(root: Path | str) -> list[Path]:
    return sorted(p for p in Path(root).glob("*/*.zarr") if p.stem == p.parent.name)


def prediction_datasets(config: Mapping[str, Any], demo_root: str) -> list[str]:
    """``predict.datasets``, or every dataset of the data roots (the demo's when it is on)."""
    if config["predict"]["datasets"]:
        return list(config["predict"]["datasets"])
    if config["data"]["demo"]["enabled"]:
        from cellseg.data.demo import SIZES

        return [name for name, _ in SIZES[config["data"]["demo"]["size"]].datasets]
    return [p.stem for root in config["data"]["roots"] for p in _dataset_stores(root)]


def prediction_em(config: Mapping[str, Any], dataset: str, demo_root: str) -> str:
    """``STORE.zarr/GROUP`` of a dataset's EM (the first data root holding
    ``{root}/{dataset}/{dataset}.zarr``).

    Raises:
        CellsegError: no data root holds the dataset.
    """
    group = config["predict"]["em_group"]
    if config["data"]["demo"]["enabled"]:
        return f"{demo_root}/{dataset}/{dataset}.zarr/{group}"
    for root in config["data"]["roots"]:
        store = Path(root) / dataset / f"{dataset}.zarr"
        if store.is_dir():
            return f"{store}/{group}"
    raise CellsegError(
        f"predict.datasets: {dataset!r} is in no data root "
        f"({', '.join(map(str, config['data']['roots']))}); expected {{root}}/{dataset}/{dataset}.zarr"
    )


def prediction_roi(config: Mapping[str, Any], dataset: str) -> str:
    """The dataset's ``predict.roi`` string (nm), or ``""`` for the whole volume."""
    roi = config["predict"]["roi"]
    if isinstance(roi, Mapping):
        roi = roi.get(dataset)
    return roi or ""


def prediction_targets(
    config: Mapping[str, Any], configured: Sequence[str], summary: Path | str, demo_root: str
) -> list[str]:
    """Every configured model × dataset prediction path (the ``predict_all`` target)."""
    return [
        PREDICTION_TARGET.format(model=model, dim=dim, dataset=dataset)
        for model, dim in (
            key.rsplit("_", 1) for key in prediction_models(config["predict"], configured, summary)
        )
        for dataset in prediction_datasets(config, demo_root)
    ]
