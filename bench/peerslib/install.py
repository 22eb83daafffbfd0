"""The bench installs its peers itself: the ``bench`` extra of pyproject.toml into this
interpreter's environment (pip), and Debian's ``nats-server`` (apt-get, as root). What cannot be
installed is reported with the reason, and its column is skipped with that reason printed."""

from __future__ import annotations

import importlib
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from .run import nats_server_path

ROOT = Path(__file__).resolve().parents[2]
MODULES = {"eclipse-zenoh": "zenoh", "nats-py": "nats", "uvloop": "uvloop"}


def _bench_extra() -> list[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    extra: list[str] = data["project"]["optional-dependencies"]["bench"]
    return extra


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except ImportError:
        return False


def ensure_peers(install: bool) -> dict[str, str]:
    """Install what is missing (when ``install``); returns ``{what: why it is unavailable}``."""
    missing: dict[str, str] = {}
    wanted = [req for req in _bench_extra() if not _importable(MODULES.get(req.split(">")[0].split("<")[0], "?"))]
    if wanted and install:
        print(f"installing {', '.join(wanted)} (pip, the bench extra)", flush=True)
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *wanted], check=False, timeout=600)
        if done.returncode != 0:
            print("note: pip could not install the bench extra", file=sys.stderr)
        importlib.invalidate_caches()
    for dist, module in MODULES.items():
        if not _importable(module):
            missing[module] = f"{dist} is not installed (pip install '.[bench]')"
    if nats_server_path() is None:
        if install and os.geteuid() == 0 and shutil.which("apt-get"):
            print("installing nats-server (apt-get)", flush=True)
            env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
            subprocess.run(["apt-get", "update", "-qq"], check=False, timeout=600, env=env,
                           stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "nats-server"],
                           check=False, timeout=600, env=env, stdout=subprocess.DEVNULL)
        if nats_server_path() is None:
            missing["nats-server"] = ("nats-server is not installed: run `apt-get install -y nats-server` as root"
                                      if os.geteuid() != 0 or not shutil.which("apt-get")
                                      else "apt-get install nats-server failed")
    return missing
