"""Loading the scripts of ``bench/`` as modules in tests (they are scripts, not a package)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parent.parent / "bench"


def load_bench(name: str) -> ModuleType:
    """``bench/<name>.py`` as a fresh module (it puts ``bench/`` on ``sys.path`` itself where it
    imports a sibling)."""
    spec = importlib.util.spec_from_file_location(f"quicmesh_bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
