"""Writing the comparison's files (``summary.csv``, ``costs.csv``, ``summary.md``, the figures;
``study.csv``, ``study.md`` and its figures), all atomically, and the ``cellseg summary``
command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellseg.config.options import settings_from_args
from cellseg.io import atomic_path, write_text_atomic
from cellseg.ownership import check_output_path
from cellseg.reporting.markdown import (
    run_starts,
    starting_weights,
    study_markdown,
    summary_markdown,
)
from cellseg.reporting.study import Study, summarize_study
from cellseg.reporting.summary import Summary, summarize
from cellseg.reporting.summary_inputs import BASELINE, SummarySettings
from cellseg.statistics import DEFAULT_PERMUTATIONS

MEASURED_COLUMNS: tuple[str, ...] = (
    "train_hours",
    "gpu_hours",
    "cpu_hours",
    "compute_hours",
    "inference_seconds",
    "tta",
    "inference_us_per_voxel",
)
"""Wall-clock measurements (and ``tta``, the test-time augmentation the inference time was
measured with; ``inference_us_per_voxel``: that time per predicted voxel, µs): written to
``costs.csv``, not ``summary.csv``, so that the same config on the same machine gives the same
``summary.csv`` bit for bit."""


def write_summary(
    summary: Summary,
    csv_path: Path | str,
    md_path: Path | str,
    figures_dir: Path | str,
    costs_path: Path | str | None = None,
) -> None:
    """Write ``summary.csv`` (results only), ``summary.md``, the summary figures
    (:data:`~cellseg.reporting.figures.SUMMARY_FIGURES`) and, when ``costs_path`` is given, the
    :data:`MEASURED_COLUMNS` per model (all atomically)."""
    from cellseg.reporting.figures import write_summary_figures  # matplotlib only when drawing

    measured = [c for c in MEASURED_COLUMNS if c in summary.table]
    with atomic_path(csv_path) as temporary:
        summary.table.drop(columns=measured).to_csv(temporary, index=False)
    if costs_path is not None:
        costs = summary.table[summary.table["model"] != BASELINE]
        with atomic_path(costs_path) as temporary:
            costs[["model", "dim", "gpus", "compute_unit", *measured]].to_csv(
                temporary, index=False
            )
    write_text_atomic(md_path, summary_markdown(summary))
    write_summary_figures(summary.table, figures_dir)


def make_summary(
    metrics: Mapping[str, Path | str | None],
    train_summaries: Mapping[str, Path | str | None] | None,
    class_frequencies: Path | str | None,
    csv_path: Path | str,
    md_path: Path | str,
    figures_dir: Path | str,
    expected: Sequence[str] | None = None,
    settings: SummarySettings | None = None,
    costs_path: Path | str | None = None,
) -> Summary:
    """:func:`summarize` then :func:`write_summary` (what the ``summary`` rule runs)."""
    summary = summarize(metrics, train_summaries, class_frequencies, expected, settings)
    write_summary(summary, csv_path, md_path, figures_dir, costs_path)
    return summary


# ------------------------------------------------------------------------------ command line


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "summary",
        help="compare models: summary.csv, summary.md and figures from metrics CSVs",
    )
    parser.add_argument(
        "--metrics", type=Path, nargs="+", required=True,
        help="metrics CSVs named {model}_{dim}.csv",
    )  # fmt: skip
    parser.add_argument(
        "--models-dir", type=Path, default=Path("results/models"),
        help="where {model}_{dim}/train_summary.json are",
    )  # fmt: skip
    parser.add_argument("--class-frequencies", type=Path, default=None)
    parser.add_argument("--out-csv", type=Path, default=Path("results/summary.csv"))
    parser.add_argument("--out-md", type=Path, default=Path("results/summary.md"))
    parser.add_argument("--out-costs", type=Path, default=Path("results/costs.csv"))
    parser.add_argument("--figures", type=Path, default=Path("results/figures/summary"))
    parser.add_argument("--adjustment", default=None, choices=["train", "none"])
    parser.add_argument("--rank-by", default="mean", choices=["mean", "pooled"])
    counts = (  # the integer settings of SummarySettings: (option, default, help)
        ("--permutation-resamples", DEFAULT_PERMUTATIONS,
         "sign flips of the paired tests (exact when 2^N is at most this)"),
        ("--best-permutations", SummarySettings.best_permutations,
         "sign patterns and bootstrap resamples of the test of every pair of models"),
        ("--min-crops", SummarySettings.min_crops_for_statistics,
         "fewest crops with which a CI or p-value is reported"),
        ("--min-datasets", SummarySettings.min_datasets_for_clusters,
         "fewest datasets (crops named dataset/cropN) from which datasets are the units"),
    )  # fmt: skip
    for option, default, description in counts:
        parser.add_argument(option, type=int, default=default, help=description)
    parser.set_defaults(func=_run_summary)


def _run_summary(args: argparse.Namespace) -> int:
    # before any work: nothing is written into a data store, nor over a file of another kind
    for option, path in (("--out-csv", args.out_csv), ("--out-md", args.out_md),
                         ("--out-costs", args.out_costs)):  # fmt: skip
        if path is not None:
            check_output_path(path, option, "file")
    check_output_path(args.figures, "--figures", "directory")
    metrics = {path.stem: path for path in args.metrics}
    train = {key: args.models_dir / key / "train_summary.json" for key in metrics}
    settings = settings_from_args(
        SummarySettings,
        args,
        min_crops_for_statistics=args.min_crops,
        min_datasets_for_clusters=args.min_datasets,
    )
    summary = make_summary(
        metrics, train, args.class_frequencies, args.out_csv, args.out_md, args.figures,
        settings=settings, costs_path=args.out_costs,
    )  # fmt: skip
    print(f"{args.out_csv}: {len(summary.table)} rows; best {summary.table['best_model'].iloc[0]}",
          file=sys.stderr)  # fmt: skip
    return 0


def make_study(
    metrics: Mapping[str, Path | str | None],
    variants: Mapping[str, Any] | None,
    loss: Mapping[str, Any] | None,
    csv_path: Path | str,
    md_path: Path | str,
    figures_dir: Path | str,
    settings: SummarySettings | None = None,
    train_summaries: Mapping[str, Path | str] | None = None,
) -> Study:
    """:func:`summarize_study`, then ``study.csv``, ``study.md`` and the study figures
    (:data:`~cellseg.reporting.figures.STUDY_FIGURES`; what the ``study`` rule runs; all written
    atomically). ``train_summaries`` (run → ``train_summary.json``): ``study.md`` then says
    which runs really start from pretrained weights (:func:`starting_weights`)."""
    from cellseg.reporting.figures import write_study_figures  # matplotlib only when drawing

    study = summarize_study(metrics, variants, loss, settings)
    with atomic_path(csv_path) as temporary:
        study.table.to_csv(temporary, index=False)
    starts = starting_weights(run_starts(train_summaries or {}))
    write_text_atomic(
        md_path, study_markdown(study) + "\n".join(starts[1:]) + ("\n" if starts else "")
    )
    write_study_figures(study, loss or {}, figures_dir)
    return study
