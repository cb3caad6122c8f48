"""The package's architecture (DESIGN §6), checked on the import graph of ``src/apitokens``.

The graph is read from the source with :mod:`ast`, so an import counts wherever
it is written: at the top of a module, under ``if TYPE_CHECKING:``, inside a
function (a "lazy" import), in a ``try``. A dependency that only the type
checker or a later call follows is still a dependency of the design. (An
import by a name computed at run time, ``importlib.import_module(name)``, is
not seen; the package has none.)

Nodes are the modules of the package, named as Python names them (a package's
``__init__.py`` is the package: ``apitokens.storage``). Edges, for a module
``m``:

- ``import a.b.c`` is an edge ``m -> a.b.c``;
- ``from p import n`` (``p`` absolute or relative, resolved against ``m``'s
  package) is an edge ``m -> p.n`` when ``p.n`` is a module, else ``m -> p``:
  the names come from ``p``'s ``__init__``.

Packages and their submodules: importing ``p.m`` makes Python run
``p/__init__.py`` first, but that implicit step is *not* an edge. So a package
whose ``__init__`` imports its own submodules to re-export their names, and
submodules that import one another, are not a cycle. A submodule that takes a
name from its package (``from . import X``, ``from p import X``, ``import p``)
has an explicit edge to ``p``; if ``p``'s ``__init__`` imports that submodule,
directly or not, the cycle is reported: it is the one where Python hands out a
half-initialised package. The same holds for any module reaching a package's
``__init__``: ``from apitokens import X`` inside the package depends on
everything ``apitokens/__init__.py`` imports.

The layers (DESIGN §6):

- the facade: ``apitokens._api`` (``ApiTokens``, the one object an application
  creates) and ``apitokens/__init__.py``, which re-exports it. It wires a store
  to the core and hands the core's request flow to the driver its ``wsgi()`` or
  ``asgi()`` asks for, so it alone sits above ``wsgi`` and ``asgi``: they
  import the core, never the facade (that was the ``_api`` <-> adapter circle);
- the core: the private modules at the top level (``apitokens._auth``,
  ``apitokens._flow``, ...);
- ``apitokens.rules`` and ``apitokens.storage``: the grammar and the backends,
  below the core's request flow;
- the adapters: ``wsgi``, ``asgi``, ``starlette``, ``django``, ``drf``, ``web``,
  ``cli`` (each a module or a package), and ``apitokens.__main__``, which runs
  the command;
- ``apitokens.testing``: the shipped storage contract suite, which needs
  pytest; nothing below the adapters may import it.

The rules: no import cycle anywhere; the core, rules and storage import no
adapter (nor ``testing``, nor the facade); rules and storage do not depend on an adapter or on
``apitokens._api`` at all, not even through another module; and no module
imports a third-party package outside the package's dependencies, except where
an extra is declared for that module.
"""

from __future__ import annotations

import ast
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import apitokens

SOURCE = Path(apitokens.__file__).parent
PACKAGE = "apitokens"

ADAPTERS = (
    "apitokens.__main__",
    "apitokens.wsgi",
    "apitokens.asgi",
    "apitokens.starlette",
    "apitokens.django",
    "apitokens.drf",
    "apitokens.web",
    "apitokens.cli",
)
TESTING = "apitokens.testing"
RULES = "apitokens.rules"
STORAGE = "apitokens.storage"
API = FACADE = "apitokens._api"

DEPENDENCIES = frozenset({"argon2", "regex", "typing_extensions"})
"""The third-party packages of ``pip install apitokens`` (their import names)."""
EXTRAS = {
    "apitokens.starlette": frozenset({"starlette"}),
    "apitokens.testing": frozenset({"pytest", "hypothesis"}),
    # DESIGN §8 and §9: the extras these modules are planned with.
    "apitokens.postgres": frozenset({"psycopg", "psycopg_pool"}),
    "apitokens.django": frozenset({"django", "asgiref"}),  # asgiref: installed by Django
    "apitokens.drf": frozenset({"django", "asgiref", "rest_framework"}),
    "apitokens.web": frozenset({"jinja2"}),
}
"""Modules (or packages) that may import more than the dependencies, and what."""


@dataclass(frozen=True)
class Edge:
    """One import statement: ``source`` imports ``target`` at ``line``."""

    source: str
    target: str
    path: Path
    line: int
    kind: str  # "top level", "TYPE_CHECKING", "in def <name>"

    def __str__(self) -> str:
        where = self.path.relative_to(SOURCE.parent)
        return f"{self.source} -> {self.target}  ({where}:{self.line}, {self.kind})"


@dataclass(frozen=True)
class Module:
    """One module of the package, parsed."""

    name: str
    path: Path
    tree: ast.Module

    @property
    def package(self) -> str:
        """The package relative imports start from."""
        if self.path.name == "__init__.py":
            return self.name
        return self.name.rpartition(".")[0]


def _module_name(path: Path) -> str:
    parts = path.relative_to(SOURCE.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Module]:
    modules = {}
    for path in sorted(SOURCE.rglob("*.py")):
        name = _module_name(path)
        modules[name] = Module(name, path, ast.parse(path.read_text("utf-8"), str(path)))
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    if isinstance(test, ast.Name):
        return test.id == "TYPE_CHECKING"
    return isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"


def _imports(node: ast.AST, kind: str = "top level") -> Iterator[tuple[ast.stmt, str]]:
    """Every ``import`` / ``from ... import`` under ``node``, with where it runs."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.Import | ast.ImportFrom):
            yield child, kind
        elif isinstance(child, ast.If) and _is_type_checking(child.test):
            for statement in child.body:
                yield from _imports(ast.Module(body=[statement], type_ignores=[]), "TYPE_CHECKING")
            for statement in child.orelse:
                yield from _imports(ast.Module(body=[statement], type_ignores=[]), kind)
        elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
            yield from _imports(child, f"in def {child.name}")
        else:
            yield from _imports(child, kind)


def _absolute(module: Module, statement: ast.ImportFrom) -> str:
    if statement.level == 0:
        return statement.module or ""
    base = module.package.split(".")
    if statement.level > 1:
        base = base[: -(statement.level - 1)]
    return ".".join([*base, statement.module] if statement.module else base)


def _targets(module: Module, statement: ast.stmt, known: Iterable[str]) -> Iterator[str]:
    """The modules ``statement`` imports (any package, not only this one)."""
    if isinstance(statement, ast.Import):
        for alias in statement.names:
            yield alias.name
    elif isinstance(statement, ast.ImportFrom):
        source = _absolute(module, statement)
        for alias in statement.names:
            submodule = f"{source}.{alias.name}"
            yield submodule if submodule in known else source


def _graph(modules: dict[str, Module]) -> dict[str, list[Edge]]:
    graph: dict[str, list[Edge]] = {name: [] for name in modules}
    for module in modules.values():
        seen = set()
        for statement, kind in _imports(module.tree):
            for target in _targets(module, statement, modules):
                if target in modules and (target, statement.lineno) not in seen:
                    seen.add((target, statement.lineno))
                    graph[module.name].append(
                        Edge(module.name, target, module.path, statement.lineno, kind)
                    )
    return graph


MODULES = _modules()
GRAPH = _graph(MODULES)


def _within(name: str, prefixes: Iterable[str]) -> bool:
    return any(name == prefix or name.startswith(prefix + ".") for prefix in prefixes)


def _is_core(name: str) -> bool:
    if name in (PACKAGE, FACADE):
        return False  # above the drivers: see the layers in this module's docstring
    parts = name.split(".")
    return len(parts) == 2 and parts[1].startswith("_") and name not in ADAPTERS


def _strongly_connected(graph: dict[str, list[Edge]]) -> list[list[str]]:
    """Tarjan's strongly connected components, each sorted, in a stable order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for edge in graph[node]:
            if edge.target not in index:
                visit(edge.target)
                low[node] = min(low[node], low[edge.target])
            elif edge.target in on_stack:
                low[node] = min(low[node], index[edge.target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            components.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(components)


def _shortest_path(
    graph: dict[str, list[Edge]], start: str, goal: str, allowed: set[str] | None = None
) -> list[Edge] | None:
    """The fewest imports leading from ``start`` to ``goal`` (through ``allowed`` only)."""
    previous: dict[str, Edge | None] = {start: None}
    queue = deque([start])
    while queue and goal not in previous:
        for edge in graph[queue.popleft()]:
            if edge.target not in previous and (allowed is None or edge.target in allowed):
                previous[edge.target] = edge
                queue.append(edge.target)
    if goal not in previous:
        return None
    path: list[Edge] = []
    while (step := previous[goal]) is not None:
        path.insert(0, step)
        goal = step.source
    return path


def _cycles(graph: dict[str, list[Edge]]) -> list[list[Edge]]:
    """For every import inside a cycle, the shortest cycle through it; each cycle once."""
    found: dict[tuple[str, ...], list[Edge]] = {}
    for component in _strongly_connected(graph):
        members = set(component)
        for node in component:
            for edge in graph[node]:
                if edge.target not in members:
                    continue
                back = _shortest_path(graph, edge.target, node, members)
                assert back is not None  # one component: there is a way back
                cycle = [edge, *back]
                names = [step.source for step in cycle]
                turn = names.index(min(names))
                key = tuple(names[turn:] + names[:turn])
                found.setdefault(key, cycle[turn:] + cycle[:turn])
    return [found[key] for key in sorted(found)]


def _describe(path: list[Edge]) -> str:
    """``a -> b -> a``, then every import statement that makes each step."""
    lines = [" -> ".join([path[0].source, *(edge.target for edge in path)])]
    for step in path:
        lines += [f"    {edge}" for edge in GRAPH[step.source] if edge.target == step.target]
    return "\n".join(lines)


def test_the_graph_sees_every_kind_of_import() -> None:
    # The checks below are only as good as the graph: it must hold the top-level,
    # lazy and TYPE_CHECKING imports of a known module, and resolve relative ones.
    assert {PACKAGE, STORAGE, f"{STORAGE}.sqlite", "apitokens.cli"} <= set(GRAPH)
    targets = {edge.target for edge in GRAPH[PACKAGE]}
    assert {API, "apitokens._errors", STORAGE} <= targets
    assert {edge.target for edge in GRAPH[STORAGE]} >= {f"{STORAGE}.sqlite", f"{STORAGE}.memory"}
    module = Module(
        "apitokens.x.y",
        SOURCE / "x" / "y.py",
        ast.parse(
            "from typing import TYPE_CHECKING\n"
            "import apitokens._a\n"
            "from . import z\n"
            "from .. import _b, Name\n"
            "if TYPE_CHECKING:\n"
            "    from .._c import C\n"
            "else:\n"
            "    import apitokens._d\n"
            "def f():\n"
            "    from apitokens import _e\n"
        ),
    )
    known = {"apitokens", "apitokens._a", "apitokens._b", "apitokens._c", "apitokens._d"}
    known |= {"apitokens._e", "apitokens.x", "apitokens.x.z"}
    found = {
        (target, kind)
        for statement, kind in _imports(module.tree)
        for target in _targets(module, statement, known)
    }
    assert found == {
        ("typing", "top level"),
        ("apitokens._a", "top level"),
        ("apitokens.x.z", "top level"),
        ("apitokens._b", "top level"),
        ("apitokens", "top level"),
        ("apitokens._c", "TYPE_CHECKING"),
        ("apitokens._d", "top level"),
        ("apitokens._e", "in def f"),
    }


def test_the_cycle_finder_finds_a_cycle_through_a_lazy_import() -> None:
    def edge(source: str, target: str) -> Edge:
        return Edge(source, target, SOURCE / "x.py", 1, "top level")

    graph = {
        "a": [edge("a", "b")],
        "b": [edge("b", "c"), edge("b", "a")],
        "c": [edge("c", "a")],
        "d": [edge("d", "a")],
        "e": [edge("e", "e")],
    }
    cycles = [[step.source for step in cycle] for cycle in _cycles(graph)]
    assert cycles == [["a", "b"], ["a", "b", "c"], ["e"]]


def test_no_import_cycle() -> None:
    cycles = _cycles(GRAPH)
    assert not cycles, f"{len(cycles)} import cycle(s) in src/apitokens:\n\n" + "\n\n".join(
        _describe(cycle) for cycle in cycles
    )


def _forbidden(sources: Iterable[str], targets: Iterable[str]) -> list[Edge]:
    targets = tuple(targets)
    return [
        edge
        for source in sorted(sources)
        for edge in GRAPH[source]
        if _within(edge.target, targets)
    ]


def test_the_core_rules_and_storage_import_no_adapter() -> None:
    inner = [name for name in GRAPH if _is_core(name) or _within(name, (RULES, STORAGE))]
    assert "apitokens._flow" in inner and f"{STORAGE}.sqlite" in inner
    assert "apitokens.wsgi" not in inner and FACADE not in inner and PACKAGE not in inner
    imports = _forbidden(inner, (*ADAPTERS, TESTING, FACADE))
    # The package itself (its __init__ re-exports the facade): an exact target, not a prefix.
    imports += [
        edge for source in sorted(inner) for edge in GRAPH[source] if edge.target == PACKAGE
    ]
    assert not imports, (
        "the core, rules and storage import an adapter or the facade:\n"
        + "\n".join(f"    {edge}" for edge in imports)
    )


@pytest.mark.parametrize("layer", [RULES, STORAGE])
def test_rules_and_storage_depend_on_no_adapter_and_not_on_the_api(layer: str) -> None:
    assert layer in GRAPH, f"no package {layer}: DESIGN §6 puts the rules and storage layers there"
    members = [name for name in sorted(GRAPH) if _within(name, (layer,))]
    bad = [name for name in GRAPH if _within(name, (*ADAPTERS, TESTING, API))]
    paths = []
    for source in members:
        for target in bad:
            path = _shortest_path(GRAPH, source, target)
            if path is not None:
                paths.append(path)
                break
    assert not paths, f"{layer} depends on an adapter or on {API}:\n\n" + "\n\n".join(
        _describe(path) for path in paths
    )


def _third_party(module: Module) -> Iterator[tuple[str, int]]:
    for statement, _kind in _imports(module.tree):
        if isinstance(statement, ast.ImportFrom) and statement.level > 0:
            continue
        for target in _targets(module, statement, ()):
            top = target.partition(".")[0]
            if top != PACKAGE and top not in sys.stdlib_module_names:
                yield top, statement.lineno


def test_the_third_party_imports_are_found() -> None:
    module = Module(
        "apitokens._x",
        SOURCE / "_x.py",
        ast.parse(
            "import os.path\nimport regex\nfrom . import _y\nfrom apitokens import Token\n"
            "def f():\n    from starlette.types import Scope\n"
        ),
    )
    assert sorted(_third_party(module)) == [("regex", 2), ("starlette", 6)]
    assert "starlette" in {top for top, _line in _third_party(MODULES["apitokens.starlette"])}


def test_modules_import_only_the_declared_third_party_packages() -> None:
    wrong = []
    for module in MODULES.values():
        allowed = DEPENDENCIES.union(
            *(extra for prefix, extra in EXTRAS.items() if _within(module.name, (prefix,)))
        )
        wrong += [
            f"    {module.name} imports {top} ({module.path.relative_to(SOURCE.parent)}:{line})"
            for top, line in _third_party(module)
            if top not in allowed
        ]
    assert not wrong, "third-party imports outside the declared dependencies:\n" + "\n".join(wrong)
