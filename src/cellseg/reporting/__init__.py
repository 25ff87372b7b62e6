"""The comparison of trained models, as tables, text and figures.

One way through, each module reading only those above it in this list:

* :mod:`~cellseg.reporting.summary_inputs`: the summary's settings and the evaluation's metrics
  CSVs read into per-crop counts;
* :mod:`~cellseg.reporting.summary_columns`: a model's columns of the summary table from its counts;
* :mod:`~cellseg.reporting.summary`: the summary table (one row per model and the baseline) from
  those, with the statistics of :mod:`cellseg.statistics`;
* :mod:`~cellseg.reporting.study`: the study table (runs grouped by model and variant over seeds);
* :mod:`~cellseg.reporting.markdown`: ``summary.md`` and ``study.md`` rendered from those tables;
* :mod:`~cellseg.reporting.figures`: the figures drawn from those tables (matplotlib is imported
  only there, and only when a figure is drawn);
* :mod:`~cellseg.reporting.outputs`: writing every file atomically, and ``cellseg summary``.

Nothing computed for the tables is read back from text or figures.
"""

from cellseg.reporting.markdown import study_markdown, summary_markdown
from cellseg.reporting.outputs import (
    MEASURED_COLUMNS,
    add_parser,
    make_study,
    make_summary,
    write_summary,
)
from cellseg.reporting.study import Study, summarize_study
from cellseg.reporting.summary import Summary, summarize
from cellseg.reporting.summary_inputs import (
    BASELINE,
    SummarySettings,
    expected_models,
    load_metrics,
    metric_counts,
    prior_baseline_counts,
)

__all__ = [
    "BASELINE",
    "MEASURED_COLUMNS",
    "Study",
    "Summary",
    "SummarySettings",
    "add_parser",
    "expected_models",
    "load_metrics",
    "make_study",
    "make_summary",
    "metric_counts",
    "prior_baseline_counts",
    "study_markdown",
    "summarize",
    "summarize_study",
    "summary_markdown",
    "write_summary",
]
