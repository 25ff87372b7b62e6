"""The documentation site builds with no warning (broken links and anchors included), every
page is reachable, and the README stays short with the two commands first."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest
from docs_pages import (
    DOCS,
    README,
    REPO,
    SHELL_LANGUAGES,
    documents,
    fenced_blocks,
    nav_pages,
    pages,
)

COMMAND_1 = "bash scripts/env.sh snakemake --cores all"
COMMAND_2 = "bash .ci/install-slurm.sh && bash scripts/env.sh pytest"


class Build(NamedTuple):
    returncode: int
    log: str  # stdout and stderr
    site: Path


@pytest.fixture(scope="module")
def site_build(tmp_path_factory) -> Build:
    """``mkdocs build --strict`` from the repository root (snippets are included from there)."""
    site = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=REPO,
        # Material prints a banner about its successor on every build; it is not a warning of
        # this site, and leaving it out keeps the log readable when the build fails
        env=os.environ | {"NO_MKDOCS_2_WARNING": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    return Build(result.returncode, result.stdout + result.stderr, site)


def test_site_builds_strict_without_warnings(site_build):
    log = site_build.log
    assert site_build.returncode == 0, log[-6000:]
    assert "WARNING" not in log, log[-6000:]
    # every page became HTML, and the included config/README.md reached its page
    for page in pages():
        relative = page.relative_to(DOCS).with_suffix("")
        html = "index.html" if relative.name == "index" else f"{relative}/index.html"
        assert (site_build.site / html).is_file(), html
    configuration = (site_build.site / "configuration" / "index.html").read_text()
    assert "Configuration keys" in configuration and "--8&lt;--" not in configuration
    api = (site_build.site / "api" / "index.html").read_text()
    assert "BalancedSoftmaxPartialTverskyLoss" in api and "paired_comparison" in api


def test_every_page_is_in_the_nav(site_build):
    log = site_build.log
    # mkdocs lists pages missing from the nav at INFO level, which strict does not fail on
    assert "not included in the" not in log, log[-4000:]
    in_nav = nav_pages()
    assert len(in_nav) == len(set(in_nav)), in_nav
    on_disk = [str(page.relative_to(DOCS)) for page in pages()]
    assert sorted(in_nav) == sorted(on_disk)


def test_every_page_is_linked_from_the_readme_or_the_nav():
    readme_links = set(re.findall(r"\]\((docs/[^)#\s]+\.md)", README.read_text()))
    for link in readme_links:
        assert (REPO / link).is_file(), f"README.md links to a missing page {link}"
    reachable = {f"docs/{page}" for page in nav_pages()} | readme_links
    for page in pages():
        assert str(page.relative_to(REPO)) in reachable, page


def test_readme_fits_on_two_screens():
    assert len(README.read_text().splitlines()) <= 200


def test_readme_starts_with_the_two_commands():
    text = README.read_text()
    shell = [b for b in fenced_blocks(README) if b.language in SHELL_LANGUAGES]
    assert [b.lines for b in shell[:2]] == [(COMMAND_1,), (COMMAND_2,)]
    # nothing but the title and the introduction comes before them
    assert text.index(COMMAND_1) < text.index("```mermaid")
    # the sentence may be rewrapped: compare with single spaces
    assert "`.ci/run`) runs exactly this line" in " ".join(text.split())


def test_ci_runs_the_readme_test_command():
    ci = (REPO / ".ci" / "run").read_text()
    assert COMMAND_2 in [line.strip() for line in ci.splitlines()]


def test_every_fenced_block_names_its_language():
    # an unlabelled block could hide a command from test_docs_commands.py
    for path in documents():
        for block in fenced_blocks(path):
            assert block.language, (
                f"{path.relative_to(REPO)}:{block.line}: fence without a language"
            )


def test_readme_figure_is_small_and_committed():
    images = re.findall(r'src="(docs/assets/[^"]+)"|\]\((docs/assets/[^)]+)\)', README.read_text())
    paths = [REPO / (a or b) for a, b in images]
    assert len(paths) == 1, paths
    assert paths[0].stat().st_size <= 150_000
    tracked = subprocess.run(
        ["git", "ls-files", "--error-unmatch", str(paths[0].relative_to(REPO))],
        cwd=REPO,
        capture_output=True,
    )
    assert tracked.returncode == 0, f"{paths[0]} is not committed"
