"""The source tree keeps the shape docs/architecture.md draws.

Read from the files' syntax trees (nothing is imported): every ``import`` and
``from ... import`` counts, inside functions and ``TYPE_CHECKING`` blocks too,
because a lazy import is still a dependency.

- at most 8 modules directly in ``src/fluidity/``, packages at most 2 deep;
- no module over 400 lines;
- imports point down: cli/quickstart -> agent/server -> transport -> protocol,
  with doctor/ and service/ in the top layer beside cli (and imported by cli alone),
  with config, pki, observe and errors usable from any layer but importing
  none of agent/, server/, transport/;
- ``protocol/`` does no I/O: no asyncio, socket or ssl, nothing of fluidity
  outside itself and ``errors``;
- no import cycle between modules.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "fluidity"

MAX_TOP_LEVEL_MODULES = 8
MAX_PACKAGE_DEPTH = 2
MAX_MODULE_LINES = 400

# What each part of the tree may import from fluidity (besides itself).
# The top-level modules (cli, quickstart, runtime) may import anything.
SHARED = {"errors", "config", "pki", "observe"}
MAY_IMPORT: dict[str, set[str]] = {
    "protocol": {"errors"},
    "errors": set(),
    "config": {"errors", "protocol", "pki", "observe", "lifecycle"},
    "pki": {"errors", "config", "observe"},
    "observe": {"errors", "config", "pki", "protocol"},
    "lifecycle": {"errors", "config", "observe"},
    "transport": SHARED | {"protocol"},
    "agent": SHARED | {"protocol", "transport", "lifecycle"},
    "server": SHARED | {"protocol", "transport", "lifecycle"},
    # top layer, beside cli: they may use every layer below; only cli imports them
    "doctor": SHARED | {"protocol", "transport", "agent", "server", "lifecycle"},
    "service": SHARED,
}
TOP_LAYER_PACKAGES = {"doctor", "service"}
NO_IO_IN_PROTOCOL = {"asyncio", "socket", "ssl", "selectors", "uvloop", "subprocess"}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module name, e.g. fluidity.agent.keeper
    imported: str  # dotted module name as written (absolute)
    line: int


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> Iterator[Path]:
    yield from sorted(PACKAGE.rglob("*.py"))


def imports_of(path: Path) -> Iterator[Import]:
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Import(name, alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base]) if base else ".".join(anchor)
            yield Import(name, base, node.lineno)
            # ``from fluidity.pki import certs`` imports the module fluidity.pki.certs
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                if module_exists(candidate):
                    yield Import(name, candidate, node.lineno)


def module_exists(dotted: str) -> bool:
    path = SRC.joinpath(*dotted.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def part_of(dotted: str) -> str:
    """The layer a fluidity module belongs to: its package, or its own name at the top."""
    return dotted.split(".")[1] if dotted.count(".") >= 1 else ""


def fluidity_imports() -> list[Import]:
    return [
        imp
        for path in modules()
        for imp in imports_of(path)
        if imp.imported.startswith("fluidity.") and module_exists(imp.imported)
    ]


def test_few_modules_directly_in_the_package() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= MAX_TOP_LEVEL_MODULES, top


def test_packages_are_at_most_two_levels_deep() -> None:
    deep = [
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if len(p.relative_to(PACKAGE).parts) > MAX_PACKAGE_DEPTH
    ]
    assert deep == []


def test_every_package_has_an_init() -> None:
    missing = [
        str(d.relative_to(PACKAGE))
        for d in PACKAGE.rglob("*")
        if d.is_dir() and d.name != "__pycache__" and not (d / "__init__.py").is_file()
    ]
    assert missing == []


def test_no_module_is_over_400_lines() -> None:
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in modules()
        if (n := len(p.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert long == {}


def test_imports_point_down() -> None:
    upward = [
        f"{imp.importer}:{imp.line} imports {imp.imported}"
        for imp in fluidity_imports()
        if (src := part_of(imp.importer)) in MAY_IMPORT
        and (dst := part_of(imp.imported)) != src
        and dst not in MAY_IMPORT[src]
    ]
    assert upward == []


def test_only_the_cli_imports_the_top_layer_packages() -> None:
    wrong = [
        f"{imp.importer}:{imp.line} imports {imp.imported}"
        for imp in fluidity_imports()
        if (dst := part_of(imp.imported)) in TOP_LAYER_PACKAGES
        and part_of(imp.importer) != dst
        and imp.importer != "fluidity.cli"
    ]
    assert wrong == []


def test_every_package_has_a_rule() -> None:
    packages = {p.parent.name for p in PACKAGE.glob("*/__init__.py")}
    assert packages <= set(MAY_IMPORT), packages - set(MAY_IMPORT)


@pytest.mark.parametrize("path", sorted((PACKAGE / "protocol").glob("*.py")), ids=lambda p: p.name)
def test_protocol_does_no_io(path: Path) -> None:
    io = [
        f"{imp.line}: {imp.imported}"
        for imp in imports_of(path)
        if imp.imported.split(".")[0] in NO_IO_IN_PROTOCOL
    ]
    assert io == []


def test_no_import_cycles() -> None:
    graph: dict[str, set[str]] = {module_name(p): set() for p in modules()}
    for imp in fluidity_imports():
        # a package's __init__ is what ``import fluidity.x.y`` runs first; an edge to
        # one's own package __init__ is no dependency of substance
        if imp.importer.startswith(imp.imported + "."):
            continue
        graph[imp.importer].add(imp.imported)
    assert find_cycles(graph) == []


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component larger than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []


def test_the_architecture_map_names_every_module() -> None:
    """docs/architecture.md is the contributor's map: a new module gets its line there."""
    text = (SRC.parent / "docs" / "architecture.md").read_text()
    missing = [
        str(p.relative_to(PACKAGE))
        for p in modules()
        if p.name != "__init__.py"
        and f"`{p.name}`" not in text
        and f"{p.parent.name}/{p.name}" not in text
    ]
    assert missing == []
