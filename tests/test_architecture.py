"""The package's layout stays as docs/architecture.md draws it: every module in a layer, no
import up the layers, no import cycle (imports inside functions count too)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "src" / "cellseg"
ARCHITECTURE = REPO / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {module_name(path): path for path in PACKAGE.rglob("*.py")}


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
