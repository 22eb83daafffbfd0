"""The sans-IO boundary: nothing under ``quicmesh.core`` may do I/O or read a clock.

Rule (checked on the source, by AST, for every module under ``src/quicmesh/core/``): a core
module must not import, directly or with ``from X import ...`` (at any depth in the module,
including inside functions and ``if TYPE_CHECKING:`` blocks), any of

    asyncio, socket, selectors, ssl, time, threading, qh3, aioquic, random

or a submodule of them (``asyncio.events``, ``qh3.quic``...). The single exception is
``from random import Random``, allowed so that a seeded ``Random`` instance can be named in
type hints; calling module-level ``random.*`` functions is therefore impossible, because the
module object itself cannot be imported. Time and randomness enter as arguments (``now``,
a seeded ``random.Random``).

A second check imports every core module in a fresh interpreter and asserts that asyncio, qh3
and aioquic are not loaded, which also catches an indirect import through another quicmesh
package (``quicmesh.bounded`` keeps its asyncio queue behind a lazy attribute for this reason).

The second half of the file checks the import graph of the whole package (see the comment above
``LAYERS``): no import cycle between files or between packages, every dependency pointing down
the layers (CLI -> runtime -> core -> bounded), and no file over 600 lines. Their failure messages
list the offending cycles (with the import line of every step), edges and files.
"""

from __future__ import annotations

import ast
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

import quicmesh.core

CORE_DIR = Path(quicmesh.core.__file__).resolve().parent
FORBIDDEN = frozenset({"asyncio", "socket", "selectors", "ssl", "time", "threading", "qh3", "aioquic", "random"})
ALLOWED_FROM = {"random": frozenset({"Random"})}
NOT_LOADED = ("asyncio", "qh3", "aioquic")


@dataclass(frozen=True)
class Violation:
    """One forbidden import: where it is and what it names."""

    path: str
    line: int
    module: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: imports {self.module}"


def _top(name: str) -> str:
    return name.split(".", 1)[0]


def _parse(source: str, filename: str) -> ast.Module:
    """``ast.parse``. CPython 3.11 can raise ``SystemError: AST constructor recursion depth
    mismatch`` (gh-106905) in a thread whose recursion counter an earlier test in the same process
    left off (the property tests change the recursion limit); a fresh thread has a fresh counter."""
    try:
        return ast.parse(source, filename=filename)
    except SystemError:
        with ThreadPoolExecutor(1) as pool:
            return pool.submit(ast.parse, source, filename).result()


def check_source(source: str, path: str = "<string>") -> list[Violation]:
    """Every forbidden import in ``source`` (a module's text)."""
    found: list[Violation] = []
    for node in ast.walk(_parse(source, path)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _top(alias.name) in FORBIDDEN:
                    found.append(Violation(path, node.lineno, alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level or node.module is None:
                continue  # relative import: stays inside quicmesh, covered by the subprocess check
            top = _top(node.module)
            if top not in FORBIDDEN:
                continue
            allowed = ALLOWED_FROM.get(node.module, frozenset())
            for alias in node.names:
                if alias.name not in allowed:
                    found.append(Violation(path, node.lineno, f"{node.module}.{alias.name}"))
        elif isinstance(node, ast.Call):
            # __import__("asyncio") / importlib.import_module("asyncio") with a literal name
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in ("__import__", "import_module") and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _top(arg.value) in FORBIDDEN:
                    found.append(Violation(path, node.lineno, arg.value))
    return found


def core_modules() -> list[Path]:
    """Every Python file of the core package."""
    return sorted(CORE_DIR.rglob("*.py"))


def _module_name(path: Path) -> str:
    rel = path.relative_to(CORE_DIR.parent.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_core_has_modules() -> None:
    names = {p.name for p in core_modules()}
    assert {"__init__.py", "wire.py", "messages.py"} <= names


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.name)
def test_core_module_imports_nothing_forbidden(path: Path) -> None:
    violations = check_source(path.read_text(encoding="utf-8"), str(path))
    assert not violations, "\n".join(map(str, violations))


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio\n",
        "import asyncio.events\n",
        "from asyncio import sleep\n",
        "from asyncio.events import get_event_loop\n",
        "import os, socket\n",
        "import selectors\n",
        "import ssl as _ssl\n",
        "from time import monotonic\n",
        "import threading\n",
        "import qh3\n",
        "from aioquic.quic.connection import QuicConnection\n",
        "import random\n",
        "from random import random\n",
        "from random import Random, choice\n",
        "def f():\n    import time\n    return time.monotonic()\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio\n",
        "mod = __import__('socket')\n",
        "import importlib\nmod = importlib.import_module('asyncio')\n",
    ],
)
def test_checker_flags_forbidden_imports(source: str) -> None:
    assert check_source(source), f"the checker missed: {source!r}"


@pytest.mark.parametrize(
    "source",
    [
        "from random import Random\n",
        "from __future__ import annotations\nimport heapq\nfrom dataclasses import dataclass\n",
        "from ..bounded import LruMap\nfrom .wire import Message\n",
        "import timeit_like_name\nimport randomness\n",  # names that merely start like a forbidden one
        "import msgspec\n",
    ],
)
def test_checker_accepts_allowed_imports(source: str) -> None:
    assert check_source(source) == []


def test_checker_reports_line_and_module() -> None:
    src = "from __future__ import annotations\n\nimport json\nfrom asyncio import Queue\n"
    assert check_source(src, "core/x.py") == [Violation("core/x.py", 4, "asyncio.Queue")]


def test_checker_catches_a_core_module_that_imports_asyncio(tmp_path: Path) -> None:
    """What the acceptance text asks: a core module importing asyncio makes the check fail."""
    bad = tmp_path / "machine.py"
    bad.write_text(Path(CORE_DIR / "effects.py").read_text(encoding="utf-8") + "\nimport asyncio\n")
    violations = check_source(bad.read_text(encoding="utf-8"), str(bad))
    assert [v.module for v in violations] == ["asyncio"]


_PROBE = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])  # the same quicmesh this test process imported
for name in sys.argv[2:]:
    importlib.import_module(name)
print(json.dumps(sorted(m for m in sys.modules)))
"""


def _loaded_after_import(modules: list[str]) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run(
        [sys.executable, "-I", "-c", _PROBE, str(CORE_DIR.parent.parent), *modules],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    return set(json.loads(out.stdout))


def test_importing_core_loads_no_io_library() -> None:
    modules = [_module_name(p) for p in core_modules()]
    assert "quicmesh.core.wire" in modules
    loaded = _loaded_after_import(modules)
    assert "quicmesh.core.wire" in loaded  # the probe did import them
    bad = sorted(m for m in loaded if _top(m) in NOT_LOADED)
    assert not bad, f"importing quicmesh.core loads {bad}"


def test_subprocess_probe_detects_asyncio() -> None:
    """The transitive probe can fail: importing the asyncio-side queue loads asyncio."""
    loaded = _loaded_after_import(["quicmesh.bounded.aio"])
    assert "asyncio" in loaded


# -- The import graph of src/quicmesh: no cycles, dependencies in one direction ---------------------
#
# Every module of ``src/quicmesh`` is parsed with ``ast`` (nothing is imported) and every import of a
# quicmesh module becomes an edge: ``import quicmesh.x``, ``from quicmesh.x import y``, relative
# imports (``from .x import y``, ``from . import x``, ``from ..x import y``), imports inside functions
# and under ``if TYPE_CHECKING:``, and ``importlib.import_module`` with a literal name (an f-string
# counts up to its first placeholder). ``from pkg import name`` is an edge to the submodule
# ``pkg.name`` when that is a module, else to ``pkg`` itself. Executing a parent package's
# ``__init__`` on the way to a submodule is not an edge (every module would otherwise depend on
# every ``__init__`` above it); a package's ``__init__`` is a module like any other and its own
# imports are edges.
#
# A *unit* is a direct child of ``quicmesh``: a subpackage (``quicmesh.core`` and everything below)
# or a top-level module (``quicmesh.errors``, ``quicmesh.cli`` as a module or a package); the
# package's own ``__init__`` (the public facade) is the unit ``quicmesh``.
#
# Checked: (a) no import cycle between files; (b) no cycle between units; (c) every edge between
# units goes down ``LAYERS``; (d) no file of src/quicmesh over ``MAX_LINES`` lines.

SRC_PACKAGE = CORE_DIR.parent
PACKAGE = "quicmesh"
MAX_LINES = 600

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"errors"}),  # exceptions: imported by everyone, imports nothing of quicmesh
    frozenset({"identity", "config", "bounded"}),  # node ids, the configuration schema, bounded containers
    frozenset({"core"}),  # the sans-IO state machines
    frozenset({"store", "observability"}),  # storage behind core's contract; metrics, health, sentinel
    frozenset({"runtime"}),  # the asyncio drivers: transport, node, client, gateway
    frozenset({"testing", PACKAGE}),  # simulator and harnesses; the public facade
    frozenset({"demo"}),  # the demo: three node processes driven through the process harness
    frozenset({"cli"}),  # the command line
    frozenset({"__main__"}),
)
"""The layers of src/quicmesh, lowest first: a unit may import units of lower layers only (the
README's "How it is built": CLI -> runtime -> core -> bounded). So core imports nothing of
runtime, store, observability, testing or cli; bounded imports nothing but errors; runtime imports
neither testing nor cli; and two units of one layer do not import each other."""


@dataclass(frozen=True)
class Edge:
    """One import of a quicmesh module by another: where it is written and what it names."""

    source: str
    target: str
    path: str
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target}  ({self.path}:{self.line})"


def module_files(src_package: Path, package: str = PACKAGE) -> dict[str, tuple[Path, bool]]:
    """Every module under ``src_package`` by dotted name, with its file and whether it is a package."""
    out: dict[str, tuple[Path, bool]] = {}
    for path in sorted(src_package.rglob("*.py")):
        parts = [package, *path.relative_to(src_package).with_suffix("").parts]
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        out[".".join(parts)] = (path, is_package)
    return out


def _relative_base(module: str, is_package: bool, level: int) -> str:
    """The package a relative import of ``level`` dots in ``module`` starts from."""
    parts = module.split(".")
    if not is_package:
        parts.pop()
    if level > 1:
        parts = parts[: len(parts) - (level - 1)]
    return ".".join(parts)


def _dynamic_name(node: ast.Call) -> str | None:
    """The literal module name of ``import_module("x")`` / ``__import__("x")`` (an f-string up to
    its first placeholder), else ``None``."""
    func = node.func
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    if name not in ("__import__", "import_module") or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    if isinstance(arg, ast.JoinedStr) and arg.values:
        first = arg.values[0]
        if isinstance(first, ast.Constant) and isinstance(first.value, str):
            return first.value.rstrip(".")
    return None


def import_edges(src_package: Path, package: str = PACKAGE) -> list[Edge]:
    """Every import of a ``package`` module by a module under ``src_package`` (see above)."""
    modules = module_files(src_package, package)

    def known(name: str) -> str | None:
        # the module itself, or the nearest enclosing module that exists
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: list[Edge] = []
    seen: set[Edge] = set()
    for source, (path, is_package) in modules.items():
        rel = str(path.relative_to(src_package.parent.parent)) if src_package.parent.parent in path.parents \
            else str(path)

        def add(target: str | None, line: int, source: str = source, rel: str = rel) -> None:
            if target is not None and target != source:
                edge = Edge(source, target, rel, line)
                if edge not in seen:  # ``from x import a, b`` is one edge
                    seen.add(edge)
                    edges.append(edge)

        for node in ast.walk(_parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    if _top(alias.name) == package:
                        add(known(alias.name), node.lineno)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = _relative_base(source, is_package, node.level)
                    target = f"{base}.{node.module}" if node.module else base
                else:
                    target = node.module or ""
                if _top(target) != package:
                    continue
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    add(sub if sub in modules else known(target), node.lineno)
            elif isinstance(node, ast.Call):
                name = _dynamic_name(node)
                if name is None:
                    continue
                if name.startswith("."):
                    level = len(name) - len(name.lstrip("."))
                    rest = name[level:]
                    base = _relative_base(source, is_package, level)
                    name = f"{base}.{rest}" if rest else base
                if _top(name) == package:
                    add(known(name), node.lineno)
    return edges


def unit_of(module: str, package: str = PACKAGE) -> str:
    """The unit (direct child of the package, or the package's own ``__init__``) of ``module``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else package


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of ``graph`` with more than one node (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(graph.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(graph.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return sorted(out)


def shortest_cycle(graph: dict[str, set[str]], members: list[str]) -> list[str]:
    """A shortest cycle through the first of ``members`` (a strongly connected component)."""
    inside = set(members)
    start = members[0]
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt: list[str] = []
        for node in frontier:
            for succ in sorted(graph.get(node, ())):
                if succ not in inside:
                    continue
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start, *reversed(path[:-1]), start]
                if succ not in parents:
                    parents[succ] = node
                    nxt.append(succ)
        frontier = nxt
    raise AssertionError(f"{members} is not a cycle")


def describe_cycles(edges: list[Edge], key: Callable[[str], str], what: str) -> list[str]:
    """One paragraph per cycle of the graph of ``edges`` mapped through ``key`` (files or units):
    its members and one concrete cycle, each step with the import that makes it."""
    graph: dict[str, set[str]] = {}
    witness: dict[tuple[str, str], Edge] = {}
    for e in edges:
        a, b = key(e.source), key(e.target)
        if a == b:
            continue
        graph.setdefault(a, set()).add(b)
        witness.setdefault((a, b), e)
    out = []
    for members in strongly_connected(graph):
        cycle = shortest_cycle(graph, members)
        steps = "\n".join(f"      {witness[(a, b)]}" for a, b in itertools.pairwise(cycle))
        out.append(f"  {what} cycle among {len(members)}: {', '.join(members)}\n    e.g. "
                   f"{' -> '.join(cycle)}:\n{steps}")
    return out


def layer_of(unit: str, layers: tuple[frozenset[str], ...] = LAYERS) -> int | None:
    """The index of ``unit``'s layer, or ``None`` when it has no place in ``layers``."""
    return next((i for i, layer in enumerate(layers) if unit in layer), None)


def wrong_direction(edges: list[Edge], layers: tuple[frozenset[str], ...] = LAYERS) -> list[str]:
    """Every edge from a unit to one of the same or a higher layer (or to or from a unit that is
    in no layer), one line each, grouped by unit pair."""
    out = []
    for e in edges:
        a, b = unit_of(e.source), unit_of(e.target)
        if a == b:
            continue
        la, lb = layer_of(a, layers), layer_of(b, layers)
        if la is None or lb is None:
            missing = a if la is None else b
            out.append(f"  {e}: unit {missing!r} is in no layer of LAYERS (place it there)")
        elif lb >= la:
            out.append(f"  {e}: {a} (layer {la}) must not import {b} (layer {lb})")
    return sorted(out)


# the checks on src/quicmesh


def test_the_import_graph_sees_the_package() -> None:
    edges = import_edges(SRC_PACKAGE)
    units = {unit_of(e.source) for e in edges} | {unit_of(e.target) for e in edges}
    assert {"core", "bounded", "runtime", "errors", PACKAGE} <= units
    assert any(e.source.startswith("quicmesh.core.") and unit_of(e.target) == "bounded" for e in edges)


def test_no_import_cycle_between_files() -> None:
    cycles = describe_cycles(import_edges(SRC_PACKAGE), lambda m: m, "file")
    assert not cycles, "import cycles between files of src/quicmesh:\n" + "\n".join(cycles)


def test_no_import_cycle_between_packages() -> None:
    cycles = describe_cycles(import_edges(SRC_PACKAGE), unit_of, "package")
    assert not cycles, "import cycles between packages of src/quicmesh:\n" + "\n".join(cycles)


def test_dependencies_point_down_the_layers() -> None:
    bad = wrong_direction(import_edges(SRC_PACKAGE))
    layers = "\n".join(f"  {i}: {', '.join(sorted(layer))}" for i, layer in enumerate(LAYERS))
    assert not bad, f"imports against the layering (lowest layer first:\n{layers}\n):\n" + "\n".join(bad)


def test_no_file_over_the_line_limit() -> None:
    long = sorted(
        (n, str(path.relative_to(SRC_PACKAGE.parent.parent)))
        for path in SRC_PACKAGE.rglob("*.py")
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    )
    assert not long, f"files of src/quicmesh over {MAX_LINES} lines (split them by responsibility):\n" + "\n".join(
        f"  {path}: {n} lines" for n, path in reversed(long)
    )


# the checker itself, on small made-up packages


def _package(root: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (paths relative to the package, text) as package ``pkg`` under ``root``."""
    pkg = root / "src" / "pkg"
    for rel, text in files.items():
        path = pkg / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return pkg


def _pairs(edges: list[Edge]) -> set[tuple[str, str]]:
    return {(e.source, e.target) for e in edges}


def test_graph_resolves_every_import_form(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": (
            "from .a import x\nimport importlib\ndef f(n):\n    return importlib.import_module(f'.b.{n}', __name__)\n"
        ),
        "a.py": "from . import c\nfrom .b import deep\nimport pkg.c as cc\n",
        "b/__init__.py": "",
        "b/deep.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..a import x\n",
        "b/other.py": "def g():\n    from ..c import y\n    from pkg.b import deep, NAME\n",
        "c.py": "import os\nfrom json import dumps\n",
    })
    assert _pairs(import_edges(pkg, "pkg")) == {
        ("pkg", "pkg.a"),  # from .a import x
        ("pkg", "pkg.b"),  # import_module(f".b.{n}"): up to the placeholder
        ("pkg.a", "pkg.c"),  # from . import c: the submodule
        ("pkg.a", "pkg.b.deep"),  # from .b import deep
        ("pkg.b.deep", "pkg.a"),  # under TYPE_CHECKING
        ("pkg.b.other", "pkg.c"),  # inside a function, two levels up
        ("pkg.b.other", "pkg.b.deep"),  # from pkg.b import deep: the submodule
        ("pkg.b.other", "pkg.b"),  # NAME is not a module: the package itself
    }


def test_cycle_checks_name_the_files_and_the_imports(tmp_path: Path) -> None:
    pkg = _package(tmp_path, {
        "__init__.py": "",
        "core/__init__.py": "",
        "core/m.py": "from ..store import s\n",
        "store/__init__.py": "",
        "store/s.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..core.m import T\n",
        "store/t.py": "from ..core import m\n",
    })
    edges = import_edges(pkg, "pkg")
    [files] = describe_cycles(edges, lambda m: m, "file")
    assert "pkg.core.m, pkg.store.s" in files
    assert "pkg.core.m -> pkg.store.s  (src/pkg/core/m.py:1)" in files
    assert "pkg.store.s -> pkg.core.m  (src/pkg/store/s.py:3)" in files
    [units] = describe_cycles(edges, lambda m: unit_of(m, "pkg"), "package")
    assert "among 2: core, store" in units and "core -> store -> core" in units


def test_cycle_check_passes_an_acyclic_graph_and_finds_long_cycles() -> None:
    def edges_of(pairs: list[tuple[str, str]]) -> list[Edge]:
        return [Edge(a, b, "x.py", i) for i, (a, b) in enumerate(pairs)]

    assert describe_cycles(edges_of([("a", "b"), ("b", "c"), ("a", "c")]), lambda m: m, "file") == []
    [text] = describe_cycles(edges_of([("a", "b"), ("b", "c"), ("c", "d"), ("d", "a"), ("b", "a")]),
                             lambda m: m, "file")
    assert "among 4: a, b, c, d" in text and "a -> b -> a" in text  # the shortest cycle is shown


def test_direction_check_flags_upward_same_layer_and_unplaced_units() -> None:
    layers = (frozenset({"low"}), frozenset({"mid", "side"}), frozenset({"top"}))

    def edge(a: str, b: str) -> Edge:
        return Edge(f"quicmesh.{a}.x", f"quicmesh.{b}.y", f"{a}/x.py", 3)

    assert wrong_direction([edge("top", "mid"), edge("mid", "low"), edge("top", "low")], layers) == []
    bad = wrong_direction([edge("low", "top"), edge("mid", "side"), edge("mid", "new")], layers)
    assert bad == sorted([
        "  quicmesh.low.x -> quicmesh.top.y  (low/x.py:3): low (layer 0) must not import top (layer 2)",
        "  quicmesh.mid.x -> quicmesh.side.y  (mid/x.py:3): mid (layer 1) must not import side (layer 1)",
        "  quicmesh.mid.x -> quicmesh.new.y  (mid/x.py:3): unit 'new' is in no layer of LAYERS (place it there)",
    ])


def test_layers_place_every_unit_of_the_package_once() -> None:
    placed = [u for layer in LAYERS for u in layer]
    assert len(placed) == len(set(placed))
    units = {unit_of(m) for m in module_files(SRC_PACKAGE)}
    assert units - set(placed) == set(), "units of src/quicmesh missing from LAYERS"
