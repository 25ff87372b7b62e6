"""The ``cellseg`` command line: one sub-command per workflow step.

Each sub-command lives next to the code it runs; the module exposes ``add_parser(subparsers)``
which registers the sub-command and sets ``func`` to a callable taking the parsed namespace
and returning an exit code. Modules are imported lazily by name so that ``cellseg --help``
stays fast and a sub-command only pays for the libraries it needs.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from pathlib import Path

from cellseg import __version__
from cellseg.errors import INTERRUPTED_STATUS, interrupted_line, keep_interrupts, user_error

COMMANDS: dict[str, tuple[str, str]] = {
    "make-demo-data": ("cellseg.data.demo", "write synthetic FIB-SEM data in the CellMap layout"),
    "import": (
        "cellseg.data.importer",
        "import your own EM and labels into the CellMap layout",
    ),
    "datasplit": (
        "cellseg.data.datasplit",
        "split the crops of CellMap data roots into train/validate/test",
    ),
    "class-frequencies": (
        "cellseg.data.frequencies",
        "count per-class annotated/positive voxels over training crops",
    ),
    "train": ("cellseg.training.command", "train one model (resumes automatically)"),
    "preflight": (
        "cellseg.training.preflight",
        "measure one run's memory, speed and loader on this node: go / no-go",
    ),
    "plan-batch": ("cellseg.models.planning", "estimate the largest batch that fits a GPU"),
    "evaluate": ("cellseg.evaluation", "evaluate a trained model on held-out crops"),
    "summary": ("cellseg.reporting", "compare evaluated models: summary table and figures"),
    "predict": ("cellseg.prediction", "predict a whole EM volume into an OME-Zarr store"),
    "view": ("cellseg.viewer", "show a prediction store and its EM in neuroglancer"),
}
"""Sub-command → (module defining it, one-line help)."""


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The parser; only ``command``'s module is imported (``None``: every module)."""
    parser = argparse.ArgumentParser(prog="cellseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cellseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if command is None or name == command:
            importlib.import_module(module_name).add_parser(subparsers)
        else:
            subparsers.add_parser(name, help=help_text)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # import only the chosen sub-command's module: `cellseg class-frequencies` must not pay
    # for torch, timm and MONAI (hundreds of MB) that only training and evaluation need
    command = next((a for a in argv if not a.startswith("-")), None)
    args = build_parser(command if command in COMMANDS else None).parse_args(argv)
    keep_interrupts()
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        # Ctrl-C (SIGINT) is the user's stop, not a bug: say so and how to go on, no traceback
        print(f"cellseg {args.command}: {interrupted_line(args.command)}", file=sys.stderr)
        return INTERRUPTED_STATUS
    except Exception as error:
        # bad input (CellsegError) or a full disk: one line, no traceback; anything else is a
        # bug whose traceback is wanted
        message = user_error(error)
        if message is None:
            raise
        print(f"cellseg {args.command}: error: {message}", file=sys.stderr)
        return 2


def check_snakemake_configfiles(argv: Sequence[str]) -> int:
    """Read each ``--configfile`` of a ``snakemake`` command line (``argv``: its arguments) the
    way the workflow reads its config layers (:func:`cellseg.config.read_layer`), before
    Snakemake does: Snakemake loads them before any workflow code runs and says only "Config
    file is not valid JSON or YAML" for a YAML mistake such as a line indented with a tab.
    ``scripts/env.sh`` calls it before it starts snakemake.

    Returns:
        0, or 1 after one ``cellseg: config error: FILE:LINE: …`` line per bad file (a path
        that is no file is left to Snakemake's own "not found").
    """
    from cellseg.config.layers import read_layer
    from cellseg.errors import CellsegError

    # Snakemake's own options, one or more files each (a repeated option: all of them)
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--configfile", "--configfiles", nargs="+", action="extend", default=[])
    known, _ = parser.parse_known_args(list(argv))
    status = 0
    for path in known.configfile:
        try:
            if Path(path).is_file():
                read_layer(path)
        except CellsegError as error:
            print(f"cellseg: config error: {error}", file=sys.stderr)
            status = 1
    return status
