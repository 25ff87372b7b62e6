"""The demo's figures in the README and ``docs/benchmarks.md``, generated from the demo's outputs.

Hand-copied figures go stale: a change of split, model or statistic moves every number, and the
prose keeps the old ones. Here the demo's ``results/summary.csv`` is copied into
``docs/assets/demo_summary.csv`` together with a provenance file (the commit and the command it
came from), and the tables between ``<!-- cellseg:demo-results:begin -->`` and
``<!-- cellseg:demo-results:end -->`` in the documents are rendered from that copy. A test renders
them again from the committed copy and fails when a document's block differs, so a hand edit or
a stale block cannot land; numbers of the demo belong inside a block only.

``python scripts/update_demo_docs.py`` (after README command 1) does both steps; ``--check``
only compares.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cellseg.errors import CellsegError
from cellseg.io import write_json_atomic, write_text_atomic
from cellseg.reporting.summary_inputs import BASELINE

BLOCK = "demo-results"
"""Name of the generated blocks in the documents."""

SUMMARY_ASSET = Path("docs/assets/demo_summary.csv")
PROVENANCE_ASSET = Path("docs/assets/demo_summary.json")
FIGURE_ASSETS: dict[str, Path] = {
    "figures/summary/mean_dice.png": Path("docs/assets/demo_mean_dice.png"),
    "figures/summary/rank_sets.png": Path("docs/assets/demo_rank_sets.png"),
}
"""Figure under ``results/`` → its copy under the repository."""

DOCUMENTS: tuple[Path, ...] = (Path("README.md"), Path("docs/benchmarks.md"))
"""Documents holding a generated block of the demo's results."""

DEMO_COMMAND = "bash scripts/env.sh snakemake --cores all"


def _markers(name: str) -> tuple[str, str]:
    return f"<!-- cellseg:{name}:begin -->", f"<!-- cellseg:{name}:end -->"


def replace_block(text: str, name: str, content: str) -> str:
    """``text`` with the block ``name`` (between its begin and end markers) replaced.

    Raises:
        CellsegError: the block's markers are missing, repeated or out of order.
    """
    begin, end = _markers(name)
    pattern = re.compile(re.escape(begin) + r"\n.*?" + re.escape(end), flags=re.DOTALL)
    found = pattern.findall(text)
    if len(found) != 1:
        raise CellsegError(
            f"expected one block {begin} … {end}, found {len(found)}: add the two marker lines"
        )
    return pattern.sub(lambda _: f"{begin}\n{content.rstrip()}\n{end}", text)


def read_block(text: str, name: str) -> str:
    """The content of block ``name`` (without its markers); ``CellsegError`` when absent."""
    begin, end = _markers(name)
    match = re.search(re.escape(begin) + r"\n(.*?)" + re.escape(end), text, flags=re.DOTALL)
    if match is None:
        raise CellsegError(f"no block {begin} … {end}")
    return match.group(1).rstrip()


def _number(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)) or pd.isna(value):
        return "–"
    return f"{float(value):.{digits}f}"


def _interval(row: Mapping[str, Any], column: str) -> str:
    low, high = row.get(f"{column}_ci_low"), row.get(f"{column}_ci_high")
    if low is None or pd.isna(low) or high is None or pd.isna(high):
        return _number(row.get(column))
    return f"{_number(row.get(column))} [{_number(low)}, {_number(high)}]"


def _p(value: Any) -> str:
    if value is None or pd.isna(value):
        return "–"
    value = float(value)
    return f"{value:.3f}" if value >= 1e-3 else f"{value:.0e}"


def _ranks(row: Mapping[str, Any]) -> str:
    low, high = row.get("rank_low"), row.get("rank_high")
    if low is None or pd.isna(low) or high is None or pd.isna(high):
        return "–"
    return f"{int(low)}" if int(low) == int(high) else f"{int(low)}–{int(high)}"


def render_demo_results(summary: pd.DataFrame, provenance: Mapping[str, Any]) -> str:
    """The generated block: the demo's ranked table and the sentence saying where it came from.

    Args:
        summary: the demo's ``summary.csv`` (one row per model and the baseline row).
        provenance: ``commit``, ``date`` and ``command`` of the run (:func:`provenance_of`).

    Returns:
        Markdown: a headline sentence, a table (model, test mean Dice with its 95 % interval,
        pooled Dice, challenge score, rank set, adjusted p against the best), and its source.
    """
    models = summary[summary["model"] != BASELINE].sort_values("rank", kind="stable")
    baseline = summary[summary["model"] == BASELINE]
    if models.empty:
        raise CellsegError("the summary holds no model row: run the demo first")
    best = models.iloc[0]
    crops = int(best["n_crops"]) if pd.notna(best.get("n_crops")) else 0
    baseline_dice = baseline["mean_dice"].iloc[0] if not baseline.empty else float("nan")
    above = models["mean_dice_ci_low"] > baseline_dice if not baseline.empty else None
    datasets = provenance.get("test_datasets")
    where = f" from {datasets} datasets" if datasets else ""
    lines = [
        f"Test mean Dice over the demo's {crops} held-out crops{where} (95 % intervals; the "
        f"chance baseline scores {_number(baseline_dice)}): the best model, "
        f"`{best['model']}`, reaches {_number(best['mean_dice'])}"
        + (
            f"; {int(above.sum())} of {len(models)} models have their interval above the baseline."
            if above is not None
            else "."
        ),
        "",
        "| rank | model | mean Dice [95 % CI] | pooled Dice | challenge score | rank set "
        "| p vs best (adjusted) |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for _, row in models.iterrows():
        rank = "–" if pd.isna(row.get("rank")) else str(int(row["rank"]))
        lines.append(
            f"| {rank} | `{row['model']}` | {_interval(row, 'mean_dice')} "
            f"| {_number(row.get('pooled_dice'))} | {_number(row.get('challenge_score'))} "
            f"| {_ranks(row)} | {_p(row.get('p_adjusted'))} |"
        )
    if not baseline.empty:
        lines.append(
            f"| – | {BASELINE} | {_number(baseline_dice)} "
            f"| {_number(baseline['pooled_dice'].iloc[0])} | – | – | – |"
        )
    lines += [
        "",
        f"Generated by `python scripts/update_demo_docs.py` from `{SUMMARY_ASSET}`, the "
        f"`results/summary.csv` of `{provenance.get('command', DEMO_COMMAND)}` at commit "
        f"`{str(provenance.get('commit', '?'))[:10]}`"
        + (" (with uncommitted changes)" if provenance.get("dirty") else "")
        + f" on {provenance.get('date', '?')}, {provenance.get('machine', 'a 2-core CPU machine')}.",
    ]
    return "\n".join(lines)


def _git(repo: Path, *args: str) -> str:
    result = subprocess.run(
        ["git", "-C", str(repo), *args], capture_output=True, text=True, check=False
    )
    return result.stdout.strip() if result.returncode == 0 else ""


def count_test_datasets(datasplit: Path) -> int | None:
    """How many datasets the ``test`` rows of a datasplit CSV come from (``None``: no file)."""
    if not datasplit.is_file():
        return None
    with datasplit.open(newline="") as handle:
        stores = {row[3] for row in csv.reader(handle) if len(row) >= 4 and row[0] == "test"}
    return len({Path(store).stem for store in stores})


def provenance_of(results: Path, machine: str) -> dict[str, Any]:
    """Where the demo's summary came from: the commit of the checkout that holds ``results``
    (the clone the demo ran in, which may be another than the one being documented), whether
    its sources, workflow or config differed from it, the date, the command, the machine and
    the test datasets."""
    checkout = results.resolve().parent
    dirty = bool(_git(checkout, "status", "--porcelain", "--", "src", "workflow", "config"))
    provenance: dict[str, Any] = {
        "commit": _git(checkout, "rev-parse", "HEAD") or "unknown",
        "dirty": dirty,
        "date": datetime.date.today().isoformat(),
        "command": DEMO_COMMAND,
        "machine": machine,
    }
    datasets = count_test_datasets(results / "datasplit.csv")
    if datasets:
        provenance["test_datasets"] = datasets
    return provenance


def render_documents(repo: Path) -> dict[Path, str]:
    """Every document of :data:`DOCUMENTS` with its block rendered from the committed assets."""
    summary = pd.read_csv(repo / SUMMARY_ASSET)
    provenance = json.loads((repo / PROVENANCE_ASSET).read_text())
    content = render_demo_results(summary, provenance)
    return {
        document: replace_block((repo / document).read_text(), BLOCK, content)
        for document in DOCUMENTS
    }


def update(repo: Path, results: Path, machine: str) -> list[Path]:
    """Copy the demo's summary and figures into the repository and rewrite the documents' blocks.

    Returns:
        the files written (relative to ``repo``).
    """
    source = results / "summary.csv"
    if not source.is_file():
        raise CellsegError(f"{source}: missing; run the demo first ({DEMO_COMMAND})")
    written = [SUMMARY_ASSET, PROVENANCE_ASSET]
    shutil.copyfile(source, repo / SUMMARY_ASSET)
    write_json_atomic(repo / PROVENANCE_ASSET, provenance_of(results, machine))
    for figure, asset in FIGURE_ASSETS.items():
        if (results / figure).is_file():
            shutil.copyfile(results / figure, repo / asset)
            written.append(asset)
    for document, text in render_documents(repo).items():
        write_text_atomic(repo / document, text)
        written.append(document)
    return written


def stale_documents(repo: Path) -> list[Path]:
    """Documents whose block differs from what the committed assets render."""
    return [
        document
        for document, text in render_documents(repo).items()
        if (repo / document).read_text() != text
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repo", type=Path, default=Path.cwd())
    parser.add_argument("--results", type=Path, default=Path("results"))
    parser.add_argument("--machine", default="2 CPU cores, no GPU")
    parser.add_argument(
        "--check", action="store_true", help="only report documents whose block is stale"
    )
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_documents(args.repo)
        for document in stale:
            print(
                f"{document}: its {BLOCK} block differs from {SUMMARY_ASSET}; rerun without --check"
            )
        return 1 if stale else 0
    for path in update(args.repo, args.results, args.machine):
        print(f"wrote {path}")
    return 0
