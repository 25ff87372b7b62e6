"""The documentation as the tests read it: README.md, the pages under docs/, mkdocs.yml's nav,
fenced code blocks and the command lines they show."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
README = REPO / "README.md"
DOCS = REPO / "docs"
MKDOCS_YML = REPO / "mkdocs.yml"

SHELL_LANGUAGES = {"bash", "sh", "shell", "console"}
"""Fenced blocks whose lines are commands (``console``: only lines starting with ``$ ``)."""

# Programs whose inline code spans (`snakemake -n`) are command lines, not names: a span that
# starts with one of these and has an argument is checked like a line of a bash block.
INLINE_PROGRAMS = {
    "snakemake",
    "cellseg",
    "bash",
    "python",
    "pytest",
    "mkdocs",
    "tensorboard",
    "torchrun",
    "squeue",
    "sacct",
    "sbatch",
    "scancel",
    "scontrol",
    "sinfo",
    "sacctmgr",
    "ssh",
    "tail",
    "module",
    "git",
    "apt-get",
    "napari",
    "ruff",
}


def pages() -> list[Path]:
    """Every Markdown page of the site, sorted."""
    return sorted(DOCS.rglob("*.md"))


def documents() -> list[Path]:
    """README.md and every docs page: everything whose commands are checked."""
    return [README, *pages()]


class _IgnoreTags(yaml.SafeLoader):
    """mkdocs.yml names Python objects (``!!python/name:…``); reading the nav needs none."""


_IgnoreTags.add_multi_constructor("tag:yaml.org,2002:python/", lambda loader, suffix, node: None)


def mkdocs_config() -> dict:
    return yaml.load(MKDOCS_YML.read_text(), Loader=_IgnoreTags)  # a SafeLoader subclass


def nav_pages(nav: list | None = None) -> list[str]:
    """The ``*.md`` paths (relative to docs/) that mkdocs.yml's nav lists, in order."""
    found: list[str] = []
    for item in mkdocs_config()["nav"] if nav is None else nav:
        values = item.values() if isinstance(item, dict) else [item]
        for value in values:
            if isinstance(value, list):
                found += nav_pages(value)
            elif isinstance(value, str) and value.endswith(".md"):
                found.append(value)
    return found


@dataclass(frozen=True)
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    language: str
    lines: tuple[str, ...]


_FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)")


def fenced_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the info string's first word."""
    blocks = []
    text = path.read_text().splitlines()
    i = 0
    while i < len(text):
        match = _FENCE.match(text[i])
        if not match:
            i += 1
            continue
        fence, start = match.group(2), i
        body = []
        i += 1
        while i < len(text) and not text[i].lstrip().startswith(fence):
            body.append(text[i])
            i += 1
        blocks.append(Block(path, start + 1, match.group(3), tuple(body)))
        i += 1
    return blocks


@dataclass(frozen=True)
class Command:
    where: str  # "README.md:14", for failure messages
    text: str  # one command line, continuations joined, prompt and comments kept for shlex
    inline: bool  # from a `code span` in prose rather than a bash block


def block_commands(block: Block) -> list[Command]:
    """One Command per logical line: ``\\`` continuations joined, blank and comment lines
    skipped; in ``console`` blocks only ``$ `` lines, without the prompt."""
    commands = []
    pending, first = "", 0
    for offset, raw in enumerate(block.lines, start=block.line + 1):
        line = raw.strip()
        if block.language == "console":
            if not (line.startswith("$ ") or pending):
                continue
            line = line.removeprefix("$ ")
        if not pending and (not line or line.startswith("#")):
            continue
        if not pending:
            first = offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(Command(f"{block.path.relative_to(REPO)}:{first}", pending + line, False))
        pending = ""
    assert not pending, f"{block.path.relative_to(REPO)}:{first}: a continuation never ends"
    return commands


def inline_commands(path: Path) -> list[Command]:
    """Code spans in prose and tables that are command lines (see INLINE_PROGRAMS)."""
    text = path.read_text()
    # blank out fenced blocks, keeping line numbers
    text = re.sub(
        r"^(```|~~~).*?^\1[^\n]*$",
        lambda m: "\n" * m.group(0).count("\n"),
        text,
        flags=re.S | re.M,
    )
    commands = []
    for match in re.finditer(r"(?<!`)`([^`]+)`(?!`)", text):
        span = " ".join(match.group(1).split())
        words = span.split()
        if len(words) > 1 and words[0] in INLINE_PROGRAMS:
            line = text.count("\n", 0, match.start()) + 1
            # a `|` inside a table cell is written `\|`
            commands.append(
                Command(f"{path.relative_to(REPO)}:{line}", span.replace("\\|", "|"), True)
            )
    return commands


def all_commands() -> list[Command]:
    commands = []
    for path in documents():
        for block in fenced_blocks(path):
            if block.language in SHELL_LANGUAGES:
                commands += block_commands(block)
        commands += inline_commands(path)
    return commands
