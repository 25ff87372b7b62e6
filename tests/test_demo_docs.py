"""The demo's figures in the README and docs/benchmarks.md are generated, never typed: each
document's block equals what :mod:`cellseg.reporting.demo_docs` renders from the committed copy of
the demo's summary, and no demo figure stands outside a block."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from cellseg.errors import CellsegError
from cellseg.reporting import BASELINE
from cellseg.reporting.demo_docs import (
    BLOCK,
    DOCUMENTS,
    PROVENANCE_ASSET,
    SUMMARY_ASSET,
    count_test_datasets,
    read_block,
    render_demo_results,
    replace_block,
    stale_documents,
)

REPO = Path(__file__).resolve().parents[1]
MODEL_FIGURE = re.compile(r"`?(unet|resnet|swin|vit)_[23]d`? \d\.\d{3}")


def _summary() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "rank": [2, 1, None],
            "rank_low": [1, 1, None],
            "rank_high": [2, 2, None],
            "model": ["unet_2d", "resnet_2d", BASELINE],
            "n_crops": [7, 7, 7],
            "mean_dice": [0.41, 0.5234, 0.0381],
            "mean_dice_ci_low": [0.03, 0.45, None],
            "mean_dice_ci_high": [0.6, 0.6, None],
            "pooled_dice": [0.4, 0.5, 0.04],
            "challenge_score": [0.2, 0.3, None],
            "p_adjusted": [0.031, None, None],
        }
    )


def test_render_names_best_baseline_and_provenance() -> None:
    text = render_demo_results(
        _summary(), {"commit": "a" * 40, "date": "2026-12-07", "test_datasets": 4}
    )
    assert "the best model, `resnet_2d`, reaches 0.523" in text
    assert "chance baseline scores 0.038" in text
    # unet_2d's interval [0.03, 0.6] does not clear the baseline 0.038: 1 of 2, not 2 of 2
    assert "1 of 2 models have their interval above the baseline" in text
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert rows[1].startswith("| 1 | `resnet_2d` | 0.523 [0.450, 0.600]")  # ranked order
    assert rows[2].endswith("| 1–2 | 0.031 |")
    assert "from 4 datasets" in text and "`aaaaaaaaaa`" in text


def test_replace_block_needs_exactly_one_block() -> None:
    text = "a\n<!-- cellseg:x:begin -->\nold\n<!-- cellseg:x:end -->\nb\n"
    assert replace_block(text, "x", "new") == text.replace("old", "new")
    assert read_block(replace_block(text, "x", "new"), "x") == "new"
    with pytest.raises(CellsegError, match="found 0"):
        replace_block("no markers", "x", "new")
    with pytest.raises(CellsegError, match="found 2"):
        replace_block(text + text, "x", "new")


def test_count_test_datasets(tmp_path: Path) -> None:
    csv = tmp_path / "datasplit.csv"
    csv.write_text(
        '"test","/r/a/a.zarr","em","/r/a/a.zarr","labels/crop1/[ecs]"\n'
        '"test","/r/b/b.zarr","em","/r/b/b.zarr","labels/crop2/[ecs]"\n'
        '"test","/r/b/b.zarr","em","/r/b/b.zarr","labels/crop3/[ecs]"\n'
        '"train","/r/c/c.zarr","em","/r/c/c.zarr","labels/crop4/[ecs]"\n'
    )
    assert count_test_datasets(csv) == 2
    assert count_test_datasets(tmp_path / "absent.csv") is None


def test_documents_match_the_committed_demo_summary() -> None:
    """A hand edit of a block, or a new summary copied without regenerating, fails here."""
    assert (REPO / SUMMARY_ASSET).is_file(), f"{SUMMARY_ASSET}: run scripts/update_demo_docs.py"
    stale = stale_documents(REPO)
    assert not stale, f"{stale}: run `python scripts/update_demo_docs.py` after the demo"
    for document in DOCUMENTS:
        assert "| 1 |" in read_block((REPO / document).read_text(), BLOCK)


def test_no_demo_figure_outside_the_blocks() -> None:
    for document in DOCUMENTS:
        text = (REPO / document).read_text()
        outside = re.sub(
            r"<!-- cellseg:demo-results:begin -->.*?<!-- cellseg:demo-results:end -->",
            "",
            text,
            flags=re.DOTALL,
        )
        assert not MODEL_FIGURE.search(outside), (document, MODEL_FIGURE.search(outside))


def test_provenance_names_a_commit_of_this_history() -> None:
    provenance = json.loads((REPO / PROVENANCE_ASSET).read_text())
    assert re.fullmatch(r"[0-9a-f]{40}", provenance["commit"]), provenance
    summary = pd.read_csv(REPO / SUMMARY_ASSET)
    assert set(summary["model"]) >= {BASELINE, "resnet_2d", "unet_3d"}
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: the commit cannot be looked up")
    known = subprocess.run(
        ["git", "-C", str(REPO), "cat-file", "-e", f"{provenance['commit']}^{{commit}}"],
        capture_output=True,
        check=False,
    )
    assert known.returncode == 0, f"commit {provenance['commit']} is not in this repository"


def test_provenance_is_the_commit_of_the_clone_the_demo_ran_in(tmp_path: Path) -> None:
    from cellseg.reporting.demo_docs import provenance_of

    clone = tmp_path / "clone"
    (clone / "src").mkdir(parents=True)
    (clone / "src" / "a.py").write_text("x = 1\n")
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    subprocess.run([*git, "add", "src"], check=True)
    subprocess.run([*git, "commit", "-qm", "c"], check=True)
    head = subprocess.run(
        [*git, "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    (clone / "results").mkdir()
    provenance = provenance_of(clone / "results", "a machine")
    assert provenance["commit"] == head and provenance["dirty"] is False
    (clone / "src" / "a.py").write_text("x = 2\n")
    assert provenance_of(clone / "results", "a machine")["dirty"] is True
