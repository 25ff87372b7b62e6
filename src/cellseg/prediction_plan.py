"""The workflow's view of prediction: which runs, datasets, EM groups and ROIs ``predict_all``
covers, from the config (``predict`` section).

Kept apart from :mod:`cellseg.prediction`, which needs torch and zarr: Snakemake plans the DAG in
an environment that may not have them (``--sdm conda``), and the rules import this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellseg.errors import CellsegError

__all__ = ["parse_roi", "prediction_targets", "split_store_path"]


def parse_roi(text: str | None) -> tuple[tuple[float, float], ...] | None:
    """``"z0:z1,y0:y1,x0:x1"`` (nm, world coordinates) → ``((z0, z1), (y0, y1), (x0, x1))``.

    Raises:
        CellsegError: not three ``a:b`` ranges with ``a < b``.
    """
    if text is None or str(text).strip() == "":
        return None
    parts = str(text).split(",")
    try:
        ranges = tuple(tuple(float(v) for v in part.split(":")) for part in parts)
    except ValueError:
        ranges = ()
    if len(ranges) != 3 or any(len(r) != 2 or not r[0] < r[1] for r in ranges):
        raise CellsegError(
            f"--roi {text!r}: expected z0:z1,y0:y1,x0:x1 in nm with each start below its stop"
        )
    return ranges  # type: ignore[return-value]


def split_store_path(path: Path | str) -> tuple[Path, str]:
    """``STORE.zarr/recon-1/em/fibsem-uint8`` → ``(STORE.zarr, "recon-1/em/fibsem-uint8")``
    (the last path component ending in ``.zarr`` is the store).

    Raises:
        CellsegError: no component ends in ``.zarr``.
    """
    parts = Path(path).parts
    stores = [i for i, p in enumerate(parts) if p.endswith(".zarr")]
    if not stores:
        raise CellsegError(
            f"--em {path}: expected STORE.zarr/GROUP, e.g. "
            "data/jrc_x/jrc_x.zarr/recon-1/em/fibsem-uint8"
        )
    i = stores[-1]
    return Path(*parts[: i + 1]), "/".join(parts[i + 1 :])


PREDICTION_TARGET = "results/predictions/{run}/{dataset}.zarr"
"""A dataset's prediction by a run's ``best.pt``, as the ``predict_pyramid`` rule writes it."""


def prediction_runs(
    section: Mapping[str, Any],
    runs: Sequence[str],
    models: Sequence[str],
    summary: Path | str,
    source: str = "config",
) -> list[str]:
    """``predict.models`` as run names (``{model}_{dim}[~variant][~rK]``, the directories of
    ``results/models``).

    A name is one of the config's runs (``runs``: every model x variant x replicate it trains)
    or a configured model key (``models``), which is the variant-free replicate 0 run of that
    model (for a study with variants, a run the study itself does not train; its ``best.pt`` is
    trained on demand). ``best`` is the rank-1 row of ``summary`` (``results/summary.csv``, whose
    ``model`` column holds run names: for a study, possibly a variant's or a replicate's run).

    Raises:
        CellsegError: a name that is neither, or ``best`` without a ranked summary.
    """
    import csv

    valid = list(dict.fromkeys([*runs, *models]))
    names = section["models"]
    if names != "best":
        unknown = [name for name in names if name not in valid]
        if unknown:
            raise CellsegError(
                f"{source}: predict.models: {unknown[0]!r} is not a run or model of this config; "
                f"valid: {', '.join(valid)} (or best)"
            )
        return list(names)
    summary = Path(summary)
    if not summary.is_file():
        raise CellsegError(
            f"{source}: predict.models: best needs {summary}; run the comparison first "
            "(snakemake) or list the runs to predict with"
        )
    with open(summary, newline="") as handle:
        ranked = [r for r in csv.DictReader(handle) if r.get("rank") not in (None, "", "nan")]
    if not ranked:
        raise CellsegError(f"{summary}: no ranked model; list predict.models instead")
    best = min(ranked, key=lambda r: float(r["rank"]))["model"]
    if best not in valid:
        raise CellsegError(
            f"{source}: predict.models: best is {best!r} in {summary}, not a run of this config "
            f"(valid: {', '.join(valid)}); rerun the comparison or list the runs to predict with"
        )
    return [best]


def _dataset_stores(root: Path | str) -> list[Path]:
    return sorted(p for p in Path(root).glob("*/*.zarr") if p.stem == p.parent.name)


def prediction_datasets(config: Mapping[str, Any], demo_root: str) -> list[str]:
    """``predict.datasets``, or every dataset of the data roots (the demo's when it is on)."""
    if config["predict"]["datasets"]:
        return list(config["predict"]["datasets"])
    if config["data"]["demo"]["enabled"]:
        from cellseg.data.demo_layout import SIZES

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
    config: Mapping[str, Any],
    runs: Sequence[str],
    models: Sequence[str],
    summary: Path | str,
    demo_root: str,
    source: str = "config",
) -> list[str]:
    """Every run x dataset prediction path of ``predict`` (the ``predict_all`` target)."""
    return [
        PREDICTION_TARGET.format(run=run, dataset=dataset)
        for run in prediction_runs(config["predict"], runs, models, summary, source)
        for dataset in prediction_datasets(config, demo_root)
    ]
