"""``quicmesh node --loop uvloop`` and the ``event_loop`` setting; the node process's garbage
collector thresholds (``gc_young_threshold``) (#14)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from nodekit import node_command

from quicmesh.cli.node import loop_factory, tune_gc
from quicmesh.config import NodeConfig
from quicmesh.errors import ConfigError


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_node_runs_on_the_chosen_loop(loop: str) -> None:
    out = node_command("--loop", loop)
    assert out.returncode == 0, out.stderr
    listening = json.loads(out.stdout.splitlines()[0])
    assert listening["event"] == "listening" and listening["loop"] == loop


def test_config_chooses_the_loop(tmp_path: Path) -> None:
    cfg = tmp_path / "node.toml"
    cfg.write_text('event_loop = "uvloop"\n')
    out = node_command("--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["loop"] == "uvloop"


def test_missing_uvloop_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop -> ImportError
    with pytest.raises(ConfigError, match=r"uvloop is not installed \(pip install 'quicmesh\[uvloop\]'\)"):
        loop_factory("uvloop")
    # the command says so and exits 1
    fake = tmp_path / "uvloop"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('not here')\n")
    out = node_command("--loop", "uvloop", env={"PYTHONPATH": str(tmp_path)})
    assert out.returncode == 1
    assert "uvloop is not installed" in out.stderr and "quicmesh[uvloop]" in out.stderr


def test_event_loop_setting_is_checked() -> None:
    assert NodeConfig().event_loop == "asyncio"
    assert loop_factory("asyncio") is None
    with pytest.raises(ConfigError, match="event_loop"):
        NodeConfig(event_loop="trio")


def _python_gc_default() -> list[int]:
    """This interpreter's own thresholds ((700, 10, 10) up to 3.12, (2000, 10, 10) on 3.13)."""
    code = "import gc; print(list(gc.get_threshold()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    got: list[int] = json.loads(out.stdout)
    return got


def test_node_process_collects_young_garbage_less_often(tmp_path: Path) -> None:
    """Default: (50000, 50, 100) in ``quicmesh node``; ``gc_young_threshold = 0`` keeps Python's."""
    out = node_command()
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["gc_threshold"] == [50_000, 50, 100]
    cfg = tmp_path / "node.toml"
    cfg.write_text("gc_young_threshold = 0\n")
    out = node_command("--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.splitlines()[0])["gc_threshold"] == _python_gc_default()
    out = node_command(env={"QUICMESH_GC_YOUNG_THRESHOLD": "20000"})
    assert json.loads(out.stdout.splitlines()[0])["gc_threshold"] == [20_000, 50, 100]


def test_gc_setting_is_checked_and_importing_quicmesh_changes_nothing() -> None:
    assert NodeConfig().gc_young_threshold == 50_000
    for bad in (-1, 10_000_001):
        with pytest.raises(ConfigError, match="gc_young_threshold"):
            NodeConfig(gc_young_threshold=bad)
    # the library leaves the embedding application's collector alone; only tune_gc sets it
    code = "import gc, quicmesh; from quicmesh import Node, NodeConfig; NodeConfig(); print(list(gc.get_threshold()))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(out.stdout) == _python_gc_default()
    import gc
    before = gc.get_threshold()
    try:
        assert tune_gc(0) == before
        assert tune_gc(30_000) == (30_000, 50, 100)
    finally:
        gc.set_threshold(*before)
