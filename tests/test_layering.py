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
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
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


def check_source(source: str, path: str = "<string>") -> list[Violation]:
    """Every forbidden import in ``source`` (a module's text)."""
    found: list[Violation] = []
    for node in ast.walk(ast.parse(source, filename=path)):
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
