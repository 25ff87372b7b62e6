"""``results/preflight.md``: every run's preflight result in one table (no torch)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cellseg.io import write_text_atomic
from cellseg.training.preflight_verdict import read_result


def _number(value: float | None, pattern: str) -> str:
    return "n/a" if value is None or not math.isfinite(value) else format(value, pattern)


def table_row(document: Mapping[str, Any]) -> str:
    """One row of ``results/preflight.md``."""
    s, p, settings = document["summary"], document["projection"], document["settings"]
    reason = "; ".join(document["reasons"]).replace("|", "\\|") or "-"
    if s is None or p is None:  # out of GPU memory: nothing measured
        return f"| {document['run']} | | > 1 | | | | | | {document['verdict']} | {reason} |"
    if s["memory_fraction"] is None:
        memory = f"n/a (host RSS {s['host_peak_rss_mb'] / 1024:.1f} of {settings['mem_mb'] / 1024:.1f} GB)"
    else:
        memory = (
            f"{s['memory_fraction']:.2f} ({s['held_memory_mb'] / 1024:.1f} of "
            f"{s['device_memory_mb'] / 1024:.1f} GB; allocated {s['peak_memory_mb'] / 1024:.1f})"
        )
    cells = [
        document["run"],
        s["device"],
        memory,
        _number(s["step_s"], ".3g"),
        _number(s["demand"], ".3g"),
        f"{_number(s['supply_ratio'], '.2f')} ({s['supply']:.3g} / {s['demand']:.3g})",
        f"{s['data_wait_fraction']:.0%}",
        f"{p['days']:.2f} ({p['attempts']} job{'s' if p['attempts'] != 1 else ''})",
        document["verdict"],
        reason,
    ]
    return "| " + " | ".join(cells) + " |"


TABLE_HEADER = (
    "| run | device | memory held (reserved + context) ÷ device memory | step time (s) | samples/s per GPU "
    "| loader supply ÷ demand | data wait | projected days | verdict | reason |\n"
    "|---|---|---|---:|---:|---|---:|---|---|---|"
)


def format_table(documents: Sequence[Mapping[str, Any]]) -> str:
    """``results/preflight.md``: one row per run and a line on how to read it."""
    rows = "\n".join(table_row(d) for d in documents)
    nogo = [d["run"] for d in documents if d["verdict"] != "go"]
    verdict = f"no-go: {', '.join(nogo)}" if nogo else "every run: go"
    return (
        "# Preflight\n\n"
        f"{verdict}. Memory held: the reserved peak plus the CUDA context, the allocated peak "
        "beside it. Step time: one optimizer step (grad_accum micro-batches) on a batch held on "
        "the device; samples/s per GPU at that step (the demand); loader supply ÷ demand: "
        "patches/s each rank's loader delivered ÷ that demand; data wait: share of a short "
        "real run spent waiting for the loader; projected days to max_epochs (jobs of "
        "runtime_min - time_budget_margin_min). See docs/longleaf.md.\n\n"
        f"{TABLE_HEADER}\n{rows}\n"
    )


def write_table(results: Sequence[Path | str], out: Path | str) -> None:
    """Write ``results/preflight.md`` from the runs' JSONs (atomically)."""
    write_text_atomic(Path(out), format_table([read_result(p) for p in results]))
