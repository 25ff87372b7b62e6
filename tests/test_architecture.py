"""The package's layout stays as docs/architecture.md draws it: every module in a layer, no
import up the layers, no import cycle (imports inside functions count too), and no folder of
``src/cellseg/`` holding modules of two layers."""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "cellseg"
ARCHITECTURE = REPO / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(path): path for path in PACKAGE.rglob("*.py")}

FOLDER_EXCEPTIONS: dict[str, str] = {}
"""Modules the folder rule leaves out of their folder's layers, each with the reason (none: the
configuration's modules have their own folder, ``config/``, since issue 36);
:func:`test_every_folder_exception_is_still_needed` fails for an entry no longer needed."""


def owning_module(name: str) -> str | None:
    """The module of ``src/cellseg`` that an imported name lives in (``cellseg.x.y`` -> ``cellseg.x``
    when ``y`` is a name inside it)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imports(source: str, module: str) -> set[str]:
    """The cellseg modules ``module``'s source imports, anywhere in the file."""
    found: set[str] = set()
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from .x import y
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            if base == "cellseg" or base.startswith("cellseg."):
                for alias in node.names:
                    found.add(owning_module(f"{base}.{alias.name}") or owning_module(base))
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == "cellseg" or alias.name.startswith("cellseg."):
                    found.add(owning_module(alias.name))
    found.discard(None)
    found.discard(module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {name: imports(path.read_text(), name) for name, path in MODULES.items()}


def documented_layers(text: str) -> list[tuple[str, list[str]]]:
    """The rows of the layer table: ``[(layer name, [module patterns])]``, lowest first."""
    rows = re.findall(r"^\| (\d+ [^|]+?) \| (.+?) \|$", text, flags=re.MULTILINE)
    return [(name, re.findall(r"`([^`]+)`", modules)) for name, modules in rows]


def layer_of(layers: list[tuple[str, list[str]]]) -> dict[str, int]:
    """Each module's layer index; an exact name wins over a ``pkg.*`` pattern."""
    exact = {m: i for i, (_, ms) in enumerate(layers) for m in ms if not m.endswith(".*")}
    patterns = [(m[:-2], i) for i, (_, ms) in enumerate(layers) for m in ms if m.endswith(".*")]
    result = {}
    for module in MODULES:
        if module in exact:
            result[module] = exact[module]
            continue
        matches = [(len(p), i) for p, i in patterns if module.startswith(p + ".")]
        if matches:
            result[module] = max(matches)[1]
    return result


def folder_of(module: str) -> str:
    """The package (folder) holding ``module``'s file: ``cellseg.data`` for ``cellseg.data.store``
    and for ``cellseg.data`` itself (its ``__init__.py``)."""
    return module_name(MODULES[module].parent / "__init__.py")


def mixed_folders(
    placed: dict[str, int], exceptions: Mapping[str, str] = FOLDER_EXCEPTIONS
) -> dict[str, dict[int, list[str]]]:
    """The folders below ``src/cellseg/`` whose modules (their sub-folders' included) lie in more
    than one layer: ``{folder: {layer index: [modules]}}``. ``exceptions`` are left out; the
    top folder, ``cellseg`` itself, holds every layer by design and is not checked."""
    by_folder: dict[str, dict[int, list[str]]] = {}
    for module in sorted(placed):
        if module in exceptions:
            continue
        folder = folder_of(module) if module in MODULES else module.rpartition(".")[0]
        while folder != PACKAGE.name:
            by_folder.setdefault(folder, {}).setdefault(placed[module], []).append(module)
            folder = folder.rpartition(".")[0]
    return {folder: layers for folder, layers in by_folder.items() if len(layers) > 1}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


@pytest.fixture(scope="module")
def layers() -> list[tuple[str, list[str]]]:
    table = documented_layers(ARCHITECTURE.read_text())
    assert len(table) >= 5, "docs/architecture.md lost its layer table"
    return table


def test_every_module_has_a_layer(layers):
    placed = layer_of(layers)
    missing = sorted(set(MODULES) - set(placed))
    assert not missing, f"add these modules to the layer table of docs/architecture.md: {missing}"
    named = {m for _, ms in layers for m in ms if not m.endswith(".*")}
    assert not named - set(MODULES), (
        f"the table names modules that do not exist: {named - set(MODULES)}"
    )


def test_no_import_runs_up_the_layers(layers):
    placed = layer_of(layers)
    upward = [
        f"{module} (layer {layers[placed[module]][0]}) imports {target} "
        f"(layer {layers[placed[target]][0]})"
        for module, targets in import_graph().items()
        for target in sorted(targets)
        if placed[target] > placed[module]
    ]
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_would_catch_a_cycle_and_an_upward_import(layers):
    graph = import_graph()
    assert cycles(graph | {"cellseg.errors": {"cellseg.cli"}}) != []
    placed = layer_of(layers)
    assert placed["cellseg.errors"] < placed["cellseg.cli"]  # errors importing cli would be upward
    # relative and lazy imports are seen
    source = (
        "def f():\n    from ..errors import CellsegError\n    from cellseg.io import atomic_path\n"
    )
    assert imports(source, "cellseg.reporting.summary") == {"cellseg.errors", "cellseg.io"}


def test_no_folder_spans_two_layers(layers):
    mixed = mixed_folders(layer_of(layers))
    lines = [
        f"{folder}/ holds "
        + "; ".join(f"layer {layers[i][0]}: {', '.join(ms)}" for i, ms in sorted(by_layer.items()))
        for folder, by_layer in mixed.items()
    ]
    assert not lines, (
        "a folder of src/cellseg/ is one layer; move these modules so that each folder's are "
        "of one layer:\n" + "\n".join(lines)
    )


def test_every_folder_exception_is_still_needed(layers):
    placed = layer_of(layers)
    stale = [
        module
        for module in FOLDER_EXCEPTIONS
        if module not in placed
        or not mixed_folders(placed, {m: r for m, r in FOLDER_EXCEPTIONS.items() if m != module})
    ]
    assert not stale, f"remove these from FOLDER_EXCEPTIONS, their folder is one layer: {stale}"


def test_the_folder_check_would_catch_a_mixed_folder(layers):
    placed = layer_of(layers)
    # a layer-2 module back in the layer-4 training/ folder (where settings lived before config/)
    moved_back = placed | {"cellseg.training.settings": placed["cellseg.config.settings"]}
    assert set(mixed_folders(moved_back, {})) == {"cellseg.training"}
    assert mixed_folders(moved_back, {"cellseg.training.settings": "why"}) == {}
    # a module of another layer in a folder (a sub-folder's count for the folders above it)
    assert placed["cellseg.cli"] != placed["cellseg.data.store"]
    for intruder in ("cellseg.data.console", "cellseg.data.demo.console"):
        mixed = mixed_folders(placed | {intruder: placed["cellseg.cli"]})
        assert "cellseg.data" in mixed
        assert intruder in mixed["cellseg.data"][placed["cellseg.cli"]]
    # modules straight under src/cellseg/ span every layer, and that folder is not checked
    assert mixed_folders(placed) == {}
