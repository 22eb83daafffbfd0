"""A UDP port for a node that a test stops and restarts on the same address.

A port the kernel handed out for ``:0`` is in its ephemeral range, and while the first node is
down any other process binding ``:0`` (the suite runs in parallel workers) may be given it: the
restart then fails with ``EADDRINUSE`` (CI saw it once in ``test_gateway.py``). A port below that
range is never handed out for ``:0``, so it stays free between the stop and the restart."""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["restart_port"]


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default


def restart_port(host: str = "127.0.0.1") -> int:
    """A UDP port on ``host`` that is free now and below the kernel's ephemeral range."""
    high = min(_ephemeral_low(), 65536) - 1
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(20000, max(high, 20001))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free UDP port below the ephemeral range")
