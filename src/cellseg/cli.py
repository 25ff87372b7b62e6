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

from cellseg import __version__
from cellseg.errors import CellsegError

SUBCOMMAND_MODULES: tuple[str, ...] = (
    "cellseg.data.demo",
    "cellseg.data.datasplit",
    "cellseg.data.frequencies",
    "cellseg.training.command",
    "cellseg.models.planning",
    "cellseg.evaluation",
    "cellseg.reporting",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cellseg", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"cellseg {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CellsegError as error:
        print(f"cellseg {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
