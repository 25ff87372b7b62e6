"""Every command the README and docs/ show is one the tests run or check, so the documentation
cannot drift from the behaviour; and the README's rule graph is the workflow's.

Each command line (bash blocks, and inline code spans that start with a program) goes to the
rule for its program: ``snakemake`` through Snakemake's own argument parser plus one real dry run
per (config files, profile) from a fresh clone's root; ``cellseg`` / ``python -m cellseg``
through cellseg's parser; ``python SCRIPT`` against the script's ``--help``; ``mkdocs`` against
its ``--help``; ``pytest`` against the test paths and markers; everything else only through the
explicit allow-list ``TRUSTED`` below, with the reason it is trusted. A command no rule matches
fails, naming its file and line.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from docs_pages import README, REPO, Command, all_commands, documents, fenced_blocks

sys.path.insert(0, str(REPO / "tests" / "workflow"))
from workflow_runner import make_clone, run_in_clone

pytestmark = pytest.mark.minutes(1)  # order: tests/conftest.py

# Programs checked only by being named here. The reason says why a command of theirs shown in
# the docs is trusted; any path argument they name must still exist in the repository.
TRUSTED: dict[str, str] = {
    "bash .ci/install-slurm.sh": "CI runs it (.ci/run, README command 2)",
    "python -c": "an inline import check; `cellseg` is importable (the whole suite imports it)",
    "python -m http.server": "the Python standard library's file server",
    "tensorboard": "third-party viewer; tests/training reads back the event files it shows",
    "torchrun": "PyTorch's launcher; tests/training/test_ddp.py runs the trainer under it",
    "squeue": "SLURM's own command; tests/slurm runs a real SLURM",
    "sacct": "SLURM's own command; tests/slurm runs a real SLURM",
    "sbatch": "SLURM's own command; tests/slurm submits through it",
    "scancel": "SLURM's own command",
    "scontrol": "SLURM's own command; tests/slurm reads jobs with it",
    "sinfo": "SLURM's own command",
    "sacctmgr": "SLURM's own command (Longleaf accounts; not on the test cluster)",
    "module": "Longleaf's Lmod; not available off the cluster",
    "git": "git itself",
    "cd": "the shell",
    "ssh": "OpenSSH port forwarding to the login node",
    "tail": "coreutils",
    "dot": "Graphviz, drawing what `snakemake --rulegraph`/`--dag` print",
    "apt-get": "Debian's package manager (installing Graphviz)",
    "napari": "third-party viewer of the OME-Zarr that tests/test_prediction.py checks",
    "nvidia-smi": "NVIDIA's driver tool",
}

PLACEHOLDER = re.compile(r"^(?:[A-Z][A-Z0-9_]*|<[^>]*>|.*[…<>].*)$")
"""A value standing for the reader's own: DIR, N, <account>, /data/…"""


# --- turning a shown line into argument lists -------------------------------------------------


def segments(command: Command) -> list[list[str]]:
    """The simple commands of one line: split at ``&&``, ``;`` and ``|``, redirections and
    trailing comments dropped, ``bash scripts/env.sh`` removed, ``[optional]`` groups opened
    (``a|b|c`` inside brackets: the first choice), ``<placeholders>`` made one word, a
    ``…`` that means "more arguments" dropped."""
    # `<account>`, `<this repository>`: a placeholder, not a redirection
    text = re.sub(r"<[^<>\s][^<>]*>", "PLACEHOLDER", command.text)
    # `[--size small|default|large]`: an optional group's alternatives, not a pipe
    text = re.sub(r"\[([^\]]*)\]", lambda m: re.sub(r"\|[^\s\]]+", "", m.group(1)), text)
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    tokens = list(lexer)
    result, current, skip = [], [], False
    for token in tokens:
        if skip:
            skip = False
        elif token in {"&&", ";", "|", "||"}:
            result.append(current)
            current = []
        elif token in {">", ">>", "<", "2>"}:
            skip = True
        elif token == "…" and not (current and current[-1].startswith("-")):
            continue  # "and more arguments"; after a flag, `…` stands for its value
        else:
            current.append(token)
    result.append(current)
    stripped = []
    for words in filter(None, result):
        while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
            words = words[1:]  # VAR=value cmd
        if words[:2] == ["bash", "scripts/env.sh"]:
            words = words[2:]
        if words and words[0] == "export":
            continue  # an environment variable, not a command
        if words:
            stripped.append(words)
    return stripped


# --- snakemake ------------------------------------------------------------------------------


@cache
def snakemake_parser() -> argparse.ArgumentParser:
    from snakemake.cli import get_argument_parser

    return get_argument_parser()


def parse_snakemake(words: list[str], where: str) -> argparse.Namespace:
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            return snakemake_parser().parse_args(words)
    except SystemExit:
        pytest.fail(f"{where}: snakemake {' '.join(words)}: {errors.getvalue().strip()}")


def snakemake_plan(words: list[str], where: str) -> tuple[tuple[str, ...], str, tuple[str, ...]]:
    """(config files, profile, targets) of a shown ``snakemake`` command, its flags checked by
    Snakemake's parser and its files checked to exist."""
    args = parse_snakemake(words, where)
    configfiles = tuple(str(p) for p in args.configfile or ())
    profile = args.profile[0] if isinstance(args.profile, list) else args.profile
    for path in [*configfiles, *([profile] if profile else [])]:
        assert PLACEHOLDER.match(path) or (REPO / path).exists(), f"{where}: no {path}"
    profile = "" if profile is None or PLACEHOLDER.match(profile) else profile
    # rule names and files named as targets are planned by that combination's dry run
    targets = tuple(t for t in args.targets or () if not PLACEHOLDER.match(t))
    return configfiles, profile, targets


# --- cellseg --------------------------------------------------------------------------------


@cache
def cellseg_subparsers() -> dict[str, argparse.ArgumentParser]:
    from cellseg.cli import build_parser

    parser = build_parser()
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def check_cellseg(words: list[str], where: str) -> None:
    """``cellseg SUB --flag value …``: the sub-command and each flag exist, each flag gets as
    many values as it takes, and a value that is not a placeholder is among its choices."""
    subparsers = cellseg_subparsers()
    if not words or PLACEHOLDER.match(words[0]):  # `cellseg COMMAND --help`
        assert all(w.startswith("-") for w in words[1:]), where
        return
    sub, *rest = words
    assert sub in subparsers, f"{where}: cellseg has no sub-command {sub}"
    actions = subparsers[sub]._option_string_actions
    i = 0
    while i < len(rest):
        flag = rest[i]
        if PLACEHOLDER.match(flag):  # `--root DIR [--root DIR …]`
            i += 1
            continue
        name = flag.split("=", 1)[0]
        assert name in actions, f"{where}: cellseg {sub} has no option {name}"
        action = actions[name]
        values = [flag.split("=", 1)[1]] if "=" in flag else []
        i += 1
        if action.nargs != 0 and not values:
            while i < len(rest) and not rest[i].startswith("-"):
                values.append(rest[i])
                i += 1
                if action.nargs in (None, 1):
                    break
            assert values, f"{where}: cellseg {sub} {name} needs a value"
        for value in values:
            if action.choices and not PLACEHOLDER.match(value):
                assert value in action.choices, f"{where}: {name} {value} not in {action.choices}"


# --- python scripts, pytest, mkdocs ---------------------------------------------------------


@cache
def help_text(*program: str) -> str:
    result = subprocess.run(
        [sys.executable, *program, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, f"{' '.join(program)} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


def check_flags_in_help(program: tuple[str, ...], flags: list[str], where: str) -> None:
    text = help_text(*program)
    for flag in flags:
        name = flag.split("=", 1)[0]
        assert re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text), (
            f"{where}: {' '.join(program)} has no option {name}"
        )


def check_pytest(words: list[str], where: str) -> None:
    markers = {
        m.split(":")[0]
        for m in tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"][
            "ini_options"
        ]["markers"]
    }
    i = 0
    while i < len(words):
        word = words[i]
        if word == "-m":
            expression = words[i + 1]
            used = set(re.findall(r"\w+", expression)) - {"not", "and", "or"}
            assert used <= markers, f"{where}: unknown pytest markers {used - markers}"
            i += 2
            continue
        if word == "-k":  # a name expression: collection would say if nothing matches
            i += 2
            continue
        if not word.startswith("-"):
            assert (REPO / word.split("::")[0]).exists(), f"{where}: no test path {word}"
        i += 1


# --- the dispatcher -------------------------------------------------------------------------


def check_paths_exist(words: list[str], where: str) -> None:
    for word in words:
        if re.fullmatch(r"(\./)?(\.ci|scripts|bench|tests|config|workflow|docs|src)/\S+", word):
            assert (REPO / word).exists(), f"{where}: no {word}"


def check(words: list[str], where: str, plans: dict) -> str:
    """Check one simple command; return the name of the rule that did."""
    program, rest = words[0], words[1:]
    if program == "snakemake":
        key = snakemake_plan(rest, where)
        # a reader's own config file (`--configfile <experiment.yaml>`) cannot be planned here:
        # its flags went through Snakemake's parser above
        if not any(PLACEHOLDER.match(path) for path in key[0]):
            plans.setdefault(key[:2], set()).update(key[2] or ("all",))
        return "snakemake"
    if program == "cellseg" or words[:3] == ["python", "-m", "cellseg"]:
        check_cellseg(rest if program == "cellseg" else words[3:], where)
        return "cellseg"
    if program == "python" and rest and rest[0].endswith(".py"):
        assert (REPO / rest[0]).is_file(), f"{where}: no script {rest[0]}"
        check_flags_in_help((rest[0],), [w for w in rest[1:] if w.startswith("--")], where)
        return "python script"
    if program == "pytest":
        check_pytest(rest, where)
        return "pytest"
    if program == "mkdocs":
        assert rest and rest[0] in {"serve", "build"}, f"{where}: mkdocs {rest[:1]}"
        flags = [w for w in rest[1:] if w.startswith("-")]
        check_flags_in_help(("-m", "mkdocs", rest[0]), flags, where)
        return "mkdocs"
    for name in sorted(TRUSTED, key=len, reverse=True):
        if words[: len(name.split())] == name.split():
            check_paths_exist(words, where)
            if program == "bash":
                assert (REPO / words[1]).is_file(), f"{where}: no {words[1]}"
            return name
    pytest.fail(f"{where}: no rule checks the command {' '.join(words)!r}; add one to {__file__}")


@pytest.fixture(scope="module")
def checked() -> tuple[dict, dict]:
    """Every shown command checked: (rule → count, {(config files, profile): targets})."""
    rules: dict[str, int] = {}
    plans: dict[tuple[tuple[str, ...], str], set[str]] = {}
    for command in all_commands():
        for words in segments(command):
            rule = check(words, command.where, plans)
            rules[rule] = rules.get(rule, 0) + 1
    return rules, plans


def test_every_shown_command_is_checked_by_a_rule(checked):
    rules, plans = checked
    # the commands this documentation is about are there, and went through the real parsers
    assert rules["snakemake"] >= 20 and rules["cellseg"] >= 8 and rules["python script"] >= 5
    assert ((), "") in plans and ((), "config/profiles/longleaf") in plans


def test_the_segmenter_sees_what_a_shell_would():
    line = Command("x:1", "bash .ci/install-slurm.sh && bash scripts/env.sh pytest  # both", False)
    assert segments(line) == [["bash", ".ci/install-slurm.sh"], ["pytest"]]
    table = Command("x:2", "snakemake --rulegraph | dot -Tsvg > results/rulegraph.svg", True)
    assert segments(table) == [["snakemake", "--rulegraph"], ["dot", "-Tsvg"]]
    optional = Command("x:3", "cellseg make-demo-data --out DIR [--size small|default|large]", True)
    assert segments(optional) == [["cellseg", "make-demo-data", "--out", "DIR", "--size", "small"]]


def test_a_wrong_command_would_fail():
    # the rules are not vacuous: each of these is rejected
    for words in (
        ["snakemake", "--no-such-flag"],
        ["snakemake", "--profile", "config/profiles/nowhere"],
        ["cellseg", "evaluate", "--no-such-flag", "x"],
        ["cellseg", "no-such-command"],
        ["pytest", "tests/no_such_dir"],
        ["pytest", "-m", "no_such_marker"],
        ["frobnicate", "--now"],
    ):
        with pytest.raises((AssertionError, pytest.fail.Exception)):
            check(words, "x:1", {})


@pytest.fixture(scope="module")
def clone(tmp_path_factory) -> Path:
    """A fresh clone of this working tree; ``cellmap/`` an empty data root for the seed
    preset's dry runs (a dry run reads no data)."""
    root = make_clone(tmp_path_factory.mktemp("clone") / "cellseg")
    (root / "cellmap").mkdir()
    # the real-EM preset imports ../shared/real_em, which sits beside a clone (CI's too)
    if (REPO.parent / "shared").is_dir():
        (root.parent / "shared").symlink_to(REPO.parent / "shared")
    return root


def test_shown_snakemake_runs_plan_from_a_clone(checked, clone):
    """One real dry run per (config files, profile) combination the docs show, with the
    union of the targets they name, from the root of a fresh clone, as a reader runs it."""
    _, plans = checked
    data_root = clone / "cellmap"
    # 6 before the strong-baselines presets (Longleaf and demo) added two, the real-EM preset
    # one, the TTA study two (demo and Longleaf) and the serial-section benchmark one
    assert len(plans) <= 12, f"{len(plans)} dry runs: keep the shown combinations few"
    for (configfiles, profile), targets in sorted(plans.items()):
        # targets first: `--configfile` and `--config` take every word after them
        arguments = [*sorted(targets), "-n"]
        if profile:
            arguments += ["--profile", profile]
        else:
            arguments += ["--cores", "1"]
        if configfiles:
            arguments += ["--configfile", *configfiles]
        layers = " ".join(configfiles)
        if "l40s_comparison" in layers or (profile.endswith("longleaf") and not configfiles):
            # the seed preset reads the reader's CellMap data: the docs say to set data.roots
            arguments += ["--config", f"data={{'roots': ['{data_root}']}}"]
        run_in_clone(clone, *arguments)


def test_readme_rule_graph_is_the_workflow(clone):
    dot = run_in_clone(clone, "--rulegraph", "--cores", "1").stdout
    names = dict(re.findall(r'^\s*(\d+)\[label = "(\w+)"', dot, re.M))
    actual = {(names[a], names[b]) for a, b in re.findall(r"^\s*(\d+) -> (\d+)", dot, re.M)}
    assert len(actual) >= 10
    # docs/architecture.md draws the package's layers and data flow, not the rule graph
    graphs = [
        (path, block)
        for path in documents()
        if path != REPO / "docs" / "architecture.md"
        for block in fenced_blocks(path)
        if block.language == "mermaid"
    ]
    assert any(path == README for path, _ in graphs)
    for path, block in graphs:
        shown = set()
        for line in block.lines[1:]:
            edge = re.fullmatch(r"\s*(\w+)\s*-->\s*(\w+)\s*", line)
            assert edge, f"{path.relative_to(REPO)}:{block.line}: not an edge: {line!r}"
            shown.add(edge.groups())
        assert block.lines[0].startswith("flowchart")
        assert shown == actual, f"{path.relative_to(REPO)}:{block.line}: {shown ^ actual}"
